"""The filter rules on small score tables: order, exact fraction counts, ties, groups, determinism."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from pipelines.filtering import (
    MANIFEST_SCHEMA,
    SCORING_METADATA_KEY,
    FilterConfig,
    FilterError,
    decide,
    manifest,
)
from pipelines.scoreset import ScoreSetError, join_column, metadata_lookup
from pipelines.summary import summarize
from piqa_model import errors

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("score", pa.float32()),
        ("num_faces", pa.int32()),
        ("face_prob", pa.float32()),
        ("face_box", pa.list_(pa.float32())),
        ("model", pa.string()),
    ]
)
SCORING = {"model": "starter-0123", "model_trained": True, "score_scale": "0-100"}


def scores(rows: list[tuple]) -> pa.Table:
    """rows of (key, shard, status, score, num_faces, face_prob)."""
    return pa.Table.from_pylist(
        [
            dict(
                key=k,
                source=f"s3://b/{shard}.tar",
                shard=shard,
                status=st,
                error=None if st == "ok" else f"{st} in {k}",
                score=sc,
                num_faces=nf,
                face_prob=fp,
                model="starter-0123",
            )
            for k, shard, st, sc, nf, fp in rows
        ],
        schema=SCHEMA,
    )


def decisions(table: pa.Table, **rules) -> dict[str, str]:
    decided = decide(table, FilterConfig(**rules))
    return dict(zip(decided["key"].to_pylist(), decided["decided_by"].to_pylist(), strict=True))


def kept(table: pa.Table, **rules) -> list[str]:
    return sorted(key for key, rule in decisions(table, **rules).items() if rule == "kept")


def ranked(count: int, shard: str = "s0", prefix: str = "k") -> list[tuple]:
    """`count` ok rows with a face whose scores fall with the key number: k0 best."""
    return [(f"{prefix}{i}", shard, "ok", 1.0 - i / 100, 1, 0.99) for i in range(count)]


def test_each_row_is_decided_by_the_first_rule_it_fails():
    table = scores(
        [
            ("broken", "s0", "decode_error", None, None, None),
            ("faceless", "s0", "ok", 0.9, 0, None),
            ("unsure", "s0", "ok", 0.9, 1, 0.5),
            ("low", "s0", "ok", 0.1, 1, 0.99),
            ("good", "s0", "ok", 0.8, 1, 0.99),
        ]
    )
    rules = dict(require_face=True, min_face_prob=0.9, min_score=0.5)
    assert decisions(table, **rules) == {
        "broken": "status",
        "faceless": "require_face",
        "unsure": "min_face_prob",
        "low": "min_score",
        "good": "kept",
    }
    assert decisions(table) == {"broken": "status", **dict.fromkeys(["faceless", "unsure", "low", "good"], "kept")}
    assert decisions(table, statuses=("ok", "decode_error"))["broken"] == "kept"


def test_top_fraction_keeps_round_half_up_of_each_group():
    table = scores(ranked(5, "a", "a") + ranked(1, "b", "b") + ranked(6, "c", "c") + ranked(4, "d", "d"))
    # one group of 16: 8 kept; ties at a score go to the smaller key
    assert kept(table, top_fraction=0.5) == ["a0", "a1", "a2", "b0", "c0", "c1", "d0", "d1"]
    assert kept(table, top_fraction=0.5, per="shard") == ["a0", "a1", "a2", "b0", "c0", "c1", "c2", "d0", "d1"]
    assert kept(table, top_fraction=0.25, per="shard") == ["a0", "c0", "c1", "d0"]  # 1.25->1, .25->0, 1.5->2, 1
    assert kept(table, top_fraction=0.0, per="shard") == []
    assert len(kept(table, top_fraction=1.0, per="shard")) == 16


def test_bottom_fraction_drops_round_half_up_and_both_count_from_the_same_rows():
    table = scores(ranked(5, "a", "a") + ranked(6, "c", "c"))
    by_rule = decisions(table, bottom_fraction=0.5, per="shard")
    assert sorted(k for k, r in by_rule.items() if r == "bottom_fraction") == ["a2", "a3", "a4", "c3", "c4", "c5"]
    both = decisions(table, bottom_fraction=0.2, top_fraction=0.5, per="shard")
    assert both == {
        **{key: "kept" for key in ("a0", "a1", "a2", "c0", "c1", "c2")},
        "a3": "top_fraction",
        "a4": "bottom_fraction",
        "c3": "top_fraction",
        "c4": "top_fraction",
        "c5": "bottom_fraction",
    }


def test_fractions_count_only_rows_that_passed_the_other_rules():
    table = scores(ranked(4) + [("e1", "s0", "decode_error", None, None, None), ("n1", "s0", "ok", 0.99, 0, None)])
    # eligible: k0..k3 (n1 has no face) -> 0.5 of 4 = 2
    assert kept(table, require_face=True, top_fraction=0.5) == ["k0", "k1"]
    assert decisions(table, require_face=True, top_fraction=0.5)["n1"] == "require_face"


def test_ties_rank_by_key_then_source_and_missing_scores_rank_last():
    table = scores([("b", "s0", "ok", 0.5, 1, 0.9), ("a", "s0", "ok", 0.5, 1, 0.9), ("c", "s0", "ok", 0.5, 1, 0.9)])
    assert kept(table, top_fraction=0.34) == ["a"]
    assert kept(table, top_fraction=0.5) == ["a", "b"]
    with_errors = scores(ranked(2) + [("aaa", "s0", "too_large", None, None, None)])
    assert kept(with_errors, statuses=("ok", "too_large"), top_fraction=0.67) == ["k0", "k1"]


def test_group_by_a_column_with_nulls_and_any_type():
    table = scores(ranked(2, "s0", "one") + [("x0", "s0", "ok", 0.1, None, None), ("x1", "s0", "ok", 0.2, None, None)])
    assert kept(table, per="num_faces", top_fraction=0.5) == ["one0", "x1"]


def test_result_is_canonical_whatever_the_input_order():
    rows = ranked(7, "a", "a") + ranked(5, "b", "b") + [("e", "a", "decode_error", None, None, None)]
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    config = FilterConfig(top_fraction=0.4, per="shard", require_face=True)
    assert decide(scores(rows), config).equals(decide(scores(shuffled), config))
    assert decide(scores(shuffled), config)["key"].to_pylist()[:3] == ["a0", "a1", "a2"]


def test_manifests_have_one_schema_whatever_the_rules():
    table = scores(ranked(4) + [("e", "s0", "decode_error", None, None, None)])
    configs = [
        FilterConfig(),
        FilterConfig(min_face_prob=0.5, top_fraction=0.5, per="shard"),
        FilterConfig(require_face=True, min_score=0.5, per="num_faces"),
    ]
    for config in configs:
        for kept in (True, False):
            rows = manifest(decide(table, config), config, SCORING, kept=kept)
            assert rows.schema.remove_metadata() == MANIFEST_SCHEMA, (config, kept)
            assert json.loads(rows.schema.metadata[SCORING_METADATA_KEY.encode()]) == SCORING
    config = configs[1]
    decided = decide(table, config)
    kept_rows = manifest(decided, config, SCORING)
    assert kept_rows["key"].to_pylist() == ["k0", "k1"] and kept_rows["group"].to_pylist() == ["s0", "s0"]
    assert set(kept_rows["model"].to_pylist()) == {"starter-0123"}
    dropped = manifest(decided, config, SCORING, kept=False).to_pylist()
    assert {row["key"]: (row["decided_by"], row["error"]) for row in dropped} == {
        "e": ("status", "decode_error in e"),
        "k2": ("top_fraction", None),
        "k3": ("top_fraction", None),
    }
    assert manifest(decided, FilterConfig(), SCORING)["group"].null_count == 2  # no --per: no group


def test_summary_counts_per_rule_and_group_and_scores_before_after():
    table = scores(ranked(4, "a", "a") + ranked(2, "b", "b") + [("e", "b", "decode_error", None, None, None)])
    config = FilterConfig(top_fraction=0.5, per="shard")
    summary = summarize(decide(table, config), config)
    assert (summary.rows, summary.kept, summary.dropped) == (7, 3, 4)
    assert summary.by_rule == {"status": 1, "top_fraction": 3, "kept": 3}
    assert [(g.group, g.rows, g.kept, g.dropped_by) for g in summary.breakdown] == [
        ("a", 4, 2, {"top_fraction": 2}),
        ("b", 3, 1, {"status": 1, "top_fraction": 1}),
    ]
    assert summary.before.count == 6 and summary.after.count == 3
    assert summary.after.min == pytest.approx(0.99) and summary.before.min == pytest.approx(0.97)
    assert summary.to_dict()["dropped"] == 4
    assert summary.lines()[0] == "kept 3 of 7 rows (4 dropped); decided by: status 1, top_fraction 3, kept 3"
    assert summary.lines()[3] == "breakdown by shard (fractions counted over each shard group):"


def test_a_summary_without_per_says_the_fractions_counted_all_rows():
    table = scores(ranked(4, "a", "a") + [("b0", "b", "ok", 0.5, 1, 0.99), ("b1", "b", "ok", 0.4, 1, 0.99)])
    config = FilterConfig(top_fraction=0.5)
    summary = summarize(decide(table, config), config)
    assert summary.lines()[3] == "breakdown by shard (fractions counted over all rows):"
    assert summary.to_dict()["fraction_scope"] == "all rows" and summary.to_dict()["breakdown_by"] == "shard"
    assert "groups" not in summary.to_dict() and "group_column" not in summary.to_dict()
    assert [(g.group, g.kept) for g in summary.breakdown] == [("a", 3), ("b", 0)]
    plain = summarize(decide(table, FilterConfig()), FilterConfig())
    assert plain.lines()[3] == "breakdown by shard:" and plain.fraction_scope is None


def test_bad_rules_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="top_fraction must be between 0 and 1"):
        FilterConfig(top_fraction=1.5)
    with pytest.raises(ValueError, match="at least one status"):
        FilterConfig(statuses=())
    with pytest.raises(ValueError, match="unknown status.es. OK; the statuses are ok, decode_error, unsupported"):
        FilterConfig(statuses=("OK",))
    table = scores(ranked(2))
    with pytest.raises(FilterError, match="no column.s. liqe_scene .*needs --metadata"):
        decide(table, FilterConfig(per="liqe_scene", top_fraction=0.5))
    with pytest.raises(FilterError, match="holds lists"):
        decide(table, FilterConfig(per="face_box"))


def test_statuses_name_every_status_a_score_row_can_have():
    image_errors = [errors.ImageDecodeError, errors.UnsupportedImageError, errors.ImageTooLargeError]
    assert {"ok", *(e.status for e in image_errors), "read_error"} == set(errors.STATUSES)
    assert {e.status for e in errors.ImageError.__subclasses__()} <= set(errors.STATUSES)
    FilterConfig(statuses=errors.STATUSES)


def test_metadata_column_joins_by_key():
    table = scores(ranked(3))
    metadata = pa.table({"id": ["k2", "k0", "zz"], "camera": ["phone", "dslr", "phone"]})
    joined = join_column(table, metadata_lookup(metadata, "camera", key="id"), "camera")
    assert joined["camera"].to_pylist() == ["dslr", None, "phone"]
    with pytest.raises(ScoreSetError, match="more than once"):
        metadata_lookup(pa.table({"key": ["k0", "k0"], "camera": ["a", "b"]}), "camera")
    with pytest.raises(ScoreSetError, match="no column 'camera'"):
        metadata_lookup(pa.table({"key": ["k0"]}), "camera")
    with pytest.raises(ScoreSetError, match="already a score column"):
        join_column(table, metadata_lookup(pa.table({"key": ["k0"], "status": ["x"]}), "status"), "status")
