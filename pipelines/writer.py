"""Per-shard output, written by the workers: parts as rows stream in, one Parquet per shard when it is complete.

A `PartWriter` (inside the fused CPU actors, or as a pool after the GPU scoring actors) writes each block's scored
rows as one part file per shard under `OUT/_parts/<shard>/` and returns a small receipt per part: which rows of
which shard it holds. The driver's `ShardLedger` only adds up receipts (per part, never per row); when a shard's
rows are all covered it asks the `ShardCommitter` (a Ray actor, or one in this process) to commit it: that joins
the parts, keeps one row per position in the shard (a retried batch rewrites its part, or writes an overlapping
one: neither doubles a row), writes `OUT/<shard>.parquet` once, whole and atomically (`Storage.write_atomic`), and
removes the parts. A reader never sees a partial shard; a rerun treats an existing shard file as done and starts
its parts over."""

from __future__ import annotations

import contextlib
import hashlib
import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import Storage, StorageError, reason
from pipelines.tally import tell
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
MANIFEST = "_manifest.json"  # under the output: what the job wrote, once it is complete (`pipelines.score`)
PARTS = "_parts"  # under the output: a shard's parts until it is committed (underscore: readers skip it)
RECEIPT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("shard_total", pa.int64()),
        ("part", pa.string()),
        ("starts", pa.list_(pa.int64())),  # the positions in the shard the part holds, as runs [start, stop)
        ("stops", pa.list_(pa.int64())),
    ]
)


def shard_output_uri(output: str, shard_id: str) -> str:
    return posixpath.join(output.rstrip("/"), f"{shard_id}.parquet")


def output_schema(with_liqe: bool) -> pa.Schema:
    """The columns of a shard's file (the LIQE summary only from a model with the LIQE branch)."""
    return OUTPUT_SCHEMA if with_liqe else pa.schema([f for f in OUTPUT_SCHEMA if f.name not in LIQE_FIELDS])


def clear_parts(output: str, storage: Storage) -> None:
    """Remove every part: a run starts uncommitted shards over (parts of a killed run may hold other settings)."""
    parts = posixpath.join(output.rstrip("/"), PARTS)
    fs, root = storage.filesystem(parts)
    if fs.exists(root):
        storage.remove([parts], recursive=True)


class PartWriter:
    """The scored rows of each batch written as one part per shard; one receipt per part. A GPU job runs it as an
    actor pool of its own: tasks that ask for no CPU (a writer waits on storage) make Ray start a worker process for
    each one in flight."""

    def __init__(self, output: str, storage: Storage, with_liqe: bool) -> None:
        self.output, self.storage, self.columns = output, storage, ["index", *output_schema(with_liqe).names]

    def __call__(self, batch: pa.Table) -> pa.Table:
        now = pa.array([datetime.now(UTC)] * batch.num_rows, OUTPUT_SCHEMA.field("scored_at").type)
        rows = batch.append_column("scored_at", now)
        receipts = []
        shards = rows["shard"].to_numpy(zero_copy_only=False)
        for shard in dict.fromkeys(shards):
            of_shard = rows.filter(pa.array(shards == shard))
            part = of_shard.select(self.columns).sort_by("index")
            indices = part["index"].to_numpy()
            starts, stops = _runs(indices)
            name = hashlib.sha256(indices.tobytes()).hexdigest()[:16]  # the same rows: the same part, rewritten
            uri = posixpath.join(self.output.rstrip("/"), PARTS, shard, f"{indices[0]:09d}-{name}.parquet")
            try:
                self.storage.write_atomic(uri, _parquet_bytes(part))
            except OSError as exc:  # no receipt: the shard stays uncommitted, and the job names it
                tell(self.storage.tally, "failed", shard, reason(exc))
                continue
            total = int(of_shard["shard_total"][0].as_py())
            receipts.append(dict(shard=shard, shard_total=total, part=uri, starts=starts, stops=stops))
        return pa.Table.from_pylist(receipts, schema=RECEIPT_SCHEMA)


