"""The scoring pipeline reading from and writing to S3 (a real moto S3 server on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import s3fs
from corpus import folder_corpus, parquet_corpus, tar_corpus
from pipeline_helpers import assert_rows_match, read_scores, score

import piqa_model

pytestmark = pytest.mark.usefixtures("ray_local")
warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("curation")
    return "curation"


@pytest.mark.parametrize("make_corpus", [folder_corpus, tar_corpus, parquet_corpus])
def test_s3_in_s3_out(make_corpus, bucket, s3_endpoint, shared_dir, tmp_path):
    corpus = make_corpus(shared_dir, tmp_path / "in")
    prefix = f"{bucket}/{make_corpus.__name__}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(corpus.root), f"{prefix}/in", recursive=True)

    summary = score(f"s3://{prefix}/in", f"s3://{prefix}/out", shard_size=3)

    assert_rows_match(read_scores(f"s3://{prefix}/out"), corpus.expected)
    assert summary.images == len(corpus.expected)
    assert fs.exists(f"{prefix}/out/_manifest.json")
    assert not [p for p in fs.ls(f"{prefix}/out") if p.rsplit("/", 1)[-1].startswith(("_write_check", "."))]
    again = score(f"s3://{prefix}/in", f"s3://{prefix}/out", shard_size=3)
    assert again.shards_written == 0 and again.shards_skipped == summary.shards_total


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS="local")
    return subprocess.run(
        [sys.executable, "-m", "jobs.score", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_missing_bucket_is_one_line_and_nonzero(bucket, tmp_path):
    result = run_cli("s3://no-such-bucket/shards/", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "python -m jobs.score: error: input s3://no-such-bucket/shards/ does not exist"
    ]
    assert not (tmp_path / "out").exists()


def test_unwritable_output_bucket_is_one_line_and_nonzero(bucket, repo_root):
    result = run_cli(str(repo_root / "samples" / "portraits"), "--out", "s3://no-such-bucket/scores/")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("python -m jobs.score: error: output s3://no-such-bucket/scores/ is not writable")


def test_wrong_flag_is_one_line_and_exit_2(tmp_path):
    result = run_cli(str(tmp_path), "--out", str(tmp_path / "o"), "--crop-mode", "seven")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "invalid choice: 'seven'" in line
