"""Reading the records of one shard. A record is the bytes of one image plus its identity.

The shard's format (`pipelines.formats`) reads it, and never raises for a bad record: an unreadable member
becomes a record with status `read_error`, so every input still yields exactly one output row (and a tar or
parquet shard without any image, one error row). `read_shards` is the pipeline's read task; this module stays
free of torch and the model, so read tasks start in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import formats
from pipelines.formats.base import Record, Shard, SourceFormat
from pipelines.storage import Storage, StorageUnavailableError, reason
from pipelines.tally import tell
from piqa_model.options import DEFAULT_MAX_IMAGE_BYTES


def read_records(
    shard: Shard,
    storage: Storage,
    image_column: str = "jpg",
    key_column: str = "key",
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> list[Record]:
    """Every record of `shard`, in shard order."""
    return formats.get(shard.kind).read(shard, storage, SourceFormat(image_column, key_column, max_image_bytes))


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
        total = len(shard.files) if shard.files else -1  # -1: known once read
        for first in range(0, max(1, len(shard.files)), files_per_unit):
            files = list(shard.files[first : first + files_per_unit])
            units.append(identity | dict(files=files, first=first, total=total))
    return units


def read_shards(
    batch: dict[str, np.ndarray],
    *,
    storage: Storage,
    image_column: str,
    key_column: str,
    chunk_size: int,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Iterator[pa.Table]:
    """Ray Data task: read units in (`read_units`), their records out in blocks of `chunk_size`. A unit that storage
    keeps failing yields nothing: its shard is told to the storage's tally as failed, and stays uncommitted."""
    for shard_id, kind, source, files, first, total in zip(
        *(batch[name] for name in ("shard_id", "kind", "source", "files", "first", "total")), strict=True
    ):
        shard = Shard(str(shard_id), str(kind), str(source), tuple(str(f) for f in files))
        try:
            records = read_records(shard, storage, image_column, key_column, max_image_bytes)
        except StorageUnavailableError as exc:
            tell(storage.tally, "failed", shard.shard_id, reason(exc))
            continue
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
