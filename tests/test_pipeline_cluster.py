"""`ray job submit` to a local multi-node cluster: `ray start --head` plus a second node on this machine."""

from __future__ import annotations

import warnings

import pytest
from pipeline_helpers import read_scores, score
from ray_cluster import local_cluster, submit_job

import piqa_model

warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, dashboard for job submission) and one worker node (1 CPU), loopback only."""
    with local_cluster() as running:
        yield running


@pytest.mark.usefixtures("ray_local")
def test_ray_job_submit_scores_like_a_local_run(cluster, repo_root, tmp_path):
    samples = repo_root / "samples" / "portraits"
    job = submit_job(
        cluster,
        f"--working-dir={repo_root}",
        entrypoint=["python", "-m", "jobs.score", "samples/portraits", "--out", str(tmp_path / "job"),
                    "--shard-size", "4", "--crop-mode", "center"],
    )  # fmt: skip
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout

    score(samples, tmp_path / "local", shard_size=4)
    submitted = {r["key"]: r for r in read_scores(tmp_path / "job").to_pylist()}
    local = {r["key"]: r for r in read_scores(tmp_path / "local").to_pylist()}
    assert submitted.keys() == local.keys() and len(submitted) == len(list(samples.glob("*.jpg")))
    for key, row in local.items():
        assert submitted[key]["status"] == row["status"]
        assert submitted[key]["shard"] == row["shard"]
        if row["status"] == "ok":
            assert submitted[key]["score"] == pytest.approx(row["score"], abs=1e-5)
