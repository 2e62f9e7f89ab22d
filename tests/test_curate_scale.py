"""Filtering out of core: the passes over batches, partitions and split groups decide every row as the rules
say, whatever the block size; manifests in parts; summaries that do not grow with the groups."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.curate import FilterJobConfig, run_filter
from pipelines.filtering import RULES, FilterConfig, decide
from pipelines.scoreset import list_parquet
from pipelines.storage import Storage
from pipelines.summary import GROUPS_SHOWN, ScoreStats
from pipelines.writer import OUTPUT_SCHEMA

RULE_SETS = [
    dict(top_fraction=0.3),
    dict(top_fraction=0.5, per="shard"),
    dict(bottom_fraction=0.2, top_fraction=0.6, per="liqe_scene", require_face=True),
    dict(bottom_fraction=0.25, per="num_faces", min_score=0.2, statuses=("ok", "decode_error")),
    dict(top_fraction=0.0, per="shard"),
    dict(top_fraction=1.0, bottom_fraction=0.0),
    dict(min_face_prob=0.95),
]


def random_scores(rows: int, seed: int) -> pa.Table:
    """Score rows with ties (scores on a coarse grid), missing scores, null groups and uneven group sizes."""
    rng = random.Random(seed)
    records = []
    for _ in range(rows):
        broken = rng.random() < 0.1
        shard = f"s{min(int(rng.expovariate(0.4)), 9)}"
        records.append(
            {
                "key": f"k{rng.randrange(rows // 2):05d}",
                "source": f"src{rng.randrange(3)}/{shard}.tar",
                "shard": shard,
                "status": "decode_error" if broken else "ok",
                "error": "bad" if broken else None,
                "num_faces": None if broken else rng.choice([0, 1, 1, 2, None]),
                "face_prob": None if broken else round(rng.uniform(0.8, 1.0), 2),
                "score": None if broken else round(rng.random(), 1),
                "liqe_scene": None if broken or rng.random() < 0.2 else rng.choice(["human", "night", "indoor"]),
                "model": "m",
            }
        )
    table = pa.Table.from_pylist(records)
    columns = {name: table[name].cast(OUTPUT_SCHEMA.field(name).type) for name in table.column_names}
    return pa.table(columns)


def reference(table: pa.Table, config: FilterConfig) -> dict[tuple, str]:
    """The rules as the docstring of `pipelines.filtering` states them, one row at a time."""
    rows = table.to_pylist()
    decided = {}
    for position, row in enumerate(rows):
        checks = [
            ("status", row["status"] in config.statuses),
            ("require_face", not config.require_face or (row["num_faces"] or 0) >= 1),
            ("min_face_prob", config.min_face_prob is None or (row["face_prob"] or -1) >= config.min_face_prob),
            ("min_score", config.min_score is None or (row["score"] is not None and row["score"] >= config.min_score)),
        ]
        decided[position] = next((rule for rule, passes in checks if not passes), "kept")
    groups: dict = {}
    for position, row in enumerate(rows):
        if decided[position] == "kept":
            value = row[config.per] if config.per else None
            groups.setdefault(None if value is None else str(value), []).append(position)
    for members in groups.values():
        members.sort(
            key=lambda p: (rows[p]["score"] is None, -(rows[p]["score"] or 0), rows[p]["key"], rows[p]["source"])
        )
        n = len(members)
        survive = n - math.floor(config.bottom_fraction * n + 0.5) if config.bottom_fraction is not None else n
        keep = math.floor(config.top_fraction * n + 0.5) if config.top_fraction is not None else n
        for rank, position in enumerate(members):
            if rank >= survive:
                decided[position] = "bottom_fraction"
            elif rank >= keep:
                decided[position] = "top_fraction"
    return {(row["key"], row["source"], row["shard"], i): decided[i] for i, row in enumerate(rows)}


def unique_rows(table: pa.Table) -> pa.Table:
    """Rows with distinct (key, source): the rank is a total order over them."""
    seen, keep = set(), []
    for i, (key, source) in enumerate(zip(table["key"].to_pylist(), table["source"].to_pylist(), strict=True)):
        if (key, source) not in seen:
            seen.add((key, source))
            keep.append(i)
    return table.take(pa.array(keep))


def as_decisions(table: pa.Table) -> dict[tuple, str]:
    return {
        (row["key"], row["source"]): row["decided_by"]
        for row in table.select(["key", "source", "decided_by"]).to_pylist()
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decide_follows_the_stated_rules_on_random_tables(seed):
    table = unique_rows(random_scores(400, seed))
    for rules in RULE_SETS:
        config = FilterConfig(**rules)
        expected = {(k, s): rule for (k, s, _, _), rule in reference(table, config).items()}
        assert as_decisions(decide(table, config)) == expected, rules


def write_files(table: pa.Table, folder: Path, files: int) -> None:
    folder.mkdir()
    for number, start in enumerate(range(0, table.num_rows, math.ceil(table.num_rows / files))):
        pq.write_table(table.slice(start, math.ceil(table.num_rows / files)), folder / f"f{number:03d}.parquet")


@pytest.mark.parametrize("block_rows", [23, 120, 1_000_000])
def test_the_job_decides_the_same_rows_whatever_the_block_size(tmp_path, block_rows):
    """23 rows a block: many batches, partitions, and groups split into score ranges (with ties in them)."""
    table = unique_rows(random_scores(700, 7))
    write_files(table, tmp_path / "scores", files=9)
    for number, rules in enumerate(RULE_SETS):
        config = FilterConfig(**rules)
        out = tmp_path / f"out{number}"
        job = FilterJobConfig(str(tmp_path / "scores"), str(out), config, emit_dropped=True, block_rows=block_rows)
        outcome = run_filter(job)
        got = {}
        for name in ("kept.parquet", "dropped.parquet"):
            assert (out / name).is_dir() == (block_rows < table.num_rows), name
            got |= as_decisions(pq.read_table(out / name))
        expected = {(k, s): rule for (k, s, _, _), rule in reference(table, config).items()}
        assert got == expected, rules
        assert outcome.summary.rows == table.num_rows
        assert outcome.summary.kept == sum(rule == "kept" for rule in expected.values())


def test_parts_are_listed_deterministic_and_read_back_by_our_readers(tmp_path):
    table = unique_rows(random_scores(500, 11))
    write_files(table, tmp_path / "scores", files=6)
    config = FilterConfig(top_fraction=0.4, per="shard")
    payloads = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        run_filter(FilterJobConfig(str(tmp_path / "scores"), str(out), config, emit_dropped=True, block_rows=100))
        listing = json.loads((out / "kept.parquet" / "_parts.json").read_text())
        assert listing["parts"] == sorted(p.name for p in (out / "kept.parquet").glob("part-*.parquet"))
        assert listing["rows"] == pq.read_table(out / "kept.parquet").num_rows
        payloads.append({p.name: p.read_bytes() for p in sorted((out / "kept.parquet").iterdir())})
        assert not (out / "_work").exists()
        parts = list_parquet(str(out / "kept.parquet"), Storage())
        assert [Path(uri).name for uri in parts] == listing["parts"]
    assert payloads[0] == payloads[1]
    # a rerun into the same output in the other form leaves only the new one
    out = tmp_path / "out0"
    run_filter(FilterJobConfig(str(tmp_path / "scores"), str(out), config, block_rows=10_000))
    assert (out / "kept.parquet").is_file()


def test_summary_lists_the_largest_and_most_dropped_groups_and_all_in_groups_parquet(tmp_path):
    rows = []
    for g in range(60):
        rows += [
            {"key": f"g{g}-{i}", "source": "s", "shard": f"shard{g:02d}", "status": "ok", "score": i / 10}
            for i in range(g % 7 + 1)
        ]
    table = pa.Table.from_pylist(rows)
    table = pa.table({name: table[name].cast(OUTPUT_SCHEMA.field(name).type) for name in table.column_names})
    table = table.append_column("error", pa.nulls(table.num_rows, pa.string()))
    for name in ("num_faces", "face_prob", "model"):
        table = table.append_column(OUTPUT_SCHEMA.field(name), pa.nulls(table.num_rows, OUTPUT_SCHEMA.field(name).type))
    write_files(table, tmp_path / "scores", files=4)
    out = tmp_path / "out"
    outcome = run_filter(FilterJobConfig(str(tmp_path / "scores"), str(out), FilterConfig(min_score=0.3)))
    summary = outcome.summary
    assert summary.group_count == 60 and len(summary.breakdown) <= 2 * GROUPS_SHOWN
    largest = max(summary.breakdown, key=lambda g: g.rows)
    assert largest.rows == 7
    assert len(outcome.lines()) < 2 * GROUPS_SHOWN + 10
    groups = pq.read_table(out / "groups.parquet")
    assert groups.num_rows == 60 and sum(groups["rows"].to_pylist()) == table.num_rows
    assert set(groups.column_names) == {"group", "rows", "kept", *RULES}
    document = json.loads((out / "summary.json").read_text())
    assert document["group_count"] == 60 and document["groups_file"] == "groups.parquet"


@pytest.mark.parametrize("seed", range(4))
def test_score_stats_from_sketches_are_numpys_exactly(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.5, 0.1, 5000), np.full(300, 0.25), rng.uniform(-3, 90, 50)]).astype(
        np.float32
    )
    stats = ScoreStats.of(pa.array(values))
    wide = values.astype(np.float64)
    p10, median, p90 = np.quantile(wide, [0.1, 0.5, 0.9])
    assert (stats.count, stats.min, stats.max) == (
        values.size,
        round(float(wide.min()), 6),
        round(float(wide.max()), 6),
    )
    assert (stats.p10, stats.median, stats.p90) == pytest.approx((p10, median, p90), abs=1e-6)
    assert stats.mean == pytest.approx(wide.mean(), abs=1e-6)
    assert ScoreStats.of(pa.array([], pa.float32())).count == 0


def test_a_report_of_a_big_score_set_is_drawn_from_an_even_sample_and_says_so(tmp_path):
    from pipelines.report import ReportConfig, report_score_set, sample_every

    table = unique_rows(random_scores(700, 5))
    write_files(table, tmp_path / "scores", files=7)
    config = ReportConfig(max_rows=50)
    every = sample_every(table.num_rows, config)
    page = tmp_path / "report.html"

    assert report_score_set(str(tmp_path / "scores"), str(page), config, Storage()) == table.num_rows

    drawn = sum(math.ceil(pq.read_metadata(f).num_rows / every) for f in (tmp_path / "scores").glob("*.parquet"))
    assert every == 14 and f'<p id="sample">drawn from {drawn} of the {table.num_rows} rows' in page.read_text()
    report_score_set(str(tmp_path / "scores"), str(page), ReportConfig(), Storage())
    assert 'id="sample"' not in page.read_text()


def test_the_cli_states_the_jobs_block_size():
    from jobs import filter as filter_job
    from pipelines.curate import BLOCK_ROWS

    assert f"the job's, {BLOCK_ROWS})" in " ".join(filter_job.build_parser().format_help().split())


def test_ray_tasks_decide_the_same_rows_and_write_the_same_bytes(ray_local, tmp_path):
    table = unique_rows(random_scores(400, 13))
    write_files(table, tmp_path / "scores", files=5)
    config = FilterConfig(bottom_fraction=0.2, top_fraction=0.5, per="liqe_scene")
    payloads = []
    for use_ray in (False, True):
        out = tmp_path / f"out-{use_ray}"
        job = FilterJobConfig(str(tmp_path / "scores"), str(out), config, use_ray=use_ray, block_rows=60)
        run_filter(job)
        payloads.append({p.name: p.read_bytes() for p in sorted((out / "kept.parquet").iterdir())})
    assert len(payloads[0]) > 2 and payloads[0] == payloads[1]
