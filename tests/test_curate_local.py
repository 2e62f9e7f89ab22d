"""`piqa filter` on local score files written by the real pipeline: exact counts per rule, deterministic
manifests (local and Ray Data readers), metadata groups, resharded tars read back by the scoring pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_corpus import FACELESS_KEY, webdataset_samples
from PIL import Image
from pipeline_helpers import read_scores, score

from jobs import filter as filter_job
from jobs.cli import run
from pipelines.curate import FilterJobConfig, run_filter
from pipelines.fetch import SourceFormat
from pipelines.filtering import MANIFEST_SCHEMA, SCORING_METADATA_KEY, FilterConfig
from pipelines.readers import read_records
from pipelines.reshard import ReshardConfig, ReshardError, reshard
from pipelines.shards import list_shards
from pipelines.storage import Storage

pytestmark = [
    pytest.mark.usefixtures("ray_local"),
    pytest.mark.filterwarnings("ignore::piqa_model.UntrainedModelWarning"),
]

PORTRAITS = 4  # ok rows with a face; plus the faceless image: 5 ok rows in shards of 3, 1, 0 and 1


def run_rules(scored_folder, out: Path, **rules) -> dict[str, str]:
    """Filter with `rules`; key -> decided_by over the kept and dropped manifests."""
    run_filter(FilterJobConfig(scored_folder.scores, str(out), FilterConfig(**rules), emit_dropped=True))
    rows = pq.read_table(out / "kept.parquet").to_pylist() + pq.read_table(out / "dropped.parquet").to_pylist()
    return {row["key"]: row["decided_by"] for row in rows}


def kept_keys(decisions: dict[str, str]) -> list[str]:
    return sorted(key for key, rule in decisions.items() if rule == "kept")


def ok_scores(scored_folder) -> dict[str, float]:
    return {r["key"]: r["score"] for r in read_scores(scored_folder.scores).to_pylist() if r["status"] == "ok"}


def ok_keys_by_score(scored_folder) -> list[str]:
    return sorted(ok_scores(scored_folder), key=lambda key: (-ok_scores(scored_folder)[key], key))


def test_the_corpus_has_rows_for_every_rule(scored_folder):
    rows = {r["key"]: r for r in read_scores(scored_folder.scores).to_pylist()}
    assert len(rows) == 10 and sum(r["status"] == "ok" for r in rows.values()) == PORTRAITS + 1
    assert rows[FACELESS_KEY]["num_faces"] == 0 and rows[FACELESS_KEY]["face_prob"] is None
    assert all(r["num_faces"] >= 1 for k, r in rows.items() if r["status"] == "ok" and k != FACELESS_KEY)


@pytest.mark.parametrize(
    ("rules", "kept", "dropped_by"),
    [
        ({}, 5, {"status": 5}),
        ({"statuses": ("ok", "decode_error")}, 8, {"status": 2}),
        ({"require_face": True}, 4, {"status": 5, "require_face": 1}),
        ({"min_face_prob": 0.5}, 4, {"status": 5, "min_face_prob": 1}),
        ({"top_fraction": 0.5}, 3, {"status": 5, "top_fraction": 2}),  # round(2.5) = 3
        ({"top_fraction": 0.5, "per": "shard"}, 4, {"status": 5, "top_fraction": 1}),  # 2 + 1 + 0 + 1
        ({"bottom_fraction": 0.2}, 4, {"status": 5, "bottom_fraction": 1}),
        ({"require_face": True, "top_fraction": 0.25}, 1, {"status": 5, "require_face": 1, "top_fraction": 3}),
    ],
)
def test_exact_counts_per_rule(scored_folder, tmp_path, rules, kept, dropped_by):
    decisions = run_rules(scored_folder, tmp_path / "out", **rules)
    assert len(decisions) == 10
    assert len(kept_keys(decisions)) == kept
    counts = {rule: list(decisions.values()).count(rule) for rule in set(decisions.values()) - {"kept"}}
    assert counts == dropped_by
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["kept"] == kept and summary["by_rule"] == {**dropped_by, "kept": kept}
    for name in ("kept.parquet", "dropped.parquet"):  # the same columns whatever the rules
        assert pq.read_schema(tmp_path / "out" / name).remove_metadata() == MANIFEST_SCHEMA, name


def test_manifests_and_summary_name_the_model_and_keep_the_errors(scored_folder, tmp_path):
    decisions = run_rules(scored_folder, tmp_path / "out", top_fraction=0.5)
    scoring = json.loads((Path(scored_folder.scores) / "_manifest.json").read_text())
    model = {key: scoring[key] for key in ("model", "model_trained", "score_scale")}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scoring"] == model and model["model"]
    for name in ("kept.parquet", "dropped.parquet"):
        metadata = pq.read_schema(tmp_path / "out" / name).metadata
        assert json.loads(metadata[SCORING_METADATA_KEY.encode()]) == model, name
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
    errors = {row["key"]: row["error"] for row in dropped if row["status"] != "ok"}
    assert len(errors) == 5 and all(errors.values()), errors
    assert {row["model"] for row in dropped} == {model["model"]}
    assert sum(rule == "kept" for rule in decisions.values()) == 3


def test_min_score_and_top_fraction_keep_the_best(scored_folder, tmp_path):
    best = ok_keys_by_score(scored_folder)
    decisions = run_rules(scored_folder, tmp_path / "a", min_score=ok_scores(scored_folder)[best[2]])
    assert kept_keys(decisions) == sorted(best[:3])
    assert kept_keys(run_rules(scored_folder, tmp_path / "b", top_fraction=0.5)) == sorted(best[:3])
    assert kept_keys(run_rules(scored_folder, tmp_path / "c", bottom_fraction=0.2)) == sorted(best[:4])


def test_groups_from_a_metadata_parquet(scored_folder, tmp_path):
    cameras = {"a/": "dslr", "b/": "phone"}  # portraits 0 and 2 in a/, 1 and 3 in b/; the faceless image: none
    keys = read_scores(scored_folder.scores)["key"].to_pylist()
    camera = [next((c for prefix, c in cameras.items() if k.startswith(prefix)), None) for k in keys]
    pq.write_table(pa.table({"key": keys, "camera": camera}), tmp_path / "meta.parquet")
    config = FilterJobConfig(
        scored_folder.scores,
        str(tmp_path / "out"),
        FilterConfig(top_fraction=0.5, per="camera"),
        metadata=str(tmp_path / "meta.parquet"),
    )
    outcome = run_filter(config)
    assert [(g.group, g.rows, g.kept) for g in outcome.summary.breakdown] == [
        ("dslr", 2, 1),
        ("phone", 2, 1),
        (None, 6, 1),
    ]
    kept = pq.read_table(tmp_path / "out" / "kept.parquet")
    assert kept.schema.remove_metadata() == MANIFEST_SCHEMA
    assert kept.num_rows == 3 and set(kept["group"].to_pylist()) == {"dslr", "phone", None}
    best = ok_keys_by_score(scored_folder)
    assert sorted(kept["key"].to_pylist()) == sorted(
        [next(k for k in best if k.startswith(p)) for p in cameras] + [FACELESS_KEY]
    )


def test_manifests_are_byte_identical_across_runs_and_readers(scored_folder, tmp_path):
    rules = FilterConfig(top_fraction=0.5, per="shard", require_face=True)
    for name, use_ray in (("first", False), ("again", False), ("ray", True)):
        run_filter(
            FilterJobConfig(scored_folder.scores, str(tmp_path / name), rules, emit_dropped=True, use_ray=use_ray)
        )
    for file in ("kept.parquet", "dropped.parquet", "summary.json"):
        first = (tmp_path / "first" / file).read_bytes()
        assert first == (tmp_path / "again" / file).read_bytes() == (tmp_path / "ray" / file).read_bytes(), file


def test_resharded_tars_read_back_with_the_same_keys_bytes_and_scores(scored_folder, tmp_path):
    storage = Storage()
    config = FilterJobConfig(
        scored_folder.scores, str(tmp_path / "out"), reshard=ReshardConfig(str(tmp_path / "tars"), 2)
    )
    outcome = run_filter(config)
    kept = pq.read_table(tmp_path / "out" / "kept.parquet").to_pylist()
    assert outcome.resharded.samples == len(kept) == PORTRAITS + 1
    assert sorted(p.name for p in (tmp_path / "tars").iterdir()) == [
        "kept-000000.tar",
        "kept-000001.tar",
        "kept-000002.tar",
    ]

    sidecars = {name: json.loads(members["json"]) for name, members in resharded_samples(tmp_path / "tars")}
    assert list(sidecars.values()) == kept  # the manifest's rows, in its order, original keys included
    shards = list_shards(str(tmp_path / "tars"), storage)
    records = [record for shard in shards for record in read_records(shard, storage)]
    assert [r.key for r in records] == list(sidecars)  # `piqa score` reads the samples under their names
    for record in records:
        assert record.data == (scored_folder.corpus.root / sidecars[record.key]["key"]).read_bytes()
    rescored = score(tmp_path / "tars", tmp_path / "rescored")
    assert rescored.counts == {"ok": len(kept)}
    again = {sidecars[r["key"]]["key"]: r["score"] for r in read_scores(tmp_path / "rescored").to_pylist()}
    assert again == pytest.approx({row["key"]: row["score"] for row in kept}, abs=1e-5)

    run_filter(
        FilterJobConfig(scored_folder.scores, str(tmp_path / "out"), reshard=ReshardConfig(str(tmp_path / "tars"), 5))
    )
    assert [p.name for p in (tmp_path / "tars").iterdir()] == ["kept-000000.tar"], "stale tars left behind"


def resharded_samples(folder: Path) -> list[tuple[str, dict[str, bytes]]]:
    """The samples of the `kept-*.tar` under `folder`, in order, as the `webdataset` library groups them."""
    return [sample for tar in sorted(folder.glob("kept-*.tar")) for sample in webdataset_samples(tar.read_bytes())]


def test_keys_with_dots_slashes_and_twins_reshard_into_whole_webdataset_samples(tmp_path):
    scored = [  # (key, the file it was scored from): names that clash once made safe, and one key from two inputs
        ("a/b.c/photo.v2.jpg", "one/a/b.c/photo.v2.jpg"),
        ("a/b_c/photo_v2.jpg", "one/a/b_c/photo_v2.jpg"),
        ("a_b_c_photo_v2_jpg", "one/plain.png"),
        ("x.y.png", "one/x.y.png"),
        ("x.y.png", "two/x.y.png"),
    ]
    for number, (_, path) in enumerate(scored):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * number, 0, 0)).save(tmp_path / path)
    kept = pa.table(
        {
            "key": [key for key, _ in scored],
            "source": [str(tmp_path / path) for _, path in scored],
            "score": [float(number) for number in range(len(scored))],
        }
    )
    reshard(kept, ReshardConfig(str(tmp_path / "tars"), 2), Storage(), SourceFormat())

    samples = resharded_samples(tmp_path / "tars")
    names = ["a_b_c_photo_v2_jpg", "a_b_c_photo_v2_jpg-1", "a_b_c_photo_v2_jpg-2", "x_y_png", "x_y_png-1"]
    assert [name for name, _ in samples] == names
    for (_, members), row, (_, path) in zip(samples, kept.to_pylist(), scored, strict=True):
        extension = "png" if path.endswith(".png") else "jpg"
        assert members.keys() == {extension, "json"}
        assert members[extension] == (tmp_path / path).read_bytes()
        assert json.loads(members["json"]) == row
    shards = list_shards(str(tmp_path / "tars"), Storage())
    assert [r.key for shard in shards for r in read_records(shard, Storage())] == names


def test_a_sample_gone_from_its_source_fails_the_reshard_by_name(scored_folder, tmp_path):
    kept = pq.read_table(Path(scored_folder.scores) / "files-000000.parquet").select(["key", "source", "score"])
    moved = kept.set_column(1, "source", pa.array([str(tmp_path / "gone.jpg")] + kept["source"].to_pylist()[1:]))
    with pytest.raises(ReshardError, match=r"1 kept samples cannot be read.*gone\.jpg.*FileNotFoundError"):
        reshard(moved, ReshardConfig(str(tmp_path / "tars"), 2), Storage(), SourceFormat())
    assert [p.name for p in (tmp_path / "tars").glob("*.tar")] == ["kept-000001.tar"]


def test_python_m_jobs_filter(scored_folder, tmp_path, capsys):
    argv = [scored_folder.scores, "--out", str(tmp_path / "out"), "--top-fraction", "0.5", "--per", "shard"]
    assert run([*argv, "--report", "--emit-dropped"], filter_job.build_parser) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "kept 4 of 10 rows (6 dropped); decided by: status 5, top_fraction 1, kept 4"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "kept.parquet",
        "dropped.parquet",
        "summary.json",
        "groups.parquet",
        "report.html",
    }

    assert run([*argv[:3], "--per", "liqe_scene", "--top-fraction", "0.5"], filter_job.build_parser) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after any Ray Data progress lines
    assert error.startswith("python -m jobs.filter: error: no column(s) liqe_scene in the scores")
    assert run([*argv[:3], "--top-fraction", "2"], filter_job.build_parser) == 1
    assert "top_fraction must be between 0 and 1, got 2.0" in capsys.readouterr().err
    assert run([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], filter_job.build_parser) == 1
    assert capsys.readouterr().err.strip() == f"python -m jobs.filter: error: {tmp_path / 'nowhere'} does not exist"
    assert not (tmp_path / "o").exists()


def test_filter_refuses_an_unknown_status_and_its_help_shows_choices_and_defaults(scored_folder, tmp_path, capsys):
    argv = [scored_folder.scores, "--out", str(tmp_path / "out"), "--status", "OK"]
    assert run(argv, filter_job.build_parser) == 1
    assert capsys.readouterr().err.strip() == (
        "python -m jobs.filter: error: unknown status(es) OK; the statuses are "
        "ok, decode_error, unsupported, too_large, read_error"
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        run(["--help"], filter_job.build_parser)
    text = " ".join(capsys.readouterr().out.split())
    assert "from ok, decode_error, unsupported, too_large, read_error (default: ok)" in text
    for default in ("the key column of --metadata (default: key)", "resharded tar (default: 1000)"):
        assert default in text, default
    assert "(default: none: the fractions count all rows" in text


def test_filter_prints_a_breakdown_not_groups_without_per(scored_folder, tmp_path, capsys):
    argv = [scored_folder.scores, "--out", str(tmp_path / "out"), "--top-fraction", "0.5"]
    assert run(argv, filter_job.build_parser) == 0
    assert "breakdown by shard (fractions counted over all rows):" in capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rules"]["per"] is None
    assert (summary["breakdown_by"], summary["fraction_scope"]) == ("shard", "all rows")
    assert "group_column" not in summary and "groups" not in summary


def headings(page: Path) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page.read_text())


def test_reports_show_each_group_table_once(scored_folder, tmp_path):
    from jobs import report as report_job

    page = tmp_path / "report.html"
    assert run([scored_folder.scores, "--out", str(page), "--group", "shard"], report_job.build_parser) == 0
    assert [h for h in headings(page) if h.startswith("Per ")] == ["Per shard", "Per num_faces"]
    assert run([scored_folder.scores, "--out", str(page)], report_job.build_parser) == 0
    assert [h for h in headings(page) if h.startswith("Per ")] == ["Per num_faces", "Per shard"]
    argv = [scored_folder.scores, "--out", str(tmp_path / "out"), "--per", "shard", "--top-fraction", "0.5"]
    assert run([*argv, "--report"], filter_job.build_parser) == 0
    assert headings(tmp_path / "out" / "report.html") == [
        "Score distribution",
        "Examples at score percentiles",
        "Rows by status",
        "Rows by deciding rule",
        "Per shard",
        "Per num_faces",
    ]


def test_report_of_scores_from_an_untrained_model_says_so(scored_folder, tmp_path):
    import shutil

    from jobs import report as report_job

    scores = tmp_path / "scores"
    shutil.copytree(scored_folder.scores, scores)
    manifest = json.loads((scores / "_manifest.json").read_text())
    (scores / "_manifest.json").write_text(json.dumps({**manifest, "model_trained": False}))
    assert run([str(scores), "--out", str(tmp_path / "report.html")], report_job.build_parser) == 0
    assert '<p id="untrained">' in (tmp_path / "report.html").read_text()
