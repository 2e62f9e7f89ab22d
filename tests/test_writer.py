"""The workers' write path: parts per batch, the driver's ledger of receipts, one commit per complete shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import Storage
from pipelines.tally import Tally
from pipelines.writer import PARTS, PartWriter, ShardCommitter, ShardLedger, clear_parts, output_schema


def scored(shard: str, indices: list[int], total: int) -> pa.Table:
    """Rows as the scoring stage hands them on (the output's columns, plus position and shard size)."""
    schema = output_schema(with_liqe=False)
    rows = [
        {name: None for name in schema.names if name != "scored_at"}
        | dict(key=f"{shard}/{i}", source="src", shard=shard, status="ok", score=float(i), model="m")
        | dict(index=i, shard_total=total)
        for i in indices
    ]
    columns = [f for f in schema if f.name != "scored_at"] + [
        pa.field("index", pa.int64()),
        pa.field("shard_total", pa.int64()),
    ]
    return pa.Table.from_pylist(rows, schema=pa.schema(columns))


def test_a_shard_commits_once_its_rows_are_all_written_even_from_overlapping_retried_parts(tmp_path: Path):
    storage, output = Storage(), str(tmp_path / "out")
    where = dict(output=output, storage=storage, with_liqe=False)
    ledger = ShardLedger(ShardCommitter(**where).commit)
    write_parts = PartWriter(**where)

    # A batch holding two shards' rows; then a retried batch whose rows overlap a written part.
    ledger.add(write_parts(pa.concat_tables([scored("a", [0, 1], 5), scored("b", [0, 1, 2], 3)])))
    assert ledger.pending == ["a"] and len(ledger.commits) == 1
    assert pq.read_table(tmp_path / "out" / "b.parquet")["key"].to_pylist() == ["b/0", "b/1", "b/2"]
    ledger.add(write_parts(scored("a", [1, 2, 4], 5)))
    assert not (tmp_path / "out" / "a.parquet").exists(), "position 3 is still missing"
    ledger.add(write_parts(scored("a", [3], 5)))

    assert ledger.pending == []
    assert ledger.commits == {"b": {"ok": 3}, "a": {"ok": 5}}
    table = pq.read_table(tmp_path / "out" / "a.parquet")
    assert table["key"].to_pylist() == [f"a/{i}" for i in range(5)]  # in shard order, no row twice
    assert table.schema.names == output_schema(with_liqe=False).names
    assert not list((tmp_path / "out" / PARTS).rglob("*.parquet")), "committed parts are removed"
    clear_parts(output, storage)
    assert not (tmp_path / "out" / PARTS).exists()


def test_receipts_describe_runs_of_positions(tmp_path: Path):
    write_parts = PartWriter(output=str(tmp_path), storage=Storage(), with_liqe=False)
    receipts = write_parts(scored("a", [7, 2, 3, 9, 8], 10))
    (receipt,) = receipts.to_pylist()
    assert (receipt["starts"], receipt["stops"]) == ([2, 7], [4, 10])
    assert pq.read_table(receipt["part"])["index"].to_pylist() == [2, 3, 7, 8, 9]


def test_a_shard_whose_parts_are_gone_is_not_committed_and_the_job_is_told_why(tmp_path: Path):
    storage = Storage(tally=Tally())
    where = dict(output=str(tmp_path), storage=storage, with_liqe=False)
    parts = PartWriter(**where)(scored("a", [0, 1], 2))["part"].to_pylist()
    Path(parts[0]).unlink()  # as when its bucket is removed before the commit
    assert ShardCommitter(**where).commit("a", parts) is None
    assert not (tmp_path / "a.parquet").exists()
    _, failures = storage.tally.totals()
    assert failures["a"].startswith(f"cannot commit {tmp_path}/a.parquet: a part written for it is gone (FileNotFound")
