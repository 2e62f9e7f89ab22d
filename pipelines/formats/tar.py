"""WebDataset tar files: one shard per tar; image members by extension; key = member name without extension
(as img2dataset and NeMo Curator write them).

A tar is read in memory and never extracted, so a member named `../x.jpg` or `/abs/x.jpg` cannot reach the disk:
its key is its name as written (`../x`), which no output path is made from (shard files are named by shard id,
resharded samples by `reshard.sample_names`). A link or device member with an image extension is an error row
naming what it is: following a link would score another member's bytes (or nothing) under a second key, and
skipping it silently would lose an input without a trace. Names that are not UTF-8 are read with U+FFFD in place
of the bytes that are not.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator

from pipelines.formats.base import ContainerFormat, Record, SourceFormat, image_extension, oversize, shard_error


class TarFormat(ContainerFormat):
    name, suffix, empty = "tar", ".tar", "no image members in this tar"

    def records(self, payload: bytes, source: str, options: SourceFormat) -> Iterator[Record]:
        """Image members of a tar; a tar that breaks off midway yields what was readable plus one error row."""
        try:
            archive = tarfile.open(  # noqa: SIM115 (closed below)
                fileobj=io.BytesIO(payload), mode="r:", encoding="utf-8", errors="replace"
            )
        except tarfile.TarError as exc:
            yield shard_error(source, f"not a readable tar file: {exc}")
            return
        with archive:
            try:
                for member in archive:
                    if member.isdir() or image_extension(member.name) is None:
                        continue
                    key = member.name.rsplit(".", 1)[0]
                    refused = _not_a_file(member) or oversize(member.size, options)
                    if refused is not None:
                        yield Record(key, source, None, refused)
                        continue
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


def _not_a_file(member: tarfile.TarInfo) -> str | None:
    """Why `member` (not a directory) holds no image bytes of its own, or None for a regular file."""
    if member.issym():
        return f"tar member {member.name!r} is a symbolic link to {member.linkname!r}; links are not followed"
    if member.islnk():
        return f"tar member {member.name!r} is a hard link to {member.linkname!r}; links are not followed"
    if not member.isfile():
        return f"tar member {member.name!r} is not a regular file (a device or FIFO)"
    return None
