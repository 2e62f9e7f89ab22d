"""Scoring through object-storage faults: a proxy of our own (`faultproxy`) between the jobs and the moto server
answers throttling and server errors, cuts connections and adds latency. Nothing may be lost or doubled; retries
are bounded and counted in the run manifest; a shard that storage keeps failing is named, nothing partial of it is
visible, and a rerun completes it."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import warnings
from collections import Counter

import pyarrow.parquet as pq
import pytest
import s3fs
from corpus import folder_corpus, parquet_corpus, portraits, tar_corpus
from curation_corpus import webdataset_samples
from faultproxy import DENIED, FAULTS, Fault, FaultProxy
from pipeline_helpers import assert_rows_match, read_scores, score
from processes import wait_for
from train_helpers import train_config

import piqa_model
from jobs import filter as filter_job
from jobs.cli import run
from pipelines.score import ShardsFailedError
from training.loop import load_state
from training.retrain import run_retraining

warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)

MIXED = [Fault(kind, fault, 0.1) for kind in ("list", "get", "put") for fault in FAULTS]
"""A tenth of every kind of request meets each kind of fault (so 0.4 of them one fault or another); runs through it
have MIXED_ATTEMPTS per request, so that none runs out of them (0.3**8 a request)."""
MIXED_ATTEMPTS = "8"


@pytest.fixture(scope="module")
def proxy(s3_endpoint: str):
    with FaultProxy(s3_endpoint, seed=21) as running:
        yield running


@pytest.fixture(scope="module")
def moto(s3_endpoint: str) -> s3fs.S3FileSystem:
    """The moto server itself, around the proxy: to set inputs up and look at outputs."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("faults")
    return fs


