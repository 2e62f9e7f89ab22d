"""`ray job submit` to a local multi-node cluster: `ray start --head` plus a second node on this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import psutil
import pytest
from conftest import free_port
from pipeline_helpers import read_scores, score

import piqa_model

warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)
RAY = str(Path(sys.executable).parent / "ray")


def node_ports() -> list[str]:
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={free_port()}" for name in names]


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, dashboard for job submission) and one worker node (1 CPU), loopback only."""
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}", *common, *node_ports()],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{gcs_port}", *common, *node_ports()],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        yield {"dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env}
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if temp_dir in " ".join(process.info["cmdline"] or []):
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.usefixtures("ray_local")
def test_ray_job_submit_scores_like_a_local_run(cluster, repo_root, tmp_path):
    samples = repo_root / "samples" / "portraits"
    job = subprocess.run(
        [RAY, "job", "submit", f"--address={cluster['dashboard']}", f"--working-dir={repo_root}", "--",
         "python", "-m", "jobs.score", "samples/portraits", "--out", str(tmp_path / "job"),
         "--shard-size", "4", "--crop-mode", "center"],
        env=cluster["env"], capture_output=True, text=True, timeout=600,
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
