"""Reading the records of one shard. A record is the bytes of one image plus its identity.

Reading never raises for a bad record: an unreadable member becomes a record with status `read_error`,
so every input still yields exactly one output row (and a tar or parquet shard without any image, one error
row). `read_shards` is the pipeline's read task; this module stays free of torch and the model, so read tasks
start in a fraction of a second.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.shards import Shard, image_extension
from pipelines.storage import Storage


@dataclass
class Record:
    key: str
    source: str
    data: bytes | None
    error: str | None = None  # set when the bytes could not be read


def read_records(shard: Shard, storage: Storage, image_column: str = "jpg", key_column: str = "key") -> list[Record]:
    """Every record of `shard`, in shard order."""
    if shard.kind == "files":
        return [_read_file(uri, shard.source, storage) for uri in shard.files]
    try:
        payload = storage.read_bytes(shard.source)
    except Exception as exc:
        return [Record(shard.shard_id, shard.source, None, f"cannot read shard: {type(exc).__name__}: {exc}")]
    if shard.kind == "tar":
        records, nothing = list(_tar_records(payload, shard.source)), "no image members in this tar"
    else:
        records = list(_parquet_records(payload, shard.source, image_column, key_column))
        nothing = "no rows in this parquet file"
    # An empty shard still makes one row: else it would never be committed, and every rerun would read it again.
    return records or [Record(posixpath.basename(shard.source), shard.source, None, nothing)]


def _read_file(uri: str, prefix: str, storage: Storage) -> Record:
    key = posixpath.relpath(uri, prefix) if uri.startswith(prefix) else uri
    try:
        return Record(key, uri, storage.read_bytes(uri))
    except Exception as exc:
        return Record(key, uri, None, f"{type(exc).__name__}: {exc}")


def _tar_records(payload: bytes, source: str) -> Iterator[Record]:
    """Image members of a tar; a tar that breaks off midway yields what was readable plus one error row."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(payload), mode="r:")  # noqa: SIM115 (closed below)
    except tarfile.TarError as exc:
        yield Record(posixpath.basename(source), source, None, f"not a readable tar file: {exc}")
        return
    with archive:
        try:
            for member in archive:
                if not member.isfile() or image_extension(member.name) is None:
                    continue
                key = member.name.rsplit(".", 1)[0]
                try:
                    handle = archive.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:
                        raise tarfile.ReadError(f"{len(data)} of {member.size} bytes")
                except (tarfile.TarError, OSError) as exc:
                    # The archive breaks inside this member: nothing after it can be read.
                    yield Record(key, source, None, f"corrupt tar member: {exc}")
                    return
                yield Record(key, source, data)
        except (tarfile.TarError, OSError) as exc:
            yield Record(f"{posixpath.basename(source)}@{archive.offset}", source, None, f"corrupt tar: {exc}")


def _parquet_records(payload: bytes, source: str, image_column: str, key_column: str) -> Iterator[Record]:
    try:
        table = pq.read_table(io.BytesIO(payload))
    except Exception as exc:
        yield Record(posixpath.basename(source), source, None, f"not a readable parquet file: {exc}")
        return
    if image_column not in table.column_names:
        columns = ", ".join(table.column_names)
        yield Record(
            posixpath.basename(source),
            source,
            None,
            f"no image column '{image_column}' (columns: {columns}); set --image-column",
        )
        return
    images = table.column(image_column).to_pylist()
    keys = table.column(key_column).to_pylist() if key_column in table.column_names else range(len(images))
    for key, data in zip(keys, images, strict=True):
        if data is None:
            yield Record(str(key), source, None, "no image bytes in this row")
        else:
            yield Record(str(key), source, bytes(data))


RECORD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("index", pa.int64()),
        ("shard_total", pa.int64()),
        ("data", pa.binary()),
        ("read_error", pa.string()),
    ]
)


def read_units(shards: list[Shard], files_per_unit: int) -> list[dict[str, Any]]:
    """The items of the dataset the pipeline starts from, one per read task: a tar or parquet shard whole, a
    files shard in runs of `files_per_unit` files.

    Ray Data merges what one task yields into blocks of up to 128 MiB, and a block is one actor's work: read
    whole, a folder of 384 portraits (one shard) made blocks of 8 and 376 images, and one of two cores did
    nearly all the work. A run of files is a block of its own. (A tar or parquet file is fetched whole; its
    records are cut into chunks as they are read, which Ray merges up to that size.)
    """
    units = []
    for shard in shards:
        identity = dict(shard_id=shard.shard_id, kind=shard.kind, source=shard.source)
        total = len(shard.files) if shard.kind == "files" else -1  # -1: known once read
        for first in range(0, max(1, len(shard.files)), files_per_unit):
            files = list(shard.files[first : first + files_per_unit])
            units.append(identity | dict(files=files, first=first, total=total))
    return units


def read_shards(
    batch: dict[str, np.ndarray], *, storage: Storage, image_column: str, key_column: str, chunk_size: int
) -> Iterator[pa.Table]:
    """Ray Data task: read units in (`read_units`), their records out in blocks of `chunk_size`."""
    for shard_id, kind, source, files, first, total in zip(
        *(batch[name] for name in ("shard_id", "kind", "source", "files", "first", "total")), strict=True
    ):
        shard = Shard(str(shard_id), kind, str(source), tuple(str(f) for f in files))
        records = read_records(shard, storage, image_column, key_column)
        shard_total = int(total) if total >= 0 else len(records)
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            index = int(first) + start
            yield pa.Table.from_pydict(
                {
                    "key": [r.key for r in chunk],
                    "source": [r.source for r in chunk],
                    "shard": [shard.shard_id] * len(chunk),
                    "index": list(range(index, index + len(chunk))),
                    "shard_total": [shard_total] * len(chunk),
                    "data": [r.data for r in chunk],
                    "read_error": [r.error for r in chunk],
                },
                schema=RECORD_SCHEMA,
            )
