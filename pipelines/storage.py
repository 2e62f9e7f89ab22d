"""Object storage access (local paths, s3://, and other fsspec filesystems) with S3-compatible endpoints.

The endpoint comes from `--s3-endpoint` or the standard `AWS_ENDPOINT_URL`; credentials from the
standard AWS chain. `Storage` is a small picklable value, so Ray workers on other nodes rebuild the
same filesystem from it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass

import fsspec
from fsspec import AbstractFileSystem

from piqa_model.errors import PiqaError


class StorageError(PiqaError, OSError):
    """An input or output location is missing, unreadable or unwritable."""


@dataclass(frozen=True)
class Storage:
    """How to reach object storage: an optional S3 endpoint override (MinIO, Ceph, moto, ...)."""

    s3_endpoint: str | None = None

    @classmethod
    def from_environment(cls, s3_endpoint: str | None = None) -> Storage:
        return cls(s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None)

    def filesystem(self, uri: str) -> tuple[AbstractFileSystem, str]:
        """(filesystem, path within it) for a URI or local path."""
        options = {}
        if uri.startswith(("s3://", "s3a://")) and self.s3_endpoint:
            options["client_kwargs"] = {"endpoint_url": self.s3_endpoint}
        fs, path = fsspec.core.url_to_fs(uri, **options)
        return fs, path

    def uri(self, fs: AbstractFileSystem, path: str) -> str:
        """The URI a user would type for `path` on `fs`."""
        return fs.unstrip_protocol(path) if not _is_local(fs) else path

    def list_visible(self, uri: str, pattern: str) -> list[str]:
        """URIs of the files matching `pattern` directly under `uri`, sorted by name; hidden (`.`) and
        underscore-prefixed names (temporaries, `_manifest.json`) are left out; [] when `uri` does not exist."""
        fs, root = self.filesystem(uri)
        if not fs.exists(root):
            return []
        paths = sorted(fs.glob(posixpath.join(root, pattern)))
        return [self.uri(fs, p) for p in paths if not posixpath.basename(p).startswith((".", "_"))]

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.filesystem(uri)
        return fs.cat_file(path)

    def write_atomic(self, uri: str, data: bytes) -> None:
        """Write so that no reader ever sees a partial object.

        Local files: write a hidden temporary beside it, then rename (atomic on POSIX). Object stores:
        a single PUT, which becomes visible only once complete.
        """
        fs, path = self.filesystem(uri)
        if _is_local(fs):
            directory = posixpath.dirname(path)
            os.makedirs(directory, exist_ok=True)
            temporary = posixpath.join(directory, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        else:
            fs.pipe_file(path, data)

    def remove(self, uris: list[str], recursive: bool = False) -> None:
        """Delete `uris` (folders with all they hold, with `recursive`); one request on object stores. Local paths
        are removed directly: fsspec's local `rm` looks up the working directory, which a Ray worker's can lose
        (a runtime environment's folder is removed once no worker of its node uses it)."""
        if not uris:
            return
        fs, _ = self.filesystem(uris[0])
        paths = [self.filesystem(uri)[1] for uri in uris]
        if not _is_local(fs):
            fs.rm(paths, recursive=recursive)
            return
        for path in paths:
            if os.path.isdir(path) and recursive:
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)

    def check_writable(self, uri: str) -> None:
        """Fail fast, before any work, when `uri` (a directory or prefix) cannot be written."""
        probe = posixpath.join(uri.rstrip("/"), f"_write_check_{uuid.uuid4().hex}")
        try:
            self.write_atomic(probe, b"")
            fs, path = self.filesystem(probe)
            fs.rm_file(path)
        except Exception as exc:
            raise StorageError(f"output {uri} is not writable: {reason(exc)}") from None


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def reason(exc: BaseException) -> str:
    """An exception in one line, for an error message: its type and the first line of its text."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
