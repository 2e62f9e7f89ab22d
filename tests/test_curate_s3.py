"""Filtering, resharding and reporting with everything on S3 (a real moto server on loopback): score files,
the original tars and Parquet they name, manifests, new tars and the report."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
import s3fs
from curation_corpus import ScoredCorpus, containers, webdataset_samples
from pipeline_helpers import score

from jobs import filter as filter_job
from jobs import report as report_job
from jobs.cli import run
from pipelines.readers import read_records
from pipelines.shards import list_shards
from pipelines.storage import Storage

pytestmark = [
    pytest.mark.usefixtures("ray_local"),
    pytest.mark.filterwarnings("ignore::piqa_model.UntrainedModelWarning"),
]
BUCKET = "curate"


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(BUCKET)
    return fs


@pytest.fixture(scope="module")
def scored_s3(s3, shared_dir, tmp_path_factory) -> ScoredCorpus:
    """Two tars, a tar cut off midway and a Parquet of images on S3, scored into S3 by the real pipeline."""
    corpus = containers(shared_dir, tmp_path_factory.mktemp("s3corpus") / "in")
    s3.put(str(corpus.root), f"{BUCKET}/in", recursive=True)
    summary = score(f"s3://{BUCKET}/in", f"s3://{BUCKET}/scores")
    assert summary.images == len(corpus.expected) == 21 and summary.counts["ok"] == 9
    return ScoredCorpus(corpus, f"s3://{BUCKET}/scores")


def thumbnails(page: str) -> list[str]:
    return re.findall(r'<figure class="thumb" data-percentile="([^"]+)"><img alt=[^>]+src="data:image/jpeg', page)


def test_filter_reshard_and_report_on_s3(scored_s3, s3, capsys):
    out, tars = f"s3://{BUCKET}/filtered", f"s3://{BUCKET}/tars"
    argv = [scored_s3.scores, "--out", out, "--top-fraction", "0.5", "--per", "shard", "--emit-dropped", "--report"]
    assert run([*argv, "--reshard-to", tars, "--shard-size", "4"], filter_job.build_parser) == 0
    assert "kept 5 of 21 rows (16 dropped); decided by: status 12, top_fraction 4, kept 5" in capsys.readouterr().out

    kept = pq.read_table(f"{BUCKET}/filtered/kept.parquet", filesystem=s3).to_pylist()
    summary = json.loads(s3.cat(f"{BUCKET}/filtered/summary.json"))
    per_shard = {g["group"]: (g["rows"], g["kept"]) for g in summary["breakdown"]}
    assert per_shard == {"part-00000": (10, 2), "shard-000": (4, 2), "shard-001": (5, 0), "shard-002": (2, 1)}
    assert pq.read_table(f"{BUCKET}/filtered/dropped.parquet", filesystem=s3).num_rows == 16
    assert all(row["source"].startswith(f"s3://{BUCKET}/in/") for row in kept)

    storage = Storage.from_environment()
    assert sorted(s3.ls(f"{BUCKET}/tars")) == [f"{BUCKET}/tars/kept-000000.tar", f"{BUCKET}/tars/kept-000001.tar"]
    samples = [sample for uri in sorted(s3.ls(f"{BUCKET}/tars")) for sample in webdataset_samples(s3.cat(uri))]
    sidecars = {name: json.loads(members["json"]) for name, members in samples}
    assert list(sidecars.values()) == kept  # sources included: the input's s3:// URIs, checked above
    resharded = [r for shard in list_shards(tars, storage) for r in read_records(shard, storage)]
    originals = {
        r.key: r.data for s in list_shards(str(scored_s3.corpus.root), storage) for r in read_records(s, storage)
    }
    assert [r.key for r in resharded] == list(sidecars)
    assert all(r.data == originals[sidecars[r.key]["key"]] for r in resharded)

    page = s3.cat(f"{BUCKET}/filtered/report.html").decode()
    assert thumbnails(page) == ["lowest", "10 %", "median", "90 %", "highest"]
    assert "dropped by top_fraction" in page and "image unavailable" not in page


def test_report_of_an_s3_score_set_reads_thumbnails_from_s3(scored_s3, s3, capsys):
    out = f"s3://{BUCKET}/report/index.html"
    assert run([scored_s3.scores, "--out", out, "--group", "shard"], report_job.build_parser) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (21 rows)"
    page = s3.cat(f"{BUCKET}/report/index.html").decode()
    assert thumbnails(page) == ["lowest", "10 %", "median", "90 %", "highest"]
    for status in ("ok", "decode_error", "too_large", "unsupported", "read_error"):
        assert f"<tr><td>{status}</td>" in page


def test_a_missing_score_bucket_is_one_line(scored_s3, capsys):
    assert run(["s3://no-such-bucket/scores", "--out", f"s3://{BUCKET}/x"], filter_job.build_parser) == 1
    assert capsys.readouterr().err.strip() == "python -m jobs.filter: error: s3://no-such-bucket/scores does not exist"
