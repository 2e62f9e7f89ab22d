"""Per-shard output: collect a shard's rows as they stream in, commit its Parquet when the last arrives.

A shard's file is written once, whole and atomically (see `Storage.write_atomic`), as soon as every
record of the shard has a result; a reader never sees a partial file, and a rerun treats an existing
file as done. Rows are keyed by their position in the shard, so a retried batch cannot double a row.
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import Storage
from piqa_model.record import LIQE_FIELDS, RECORD_SCHEMA

OUTPUT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        *RECORD_SCHEMA,
        ("model", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)


def shard_output_uri(output: str, shard_id: str) -> str:
    return posixpath.join(output.rstrip("/"), f"{shard_id}.parquet")


@dataclass
class ShardCommitter:
    output: str
    storage: Storage
    with_liqe: bool
    pending: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    committed: list[str] = field(default_factory=list)

    @property
    def schema(self) -> pa.Schema:
        if self.with_liqe:
            return OUTPUT_SCHEMA
        return pa.schema([f for f in OUTPUT_SCHEMA if f.name not in LIQE_FIELDS])

    def add(self, batch: pa.Table) -> None:
        """Take a batch of scored rows; commit every shard it completes."""
        now = datetime.now(UTC)
        touched = set()
        stored = [name for name in self.schema.names if name != "scored_at"]
        for row in batch.to_pylist():
            shard = row["shard"]
            self.pending.setdefault(shard, {})[row["index"]] = {name: row[name] for name in stored} | {
                "scored_at": now,
                "_total": row["shard_total"],
            }
            touched.add(shard)
        for shard in touched:
            rows = self.pending[shard]
            if len(rows) == next(iter(rows.values()))["_total"]:
                self._commit(shard, [rows[i] for i in sorted(rows)])
                del self.pending[shard]

    def _commit(self, shard: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row.pop("_total")
        self.counts.update(row["status"] for row in rows)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.storage.write_atomic(shard_output_uri(self.output, shard), buffer.getvalue())
        self.committed.append(shard)
