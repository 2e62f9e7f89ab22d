"""Writing kept samples into new WebDataset tar shards, with Ray Data.

The kept manifest, in its order, is cut into tars of `shard_size` samples named `kept-000000.tar`,
`kept-000001.tar`, ... Each tar is one Ray task: it re-reads the sources its samples come from
(`pipelines.fetch`, the scoring pipeline's readers), and commits the tar with `Storage.write_atomic`.
Image bytes go from the source to the tar inside one task and never through Ray's object store. A manifest
is ordered by shard, so the samples of one source container are contiguous and a container is re-read only
by the (usually one or two) tars its samples land in.

Each sample becomes `{key}.{ext}` with its original bytes (ext from the bytes' format) and `{key}.json`, its
manifest row (key, source, score, the columns the rules used, decided_by). `piqa score` reads such a tar
back with the same keys: it takes a member's key up to the last dot. (The `webdataset` library cuts at the
first dot of the name instead, so keys with dots, such as the file names of folder inputs, differ there.)
Tars are byte-for-byte deterministic (fixed mtime, owner and mode), and `kept-*.tar` files of an earlier run
beyond this run's count are removed, so the folder holds exactly this manifest.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from pipelines.fetch import SourceFormat, fetch_records, file_extension
from pipelines.runtime import ensure_ray
from pipelines.storage import Storage, StorageError

TAR_NAME = "kept-{:06d}.tar"
TAR_PATTERN = re.compile(r"kept-\d{6}\.tar")
TASK_CPUS = 0.5
RESULT_SCHEMA = pa.schema(
    [("tar", pa.int64()), ("uri", pa.string()), ("bytes", pa.int64()), ("problems", pa.list_(pa.string()))]
)


class ReshardError(StorageError):
    """Kept samples whose bytes can no longer be read from their source."""


@dataclass(frozen=True)
class ReshardConfig:
    output: str  # folder or prefix for the tars (local or s3://)
    shard_size: int = 1000  # samples per tar

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")


@dataclass(frozen=True)
class ReshardSummary:
    output: str
    tars: list[str]
    samples: int
    bytes: int

    def line(self) -> str:
        return (
            f"resharded {self.samples} samples into {len(self.tars)} tars "
            f"({self.bytes / 1e6:.1f} MB) under {self.output}"
        )


def reshard(kept: pa.Table, config: ReshardConfig, storage: Storage, source_format: SourceFormat) -> ReshardSummary:
    """Write the samples of the manifest `kept` into tars under `config.output`.

    Raises ReshardError, naming the samples, when some cannot be read from their source (moved or changed
    since scoring); the tars holding them are not written.
    """
    storage.check_writable(config.output)
    rows = kept.to_pylist()
    starts = range(0, len(rows), config.shard_size)
    items = [
        {"tar": n, "rows": json.dumps(rows[start : start + config.shard_size], default=str)}
        for n, start in enumerate(starts)
    ]
    results: list[dict[str, Any]] = []
    if items:
        ensure_ray()
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _write_tar,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=TASK_CPUS,
            fn_kwargs={"output": config.output, "storage": storage, "source_format": source_format},
        )
        results = sorted(ds.take_all(), key=lambda row: row["tar"])
    problems = [problem for result in results for problem in result["problems"]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ReshardError(
            f"{len(problems)} kept samples cannot be read from their source: {shown}. "
            "Rescore the changed sources, or drop these keys, and rerun."
        )
    written = [result["uri"] for result in results]
    _remove_stale_tars(config.output, storage, keep=written)
    return ReshardSummary(config.output, written, len(rows), sum(result["bytes"] for result in results))


def _write_tar(batch: pa.Table, *, output: str, storage: Storage, source_format: SourceFormat) -> pa.Table:
    """Task: one tar's manifest rows in; the tar written; its URI, size and any unreadable samples out."""
    [item] = batch.to_pylist()
    rows = json.loads(item["rows"])
    keys_by_source: dict[str, list[str]] = {}
    for row in rows:
        keys_by_source.setdefault(row["source"], []).append(row["key"])
    found = {}
    for source, keys in keys_by_source.items():
        found |= {(source, key): record for key, record in fetch_records(source, keys, storage, source_format).items()}
    members: list[tuple[str, bytes]] = []
    problems: list[str] = []
    for row in rows:
        record = found.get((row["source"], row["key"]))
        if record is None or record.data is None:
            reason = record.error if record is not None else "no such key there"
            problems.append(f"{row['key']!r} in {row['source']} ({reason})")
            continue
        extension = file_extension(record.data, row["source"])
        members.append((f"{row['key']}.{extension}", record.data))
        members.append((f"{row['key']}.json", json.dumps(row, sort_keys=True, default=str).encode()))
    uri = posixpath.join(output.rstrip("/"), TAR_NAME.format(item["tar"]))
    payload = b"" if problems else _tar_bytes(members)
    if not problems:
        storage.write_atomic(uri, payload)
    return pa.table(
        {"tar": [item["tar"]], "uri": [uri], "bytes": [len(payload)], "problems": [problems]},
        schema=RESULT_SCHEMA,
    )


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _remove_stale_tars(output: str, storage: Storage, keep: list[str]) -> None:
    fs, root = storage.filesystem(output)
    kept_names = {posixpath.basename(uri) for uri in keep}
    for path in fs.glob(posixpath.join(root, "kept-*.tar")):
        name = posixpath.basename(path)
        if TAR_PATTERN.fullmatch(name) and name not in kept_names:
            fs.rm_file(path)