COMMITTER_ACTOR = {"num_cpus": 0, "max_concurrency": 8, "max_restarts": -1, "max_task_retries": -1}
"""How a job runs its `ShardCommitter` on Ray: threaded (commits wait on storage, 8 at once: each thread that has
committed keeps its allocator caches, so the actor's memory rises with its threads; BENCHMARKS.md, "Long runs"),
restarted and its calls retried if it dies (a commit done twice writes the same file)."""


class ShardCommitter:
    """Joins a complete shard's parts into its file, atomically (`commit`): in a Ray actor (`COMMITTER_ACTOR`), or
    here for a job run in-process."""

    def __init__(self, output: str, storage: Storage, with_liqe: bool) -> None:
        self.output, self.storage, self.schema = output, storage, output_schema(with_liqe)

    def commit(self, shard: str, parts: list[str]) -> dict[str, int] | None:
        """Write `shard`'s file from its `parts` and remove them; its rows' status counts. None when storage failed
        it (told to the storage's tally: the shard stays uncommitted, its parts are redone by a rerun)."""
        try:
            return self._commit(shard, parts)
        except OSError as exc:
            tell(self.storage.tally, "failed", shard, reason(exc))
            return None

    def _commit(self, shard: str, parts: list[str]) -> dict[str, int]:
        uri = shard_output_uri(self.output, shard)
        fs, path = self.storage.filesystem(uri)
        try:
            table = pa.concat_tables([pq.read_table(io.BytesIO(self.storage.read_bytes(part))) for part in parts])
        except FileNotFoundError as exc:
            if not fs.exists(path):  # removed by someone else (or with its bucket) after it was written
                raise StorageError(f"cannot commit {uri}: a part written for it is gone ({reason(exc)})") from exc
            return _status_counts(pq.read_table(io.BytesIO(self.storage.read_bytes(uri))))  # a retried commit
        table = table.sort_by("index")
        indices = table["index"].to_numpy()
        first = np.ones(len(indices), dtype=bool)
        first[1:] = indices[1:] != indices[:-1]  # one row per position: overlapping parts of a retried batch
        table = table.filter(pa.array(first)).drop_columns(["index"]).cast(self.schema)
        self.storage.write_atomic(uri, _parquet_bytes(table))
        with contextlib.suppress(OSError):  # committed: parts left behind are removed by the next run's start
            self.storage.remove(parts)
        return _status_counts(table)


def _status_counts(table: pa.Table) -> dict[str, int]:
    return {item["values"]: item["counts"] for item in pc.value_counts(table["status"]).to_pylist()}


@dataclass
class ShardLedger:
    """The driver's side: receipts in, a commit started for each shard whose rows are all written.

    `commit(shard, parts)` commits one shard: `ShardCommitter.commit` here, or its actor's; what it returns (the
    shard's counts, or a reference to them) is kept in `commits`.
    """

    commit: Callable[[str, list[str]], Any]
    covered: dict[str, np.ndarray] = field(default_factory=dict)  # shard -> which positions have a written row
    parts: dict[str, list[str]] = field(default_factory=dict)
    commits: dict[str, Any] = field(default_factory=dict)  # shard -> what its commit returned

    @property
    def pending(self) -> list[str]:
        """Shards with rows written but not all of them."""
        return sorted(self.covered)

    def add(self, receipts: pa.Table) -> None:
        for receipt in receipts.to_pylist():
            shard = receipt["shard"]
            covered = self.covered.setdefault(shard, np.zeros(receipt["shard_total"], dtype=bool))
            for start, stop in zip(receipt["starts"], receipt["stops"], strict=True):
                covered[start:stop] = True
            self.parts.setdefault(shard, []).append(receipt["part"])
            if covered.all():
                del self.covered[shard]
                self.commits[shard] = self.commit(shard, sorted(set(self.parts.pop(shard))))


def _runs(indices: np.ndarray) -> tuple[list[int], list[int]]:
    """Sorted positions as runs of consecutive ones: ([starts], [stops))."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    return indices[starts].tolist(), (indices[stops - 1] + 1).tolist()


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()
