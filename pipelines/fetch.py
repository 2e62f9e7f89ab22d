"""Fetching the original bytes of scored rows again, from the `source` each score row names.

`source` is the image file's URI for folder inputs, and the tar or Parquet URI for container inputs (where
the row's `key` finds the record inside). The container is re-read with the scoring pipeline's own readers,
so a key means here exactly what it meant when the row was scored.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Collection
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pipelines.readers import Record, read_records
from pipelines.shards import Shard, image_extension
from pipelines.storage import Storage

_PIL_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
_PIL_EXTENSIONS |= {"TIFF": "tif", "JPEG2000": "jp2"}


@dataclass(frozen=True)
class SourceFormat:
    """How Parquet inputs hold their images (as given to `piqa score`); tars and files need nothing."""

    image_column: str = "jpg"
    key_column: str = "key"


def source_shard(source: str) -> Shard:
    """The input shard to re-read for rows whose `source` is `source`."""
    if source.endswith(".tar"):
        return Shard(posixpath.basename(source), "tar", source)
    if source.endswith(".parquet"):
        return Shard(posixpath.basename(source), "parquet", source)
    return Shard(posixpath.basename(source), "files", posixpath.dirname(source), (source,))


def fetch_records(
    source: str, keys: Collection[str], storage: Storage, source_format: SourceFormat
) -> dict[str, Record]:
    """The records of `keys` found in `source`, by key; keys it no longer holds are absent.

    A container is read once for all its keys. For an image file, `keys` names the one key scored from it.
    """
    shard = source_shard(source)
    records = read_records(shard, storage, source_format.image_column, source_format.key_column)
    if shard.kind == "files":
        return {key: records[0] for key in keys}
    wanted = set(keys)
    found: dict[str, Record] = {}
    for record in records:
        if record.key in wanted and record.key not in found:
            found[record.key] = record
    return found


def file_extension(data: bytes, source: str) -> str:
    """The extension to store `data` under: its format as Pillow sees it, else the source file's, else `bin`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            detected = _PIL_EXTENSIONS.get(image.format or "")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        detected = None
    return detected or image_extension(source) or "bin"
