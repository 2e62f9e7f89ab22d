"""WebDataset tar files: one shard per tar; image members by extension; key = member name without extension
(as img2dataset and NeMo Curator write them)."""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator

from pipelines.formats.base import ContainerFormat, Record, SourceFormat, image_extension, shard_error


class TarFormat(ContainerFormat):
    name, suffix, empty = "tar", ".tar", "no image members in this tar"

    def records(self, payload: bytes, source: str, options: SourceFormat) -> Iterator[Record]:
        """Image members of a tar; a tar that breaks off midway yields what was readable plus one error row."""
        try:
            archive = tarfile.open(fileobj=io.BytesIO(payload), mode="r:")  # noqa: SIM115 (closed below)
        except tarfile.TarError as exc:
            yield shard_error(source, f"not a readable tar file: {exc}")
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
