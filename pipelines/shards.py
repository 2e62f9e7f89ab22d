"""Input shards: the unit of work, of output and of resume.

The formats in `pipelines.formats` say which files are inputs and how they make shards: a container file (a
WebDataset tar, a Parquet file) is one shard; a folder/prefix of image files is grouped into virtual shards of
`shard_size` files. Every shard has a deterministic id, which names its output file.
"""

from __future__ import annotations

import posixpath

from pipelines import formats
from pipelines.formats.base import IMAGE_EXTENSIONS, Shard, image_extension
from pipelines.storage import Storage, StorageError

__all__ = ["IMAGE_EXTENSIONS", "Shard", "image_extension", "list_shards"]


def list_shards(input_uri: str, storage: Storage, shard_size: int = 1000) -> list[Shard]:
    """All shards under `input_uri` (a container file, or a folder/prefix), in path order.

    A folder holding container files is read as those shards; otherwise its image files are grouped.
    Raises StorageError for a missing or unreadable input, or one with nothing to score.
    """
    fs, root = storage.filesystem(input_uri)
    try:
        if fs.isfile(root):
            fmt = formats.for_path(root)
            if fmt is None or not fmt.container:
                kinds = " nor ".join(f"a {f.label}" for f in formats.registered() if f.container)
                raise StorageError(f"input file {root} is neither {kinds} file")
            return fmt.shards([root], posixpath.dirname(root), fs, storage, shard_size)
        if not fs.isdir(root):
            raise StorageError(f"input {input_uri} does not exist")
        paths = sorted(fs.find(root))
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot list input {input_uri}: {type(exc).__name__}: {exc}") from None
    owned = [(path, fmt) for path in paths if (fmt := formats.for_path(path)) is not None]
    # Container files win: loose images beside them (previews, say) are not inputs of their own.
    chosen = [(path, fmt) for path, fmt in owned if fmt.container] or owned
    if not chosen:
        labels = [fmt.label for fmt in formats.registered()]
        raise StorageError(f"input {input_uri} holds no {', '.join(labels[:-1])} or {labels[-1]} files")
    groups: dict[str, list[str]] = {}
    for path, fmt in chosen:
        groups.setdefault(fmt.name, []).append(path)
    shards: list[Shard] = []
    for name, group in groups.items():
        shards += formats.get(name).shards(group, root, fs, storage, shard_size)
    return sorted(shards, key=lambda shard: shard.source)  # a tar beside a parquet file keeps its place
