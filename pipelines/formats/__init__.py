"""Input formats behind one registry: a format is one module that recognises, lists and reads its shards.

`list_shards`, `read_records` and `source_shard` ask the registry, so a new format is a module with a
`Format` (most often a `base.ContainerFormat` subclass), registered below or by `register`; nothing else
changes. The first registered format that recognises a path owns it.
"""

from __future__ import annotations

from pipelines.formats.base import Format
from pipelines.formats.files import FilesFormat
from pipelines.formats.parquet import ParquetFormat
from pipelines.formats.tar import TarFormat

_REGISTRY: dict[str, Format] = {fmt.name: fmt for fmt in (TarFormat(), ParquetFormat(), FilesFormat())}


def register(fmt: Format) -> Format:
    """Add `fmt` to the formats inputs are read in; returns it."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"an input format named {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get(name: str) -> Format:
    """The format named `name` (a `Shard.kind`)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no input format {name!r}; registered: {', '.join(_REGISTRY)}") from None


def registered() -> list[Format]:
    """Every format, in the order they were registered."""
    return list(_REGISTRY.values())


def for_path(path: str) -> Format | None:
    """The format that owns `path`, or None when no format recognises it."""
    return next((fmt for fmt in _REGISTRY.values() if fmt.recognises(path)), None)
