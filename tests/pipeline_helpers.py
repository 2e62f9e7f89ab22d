"""Running the scoring pipeline in tests and reading back what it wrote."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.dataset as pads

from pipelines.config import ScoreConfig
from pipelines.score import RunSummary, run_scoring
from pipelines.storage import Storage

FAST = dict(crop_mode="center", batch_size=4)


def score(input_uri: str, output_uri: str, **options) -> RunSummary:
    return run_scoring(ScoreConfig(input=str(input_uri), output=str(output_uri), **{**FAST, **options}))


def read_scores(output_uri: str) -> pa.Table:
    fs, root = Storage.from_environment().filesystem(str(output_uri))
    files = sorted(p for p in fs.glob(f"{root}/*.parquet"))
    return pa.concat_tables([pads.dataset(p, filesystem=fs, format="parquet").to_table() for p in files])


def assert_rows_match(table: pa.Table, expected: dict[str, str]) -> None:
    """Every expected key exactly once, with its status; ok rows complete, error rows explained."""
    keys = table.column("key").to_pylist()
    assert sorted(keys) == sorted(expected), f"keys differ: {sorted(set(keys) ^ set(expected))}"
    assert len(keys) == len(set(keys)), "duplicate keys"
    for row in table.to_pylist():
        assert row["status"] == expected[row["key"]], (row["key"], row["status"], row["error"])
        if row["status"] == "ok":
            assert math.isfinite(row["score"]) and row["error"] is None
            assert row["width"] > 0 and row["height"] > 0 and row["num_faces"] >= 0
        else:
            assert row["score"] is None and row["error"]
        assert row["model"] and row["scored_at"] is not None
