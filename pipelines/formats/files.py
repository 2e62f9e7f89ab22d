"""A folder/prefix of image files: sorted paths grouped into virtual shards of `shard_size` files; key = path
relative to the input. Used only where the folder holds no container file. A file above `max_image_bytes` is an
error row like an oversize tar member (its size is known once it is read: a listing does not carry it)."""

from __future__ import annotations

import posixpath

from fsspec import AbstractFileSystem

from pipelines.formats.base import Record, Shard, SourceFormat, image_extension, oversize
from pipelines.storage import PERMANENT_ERRORS, Storage


class FilesFormat:
    name, label, container = "files", "image", False
    settings = ("shard_size",)

    def recognises(self, path: str) -> bool:
        return image_extension(path) is not None and not posixpath.basename(path).startswith(".")

    def shards(
        self, paths: list[str], root: str, fs: AbstractFileSystem, storage: Storage, shard_size: int
    ) -> list[Shard]:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        prefix, members = storage.uri(fs, root), [storage.uri(fs, path) for path in paths]
        return [
            Shard(f"files-{number:06d}", self.name, prefix, tuple(members[start : start + shard_size]))
            for number, start in enumerate(range(0, len(members), shard_size))
        ]

    def read(self, shard: Shard, storage: Storage, options: SourceFormat) -> list[Record]:
        return [_read_file(uri, shard.source, storage, options) for uri in shard.files]

    def source_shard(self, source: str) -> Shard:
        return Shard(posixpath.basename(source), self.name, posixpath.dirname(source), (source,))


def _read_file(uri: str, prefix: str, storage: Storage, options: SourceFormat) -> Record:
    key = posixpath.relpath(uri, prefix) if uri.startswith(prefix) else uri
    try:
        data = storage.read_bytes(uri)
    except PERMANENT_ERRORS as exc:
        return Record(key, uri, None, f"{type(exc).__name__}: {exc}")
    refused = oversize(len(data), options)
    return Record(key, uri, data) if refused is None else Record(key, uri, None, refused)
