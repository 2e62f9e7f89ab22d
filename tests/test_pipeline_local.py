"""The scoring pipeline end to end on a local Ray cluster, for each input layout, with broken inputs."""

from __future__ import annotations

import json
import warnings

import pyarrow.parquet as pq
import pytest
import torch
from corpus import folder_corpus, parquet_corpus, tar_corpus
from pipeline_helpers import assert_rows_match, read_scores, score

import piqa_model
from jobs.cli import run
from pipelines.resume import OutputMismatchError
from pipelines.storage import StorageError

pytestmark = pytest.mark.usefixtures("ray_local")
warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)


@pytest.mark.parametrize("make_corpus", [folder_corpus, tar_corpus, parquet_corpus])
def test_every_key_once_with_its_status(make_corpus, shared_dir, tmp_path):
    corpus = make_corpus(shared_dir, tmp_path / "in")
    summary = score(corpus.root, tmp_path / "out", shard_size=3)

    table = read_scores(tmp_path / "out")
    assert_rows_match(table, corpus.expected)
    assert summary.images == len(corpus.expected)
    assert summary.counts["ok"] == sum(s == "ok" for s in corpus.expected.values())
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["counts_this_run"] == summary.counts
    assert manifest["shards"]["written"] == summary.shards_written == len(manifest["shard_files"])


def test_scores_equal_the_in_process_scorer(shared_dir, tmp_path, monkeypatch):
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=3)
    score(corpus.root, tmp_path / "out", crop_mode=None, shard_size=2)  # the bundle's own, as the scorer
    table = read_scores(tmp_path / "out")
    ok = {r["key"]: r for r in table.to_pylist() if r["status"] == "ok"}

    scorer = piqa_model.load_bundle()
    expected = scorer.score([(corpus.root / key).read_bytes() for key in sorted(ok)])
    for key, reference in zip(sorted(ok), expected, strict=True):
        assert ok[key]["score"] == pytest.approx(reference["score"], abs=1e-4)
        assert ok[key]["num_faces"] == reference["num_faces"]
        assert ok[key]["face_box"] == pytest.approx(reference["face_box"], abs=1e-2)
    assert {r["model"] for r in table.to_pylist()} == {scorer.bundle_id}


def test_rerun_resumes_and_overwrite_starts_over(shared_dir, tmp_path):
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=2)
    out = tmp_path / "out"
    first = score(corpus.root, out, shard_size=4)
    shard_files = sorted(out.glob("*.parquet"))
    (shard_files[0]).unlink()  # as if the run had stopped before this shard was committed
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_files[1:]}

    second = score(corpus.root, out, shard_size=4)
    assert second.shards_skipped == first.shards_written - 1 and second.shards_written == 1
    assert {p.name: p.stat().st_mtime_ns for p in shard_files[1:]} == stamps
    assert_rows_match(read_scores(out), corpus.expected)

    third = score(corpus.root, out, shard_size=4, overwrite=True)
    assert third.shards_written == first.shards_written and third.shards_skipped == 0
    assert_rows_match(read_scores(out), corpus.expected)


def test_a_job_run_in_this_process_gives_the_ray_rows_and_resumes(shared_dir, tmp_path):
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=2)
    here = score(corpus.root, tmp_path / "here", shard_size=3, runner="in-process")
    on_ray = score(corpus.root, tmp_path / "ray", shard_size=3, runner="ray")
    assert (here.runner, on_ray.runner) == ("in-process", "ray") and here.counts == on_ray.counts

    rows = {row["key"]: row for row in read_scores(tmp_path / "here").to_pylist()}
    assert_rows_match(read_scores(tmp_path / "here"), corpus.expected)
    for row in read_scores(tmp_path / "ray").to_pylist():
        mine = rows[row["key"]]
        assert (mine["status"], mine["num_faces"], mine["model"]) == (row["status"], row["num_faces"], row["model"])
        if row["score"] is not None:  # torch's threads differ: the same numbers to float rounding
            assert mine["score"] == pytest.approx(row["score"], abs=1e-4)
            assert mine["face_box"] == pytest.approx(row["face_box"], abs=1e-2)

    sorted((tmp_path / "here").glob("*.parquet"))[0].unlink()  # as if stopped before this shard was committed
    again = score(corpus.root, tmp_path / "here", shard_size=3, runner="in-process")
    assert again.shards_written == 1 and again.shards_skipped == here.shards_written - 1
    assert_rows_match(read_scores(tmp_path / "here"), corpus.expected)


def test_a_rerun_of_another_job_is_refused_and_changes_nothing(shared_dir, tmp_path, capsys):
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=2)
    out = tmp_path / "out"
    score(corpus.root, out, shard_size=4)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    net = piqa_model.DualBranchNet(piqa_model.preset("small"))
    other = piqa_model.save_bundle(net, tmp_path / "other", piqa_model.BundleInfo("other", trained=True))

    with pytest.raises(OutputMismatchError, match="shard_size 4 -> 3"):  # would score an image twice
        score(corpus.root, out, shard_size=3)
    with pytest.raises(OutputMismatchError, match=r"model starter-\w+ -> other-"):  # would keep the old scores
        score(corpus.root, out, shard_size=4, bundle=str(other))
    assert run(["score", str(corpus.root), "--out", str(out), "--shard-size", "3", "--crop-mode", "center"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "shard_size 4 -> 3" in error and "--overwrite" in error

    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert_rows_match(read_scores(out), corpus.expected)


def test_output_files_are_named_by_shard_and_hold_that_shard(shared_dir, tmp_path):
    corpus = tar_corpus(shared_dir, tmp_path / "in")
    score(corpus.root, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert names == ["shard-000.parquet", "shard-001.parquet", "shard-002.parquet"]
    shard0 = pq.read_table(tmp_path / "out" / "shard-000.parquet").to_pylist()
    assert [r["key"] for r in shard0] == ["000000", "000001", "000002", "000003"]
    assert {r["shard"] for r in shard0} == {"shard-000"}
    assert not list((tmp_path / "out").glob(".*")), "temporary files left behind"


def test_missing_input_and_unwritable_output_fail_before_work(shared_dir, tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        score(tmp_path / "nowhere", tmp_path / "out")
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        score(corpus.root, blocker / "out")


def test_a_bundle_with_liqe_adds_its_columns(shared_dir, tmp_path):
    torch.manual_seed(0)
    net = piqa_model.DualBranchNet(piqa_model.preset("small-liqe"))
    bundle = piqa_model.save_bundle(net, tmp_path / "bundle", piqa_model.BundleInfo("liqe-test", trained=True))
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=2)

    summary = score(corpus.root, tmp_path / "out", bundle=str(bundle))

    table = read_scores(tmp_path / "out")
    assert_rows_match(table, corpus.expected)
    assert summary.model.startswith("liqe-test-") and summary.model_trained
    for row in table.to_pylist():
        if row["status"] == "ok":
            assert 1.0 <= row["liqe_quality"] <= 5.0
            assert row["liqe_scene"] in piqa_model.liqe.SCENES
            assert row["liqe_distortion"] in piqa_model.liqe.DISTORTIONS
        else:
            assert row["liqe_quality"] is None