def upload(moto: s3fs.S3FileSystem, corpus_root, prefix: str) -> str:
    moto.put(str(corpus_root), f"faults/{prefix}/in", recursive=True)
    return f"s3://faults/{prefix}/in"


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(
    ("make_corpus", "runner"),
    [(folder_corpus, "in-process"), (tar_corpus, "ray"), (parquet_corpus, "in-process")],  # Ray: the workers' tally
)
def test_scoring_through_faults_loses_and_doubles_nothing_and_counts_its_retries(
    make_corpus, runner, proxy, moto, shared_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", MIXED_ATTEMPTS)
    corpus = make_corpus(shared_dir, tmp_path / "in")
    source = upload(moto, corpus.root, make_corpus.__name__)
    out = f"s3://faults/{make_corpus.__name__}/out"
    proxy.inject(*MIXED)

    summary = score(source, out, shard_size=3, s3_endpoint=proxy.endpoint, runner=runner)

    injected = list(proxy.log)
    proxy.inject()
    assert_rows_match(read_scores(out), corpus.expected)
    assert (summary.shards_written, summary.runner) == (summary.shards_total, runner)
    manifest = json.loads(moto.cat_file(f"faults/{make_corpus.__name__}/out/_manifest.json"))
    retries = sum(manifest["storage_retries"].values())
    after_the_count = ("_manifest.json", "_lease.json")  # the manifest's own write, the lease's release
    answered = [
        (kind, fault, target)
        for kind, fault, target in injected
        if fault in ("slowdown", "error") and not target.split("?")[0].endswith(after_the_count)
    ]
    assert answered, injected  # the draw did put faults in this run
    assert len(answered) <= retries <= len(injected), (manifest["storage_retries"], injected)
    assert not moto.exists(f"faults/{make_corpus.__name__}/out/_parts")


@pytest.mark.parametrize(
    ("fault", "failing", "stage"),
    [
        (Fault("get", "slowdown", 1.0, match="shard-001.tar"), "shard-001", "cannot read s3://faults/{}/in/shard-001"),
        (Fault("put", "error", 1.0, match="_parts/shard-000/"), "shard-000", "cannot write s3://faults/{}/out/_parts/"),
        (
            Fault("put", "slowdown", 1.0, match="/out/shard-002.parquet"),
            "shard-002",
            "cannot write s3://faults/{}/out/shard-002.parquet (2 attempts): OSError: ",
        ),
    ],
    ids=["read", "write", "commit"],
)
def test_a_shard_that_storage_keeps_failing_is_named_and_a_rerun_completes_it(
    fault, failing, stage, proxy, moto, shared_dir, tmp_path, monkeypatch
):
    corpus = tar_corpus(shared_dir, tmp_path / "in")
    prefix = f"failing-{failing}"
    source, out = upload(moto, corpus.root, prefix), f"s3://faults/{prefix}/out"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    job = dict(shard_size=3, s3_endpoint=proxy.endpoint, runner="in-process")
    proxy.inject(fault)

    with pytest.raises(ShardsFailedError) as failed:
        score(source, out, **job)

    proxy.inject()
    said = str(failed.value)
    assert said.startswith(f"1 of 3 shards were not written ({failing}: {stage.format(prefix)}"), said
    assert said.endswith("the other 2 are committed: rerun the same command to complete them"), said
    written = sorted(path.rsplit("/", 1)[-1] for path in moto.glob(f"faults/{prefix}/out/*.parquet"))
    assert written == sorted({"shard-000.parquet", "shard-001.parquet", "shard-002.parquet"} - {f"{failing}.parquet"})
    assert not moto.exists(f"faults/{prefix}/out/_manifest.json")  # the job is not complete

    finished = score(source, out, **job)
    assert (finished.shards_written, finished.shards_skipped) == (1, 2)
    assert_rows_match(read_scores(out), corpus.expected)


def test_filter_and_reshard_through_faults_write_what_a_run_without_them_writes(
    proxy, moto, s3_endpoint, shared_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", MIXED_ATTEMPTS)
    corpus = tar_corpus(shared_dir, tmp_path / "in")
    scores = "s3://faults/filter/scores"
    score(upload(moto, corpus.root, "filter"), scores, shard_size=3, runner="in-process")

    def curate(out: str, endpoint: str) -> None:
        argv = [scores, "--out", out, "--top-fraction", "0.5", "--emit-dropped", "--s3-endpoint", endpoint]
        assert run([*argv, "--reshard-to", f"{out}/tars", "--shard-size", "2"], filter_job.build_parser) == 0

    curate("s3://faults/filter/clean", s3_endpoint)
    proxy.inject(*MIXED)
    curate("s3://faults/filter/faulty", proxy.endpoint)
    injected = dict(proxy.injected)
    proxy.inject()

    assert sum(injected.values()) > 0, injected
    for name in ("kept.parquet", "dropped.parquet"):
        clean, faulty = (pq.read_table(f"faults/filter/{run}/{name}", filesystem=moto) for run in ("clean", "faulty"))
        assert faulty.equals(clean), name
    tars = {run: sorted(moto.ls(f"faults/filter/{run}/tars")) for run in ("clean", "faulty")}
    assert [path.rsplit("/", 1)[-1] for path in tars["faulty"]] == [path.rsplit("/", 1)[-1] for path in tars["clean"]]
    for clean, faulty in zip(tars["clean"], tars["faulty"], strict=True):
        assert webdataset_samples(moto.cat(faulty)) == webdataset_samples(moto.cat(clean))


def test_an_output_bucket_that_vanishes_mid_run_fails_cleanly_and_a_rerun_completes(
    moto, s3_endpoint, shared_dir, tmp_path, repo_root
):
    (tmp_path / "in").mkdir()
    for path in portraits(shared_dir, 48):
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    moto.mkdir("vanishing")
    out = "s3://vanishing/out"
    command = [sys.executable, "-m", "jobs.score", str(tmp_path / "in"), "--out", out, "--shard-size", "4"]
    command += ["--batch-size", "2", "--crop-mode", "center", "--runner", "in-process"]
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_endpoint, AWS_MAX_ATTEMPTS="2")
    env.pop("RAY_ADDRESS", None)
    job = subprocess.Popen(command, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: bool(moto.glob("vanishing/out/*.parquet", refresh=True)) or job.poll() is not None, 120, "a shard"
        )
        assert job.poll() is None, "the job ended before its bucket went"
        wait_for(lambda: _remove_bucket(moto, "vanishing"), 30, "the bucket to go")
        _, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 1, stderr[-2000:]
    [line] = stderr.strip().splitlines()
    said = r"python -m jobs.score: error: \d+ of 12 shards were not written \(files-\d+: "
    said += r"cannot (write|commit) s3://vanishing/out/"
    assert re.match(said, line), line
    assert "rerun the same command to complete them" in line

    moto.mkdir("vanishing")
    finished = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_rows_match(read_scores(out), {path.name: "ok" for path in portraits(shared_dir, 48)})


def _remove_bucket(moto: s3fs.S3FileSystem, bucket: str) -> bool:
    """Delete `bucket` with all it holds; False when a write landed in it meanwhile (try again)."""
    try:
        moto.rm(bucket, recursive=True)
    except OSError:
        return False
    moto.invalidate_cache()
    return not moto.exists(bucket)


@pytest.mark.usefixtures("ray_local")
def test_a_retraining_job_keeps_its_checkpoints_and_features_in_s3_through_faults(proxy, moto, tiny_data, tmp_path):
    """A whole retraining job whose checkpoints (Ray Train, through `train_storage`'s pyarrow filesystem) and feature
    cache (our storage) are in S3 behind the proxy: it completes, and what it kept there is whole."""
    data = {"manifests": [tiny_data["manifest"]]}
    config = train_config(tmp_path, data=data, storage_path="s3://faults/retrain", s3_endpoint=proxy.endpoint)
    # A tenth of each kind: pyarrow retries a failed CompleteMultipartUpload a fixed few times, whatever the attempts.
    proxy.inject(Fault("put", "error", 0.1), Fault("multipart", "slowdown", 0.1))
    try:
        result = run_retraining(config)
    finally:
        injected, sent = Counter(kind for kind, _, _ in proxy.log), Counter(proxy.requests)
        proxy.inject()
    assert injected["put"] >= 1 and injected["multipart"] >= 1, (injected, sent)
    assert result.run_id and math.isfinite(result.test["test/srcc_mean"])
    saved = sorted(moto.glob("faults/retrain/retrain-*/checkpoint_*/state.pt"))
    assert len(saved) == 2, saved  # num_to_keep=2 of 3 epochs
    moto.get(saved[-1].rsplit("/", 1)[0], str(tmp_path / "last"), recursive=True)
    assert [entry["epoch"] for entry in load_state(str(tmp_path / "last"))["history"]] == [0, 1, 2]
    assert moto.glob("faults/retrain/feature-cache/**")


def test_an_output_that_stops_being_writable_mid_run_fails_cleanly_and_a_rerun_completes(
    proxy, moto, shared_dir, tmp_path
):
    (tmp_path / "in").mkdir()
    for path in portraits(shared_dir, 24):
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    out = "s3://faults/denied/out"
    job = dict(shard_size=2, s3_endpoint=proxy.endpoint, runner="in-process")

    def deny_writes_after_a_shard() -> None:
        wait_for(lambda: bool(moto.glob("faults/denied/out/*.parquet", refresh=True)), 120, "a shard")
        proxy.inject(Fault("put", DENIED, 1.0))

    watcher = threading.Thread(target=deny_writes_after_a_shard, daemon=True)
    watcher.start()
    with pytest.raises(ShardsFailedError) as failed:
        score(str(tmp_path / "in"), out, **job)
    watcher.join(timeout=10)
    proxy.inject()

    said = str(failed.value)
    assert re.match(r"\d+ of 12 shards were not written \(files-\d+: cannot write s3://faults/denied/out/", said), said
    assert "PermissionError: Access Denied" in said
    committed = moto.glob("faults/denied/out/*.parquet", refresh=True)
    assert 1 <= len(committed) < 12
    assert all(pq.read_table(path, filesystem=moto).num_rows == 2 for path in committed)  # whole, never partial
    finished = score(str(tmp_path / "in"), out, **job)
    assert finished.shards_written == 12 - len(committed)
    assert_rows_match(read_scores(out), {path.name: "ok" for path in portraits(shared_dir, 24)})
