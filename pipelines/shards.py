"""Input shards: the unit of work, of output and of resume.

Three layouts are understood:
- WebDataset tar files (`*.tar`): one shard per tar; image members by extension; key = member name
  without extension (as img2dataset and NeMo Curator write them);
- Parquet files with an image-bytes column (img2dataset's parquet output): one shard per file;
- a folder/prefix of image files: sorted paths grouped into virtual shards of `shard_size` files;
  key = path relative to the input.
Every shard has a deterministic id, which names its output file.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pipelines.storage import Storage, StorageError

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif", "avif", "jxl", "jp2"}
)
ShardKind = Literal["tar", "parquet", "files"]


@dataclass(frozen=True)
class Shard:
    shard_id: str
    kind: ShardKind
    source: str  # the tar or parquet URI; for a files shard, the input prefix
    files: tuple[str, ...] = field(default=())  # files shards only: URIs of the member files


def image_extension(name: str) -> str | None:
    """Lower-case extension of `name` when it names an image, else None."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in posixpath.basename(name) else ""
    return ext if ext in IMAGE_EXTENSIONS else None


def list_shards(input_uri: str, storage: Storage, shard_size: int = 1000) -> list[Shard]:
    """All shards under `input_uri` (a tar, a parquet file, or a folder/prefix), in a stable order.

    A folder holding tar or parquet files is read as those shards; otherwise its image files are grouped.
    Raises StorageError for a missing or unreadable input, or one with nothing to score.
    """
    fs, root = storage.filesystem(input_uri)
    try:
        if fs.isfile(root):
            return [_file_shard(root, posixpath.dirname(root), fs, storage)]
        if not fs.isdir(root):
            raise StorageError(f"input {input_uri} does not exist")
        paths = sorted(fs.find(root))
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot list input {input_uri}: {type(exc).__name__}: {exc}") from None
    containers = [p for p in paths if p.endswith((".tar", ".parquet"))]
    if containers:
        return [_file_shard(p, root, fs, storage) for p in containers]
    images = [p for p in paths if image_extension(p) and not posixpath.basename(p).startswith(".")]
    if not images:
        raise StorageError(f"input {input_uri} holds no .tar, .parquet or image files")
    return list(_group_files(images, root, fs, storage, shard_size))


def _file_shard(path: str, root: str, fs, storage: Storage) -> Shard:
    kind: ShardKind = "tar" if path.endswith(".tar") else "parquet"
    if not path.endswith((".tar", ".parquet")):
        raise StorageError(f"input file {path} is neither a .tar nor a .parquet file")
    relative = posixpath.relpath(path, root) if root else posixpath.basename(path)
    return Shard(_safe_id(relative.rsplit(".", 1)[0]), kind, storage.uri(fs, path))


def _group_files(images: list[str], root: str, fs, storage: Storage, shard_size: int) -> Iterator[Shard]:
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    for number, start in enumerate(range(0, len(images), shard_size)):
        members = tuple(storage.uri(fs, p) for p in images[start : start + shard_size])
        yield Shard(f"files-{number:06d}", "files", storage.uri(fs, root), members)


def _safe_id(relative: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", relative.replace("/", "__"))
