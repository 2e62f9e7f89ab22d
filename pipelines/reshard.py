"""Writing kept samples into new WebDataset tar shards, with Ray Data.

The kept manifest, in its order, is cut into tars of `shard_size` samples named `kept-000000.tar`,
`kept-000001.tar`, ... Each tar is one Ray task: it re-reads the sources its samples come from
(`pipelines.fetch`, the scoring pipeline's readers), and commits the tar with `Storage.write_atomic`.
Image bytes go from the source to the tar inside one task and never through Ray's object store. A manifest
is ordered by shard, so the samples of one source container are contiguous and a container is re-read only
by the (usually one or two) tars its samples land in.

Each sample becomes `{name}.{ext}` with its original bytes (ext from the bytes' format) and `{name}.json`, its
manifest row: `key` (the original key), `source` (where the bytes came from, as the score row names it) and
the other manifest columns. WebDataset readers split a member name at its first dot and `piqa score` at its
last, so the name holds no dot (`sample_names`: `a/b.c/photo.v2.jpg` -> `a_b_c_photo_v2_jpg`, unique across
the manifest): both read a sample back whole, under its name, and the sidecar's `key` maps it back.
Tars are byte-for-byte deterministic (fixed mtime, owner and mode), and `kept-*.tar` files of an earlier run
beyond this run's count are removed, so the folder holds exactly this manifest.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from pipelines.fetch import SourceFormat, fetch_records, file_extension
from pipelines.runtime import ensure_ray
from pipelines.storage import Storage, StorageError
from piqa_model.errors import ConfigError

TAR_NAME = "kept-{:06d}.tar"
TAR_PATTERN = re.compile(r"kept-\d{6}\.tar")
UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
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
            raise ConfigError(f"shard_size must be at least 1, got {self.shard_size}")


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
    names = sample_names(row["key"] for row in rows)
    samples = [{"name": name, "row": row} for name, row in zip(names, rows, strict=True)]
    starts = range(0, len(samples), config.shard_size)
    items = [
        {"tar": n, "samples": json.dumps(samples[start : start + config.shard_size], default=str)}
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


def sample_names(keys: Iterable[str]) -> list[str]:
    """The name in the tars of each of `keys`, in order: the key with what is not `A-Z a-z 0-9 _ -` made `_`,
    and `-1`, `-2`, ... added where an earlier key already has that name. Deterministic, free of dots, and
    distinct, even for one key that comes from two sources."""
    taken: set[str] = set()
    next_suffix: dict[str, int] = {}
    names = []
    for key in keys:
        base = UNSAFE_IN_NAME.sub("_", key) or "_"
        suffix = next_suffix.get(base, 0)
        name = f"{base}-{suffix}" if suffix else base
        while name in taken:
            suffix += 1
            name = f"{base}-{suffix}"
        next_suffix[base] = suffix + 1
        taken.add(name)
        names.append(name)
    return names


def _write_tar(batch: pa.Table, *, output: str, storage: Storage, source_format: SourceFormat) -> pa.Table:
    """Task: one tar's samples (name, manifest row) in; the tar written; its URI, size and unreadable samples out."""
    [item] = batch.to_pylist()
    samples = json.loads(item["samples"])
    rows = [sample["row"] for sample in samples]
    keys_by_source: dict[str, list[str]] = {}
    for row in rows:
        keys_by_source.setdefault(row["source"], []).append(row["key"])
    found = {}
    for source, keys in keys_by_source.items():
        found |= {(source, key): record for key, record in fetch_records(source, keys, storage, source_format).items()}
    members: list[tuple[str, bytes]] = []
    problems: list[str] = []
    for sample in samples:
        name, row = sample["name"], sample["row"]
        record = found.get((row["source"], row["key"]))
        if record is None or record.data is None:
            reason = record.error if record is not None else "no such key there"
            problems.append(f"{row['key']!r} in {row['source']} ({reason})")
            continue
        extension = file_extension(record.data, row["source"])
        members.append((f"{name}.{extension}", record.data))
        members.append((f"{name}.json", json.dumps(row, sort_keys=True, default=str).encode()))
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
