"""What every input format shares: the shard it lists, the record it reads, and the two shapes of format.

A container format (`ContainerFormat`: a tar, a Parquet file) makes one shard of each file it recognises; a
folder format (`files`) groups loose files into virtual shards, and is used only where a folder holds no
container.
"""

from __future__ import annotations

import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from fsspec import AbstractFileSystem

from pipelines.storage import PERMANENT_ERRORS, Storage
from piqa_model.options import DEFAULT_MAX_IMAGE_BYTES

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif", "avif", "jxl", "jp2"}
)


@dataclass(frozen=True)
class Shard:
    shard_id: str
    kind: str  # the name of the format that reads it
    source: str  # the container's URI; for a files shard, the input prefix
    files: tuple[str, ...] = field(default=())  # files shards only: URIs of the member files


@dataclass
class Record:
    key: str
    source: str
    data: bytes | None
    error: str | None = None  # set when the bytes could not be read


@dataclass(frozen=True)
class SourceFormat:
    """How inputs are read (as given to `piqa score`): where Parquet inputs hold their images, and the largest
    encoded image any format turns into a record."""

    image_column: str = "jpg"
    key_column: str = "key"
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES


def oversize(size: int, options: SourceFormat) -> str | None:
    """The error of an encoded image of `size` bytes above `options.max_image_bytes`, else None; container formats
    check it from the size they record, before the bytes are copied."""
    if size <= options.max_image_bytes:
        return None
    return f"image is {size} bytes, above the limit of {options.max_image_bytes} (max_image_bytes); not read"


def image_extension(name: str) -> str | None:
    """Lower-case extension of `name` when it names an image, else None."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in posixpath.basename(name) else ""
    return ext if ext in IMAGE_EXTENSIONS else None


class Format(Protocol):
    """One input format: which paths are its own, how they make shards, and how a shard reads."""

    name: str  # also `Shard.kind` of its shards
    label: str  # how messages name its files: ".tar", "image"
    container: bool  # one file is one shard (and may be the input itself)
    settings: tuple[str, ...]  # the `ScoreConfig` fields that change what it reads, for resume checks

    def recognises(self, path: str) -> bool: ...

    def shards(
        self, paths: list[str], root: str, fs: AbstractFileSystem, storage: Storage, shard_size: int
    ) -> list[Shard]:
        """The shards of `paths` (sorted, all recognised) found under the input `root`."""

    def read(self, shard: Shard, storage: Storage, options: SourceFormat) -> list[Record]:
        """Every record of `shard`, in shard order; never raises for unreadable data (a missing or refused file
        is a record with its error), only StorageUnavailableError when storage keeps failing."""

    def source_shard(self, source: str) -> Shard:
        """The shard to re-read for score rows whose `source` is `source`."""


class ContainerFormat(ABC):
    """A format whose every file is one shard, read whole: subclasses set `name`, `suffix` and `empty`, and
    turn the file's bytes into records in `records`."""

    name: str
    suffix: str
    empty: str  # the error of the one row a container without images makes
    container = True
    settings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.suffix

    def recognises(self, path: str) -> bool:
        return path.endswith(self.suffix)

    def shards(
        self, paths: list[str], root: str, fs: AbstractFileSystem, storage: Storage, shard_size: int
    ) -> list[Shard]:
        """One shard per file, named by its path under `root` without the suffix."""
        shards = []
        for path in paths:
            relative = posixpath.relpath(path, root) if root else posixpath.basename(path)
            shard_id = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.rsplit(".", 1)[0].replace("/", "__"))
            shard_id = shard_id.lstrip("._") or "shard"  # `_x.parquet`, `.x.parquet` would be hidden outputs
            shards.append(Shard(shard_id, self.name, storage.uri(fs, path)))
        return shards

    def read(self, shard: Shard, storage: Storage, options: SourceFormat) -> list[Record]:
        try:
            payload = storage.read_bytes(shard.source)
        except PERMANENT_ERRORS as exc:  # gone or refused: a row says so; a transient fault fails the shard
            return [Record(shard.shard_id, shard.source, None, f"cannot read shard: {type(exc).__name__}: {exc}")]
        # An empty shard still makes one row: else it would never be committed, and every rerun would read it again.
        records = list(self.records(payload, shard.source, options)) or [shard_error(shard.source, self.empty)]
        return _without_duplicate_keys(records)

    @abstractmethod
    def records(self, payload: bytes, source: str, options: SourceFormat) -> Iterator[Record]:
        """The records in one file's bytes; a file that cannot be parsed yields one `shard_error` row."""

    def source_shard(self, source: str) -> Shard:
        return Shard(posixpath.basename(source), self.name, source)


def _without_duplicate_keys(records: list[Record]) -> list[Record]:
    """`records` with every repeat of an earlier record's key made an error record: a row stays per position, but
    only the first of a key is scored, since a key is how its bytes are found again (`pipelines.fetch`)."""
    first: dict[str, int] = {}
    for position, record in enumerate(records):
        seen = first.setdefault(record.key, position)
        if seen != position:
            message = f"duplicate key {record.key!r} in this shard (first at position {seen}); only the first is scored"
            records[position] = Record(record.key, record.source, None, message)
    return records


def shard_error(source: str, message: str) -> Record:
    """The error row of a container that yields no records of its own, keyed by the container's name."""
    return Record(posixpath.basename(source), source, None, message)
