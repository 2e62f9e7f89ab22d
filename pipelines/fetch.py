"""Fetching the original bytes of scored rows again, from the `source` each score row names.

`source` is the image file's URI for folder inputs, and the tar or Parquet URI for container inputs (where
the row's `key` finds the record inside). The container is re-read by the format that read it for scoring
(`pipelines.formats`), so a key means here exactly what it meant when the row was scored.
"""

from __future__ import annotations

import io
from collections.abc import Collection

from PIL import Image, UnidentifiedImageError

from pipelines import formats
from pipelines.formats.base import Record, SourceFormat
from pipelines.shards import Shard, image_extension
from pipelines.storage import Storage

_PIL_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
_PIL_EXTENSIONS |= {"TIFF": "tif", "JPEG2000": "jp2"}


def source_shard(source: str) -> Shard:
    """The input shard to re-read for rows whose `source` is `source`: the container a format recognises, else
    the image file itself."""
    return (formats.for_path(source) or formats.get("files")).source_shard(source)


def fetch_records(
    source: str, keys: Collection[str], storage: Storage, source_format: SourceFormat
) -> dict[str, Record]:
    """The records of `keys` found in `source`, by key; keys it no longer holds are absent.

    A container is read once for all its keys. For an image file, `keys` names the one key scored from it.
    """
    shard = source_shard(source)
    records = formats.get(shard.kind).read(shard, storage, source_format)
    if shard.files:  # the source is the image file: its one record is the one key scored from it
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
