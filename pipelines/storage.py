"""Object storage access (local paths, s3://, and other fsspec filesystems) with S3-compatible endpoints.

The endpoint comes from `--s3-endpoint` or the standard `AWS_ENDPOINT_URL`; credentials from the
standard AWS chain. `Storage` is a small picklable value, so Ray workers on other nodes rebuild the
same filesystem from it.

Every S3 request has one retry budget: `attempts` tries (the standard `AWS_MAX_ATTEMPTS`, else
STORAGE_ATTEMPTS), spaced by botocore's standard mode (exponential backoff with jitter) on throttling,
server errors and dropped connections; a body cut off mid-read is read again within the same budget.
Each retry is told to the storage's `tally` (`pipelines.tally`). A request that fails all its attempts
raises StorageUnavailableError; a missing object or a refused one raises at once.
"""

from __future__ import annotations

import functools
import os
import posixpath
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem

from pipelines.tally import tell
from piqa_model.errors import PiqaError

T = TypeVar("T")
STORAGE_ATTEMPTS = 5
REQUEST_KINDS = ("list", "get", "put", "multipart", "other")  # how retries are counted
_OPERATION_KINDS = {
    "ListObjectsV2": "list",
    "ListObjects": "list",
    "ListBuckets": "list",
    "GetObject": "get",
    "HeadObject": "get",
    "PutObject": "put",
    "CreateMultipartUpload": "multipart",
    "UploadPart": "multipart",
    "CompleteMultipartUpload": "multipart",
    "AbortMultipartUpload": "multipart",
}
PERMANENT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
"""Failures that another attempt would not change: the object is not there. (A refusal is not among them: an
expired token or a skewed clock refuses too, and a rerun with working credentials succeeds.)"""


class StorageError(PiqaError, OSError):
    """An input or output location is missing, unreadable or unwritable."""


class StorageUnavailableError(StorageError):
    """Object storage failed a request on every attempt (throttled, server errors, dropped connections): a
    transient fault, which a rerun may not meet."""


@dataclass(frozen=True)
class Storage:
    """How to reach object storage: an optional S3 endpoint override (MinIO, Ceph, moto, ...), the attempts per
    request, and the `Tally` (or its Ray actor) told of each retry."""

    s3_endpoint: str | None = None
    attempts: int = STORAGE_ATTEMPTS
    tally: Any = None

    @classmethod
    def from_environment(cls, s3_endpoint: str | None = None) -> Storage:
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or STORAGE_ATTEMPTS)
        return cls(s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None, max(1, attempts))

    def filesystem(self, uri: str) -> tuple[AbstractFileSystem, str]:
        """(filesystem, path within it) for a URI or local path."""
        if uri.startswith(("s3://", "s3a://")):
            fs = _s3_filesystem(self.s3_endpoint, self.attempts, self.tally)
            return fs, fs._strip_protocol(uri)
        return fsspec.core.url_to_fs(uri)

    def uri(self, fs: AbstractFileSystem, path: str) -> str:
        """The URI a user would type for `path` on `fs`."""
        return fs.unstrip_protocol(path) if not _is_local(fs) else path

    def list_visible(self, uri: str, pattern: str) -> list[str]:
        """URIs of the files matching `pattern` directly under `uri`, sorted by name; hidden (`.`) and
        underscore-prefixed names (temporaries, `_manifest.json`) are left out; [] when `uri` does not exist."""
        fs, root = self.filesystem(uri)
        try:
            if not fs.exists(root):
                return []
            paths = sorted(fs.glob(posixpath.join(root, pattern)))
        except Exception as exc:
            raise StorageUnavailableError(self._failure("list", uri, exc)) from exc
        return [self.uri(fs, p) for p in paths if not posixpath.basename(p).startswith((".", "_"))]

    def read_bytes(self, uri: str) -> bytes:
        """The object's bytes; FileNotFoundError (or another of PERMANENT_ERRORS) when it is not there,
        StorageUnavailableError when storage refused it or failed every attempt."""
        fs, path = self.filesystem(uri)
        try:
            return self.reading(lambda: fs.cat_file(path))
        except PERMANENT_ERRORS:
            raise
        except Exception as exc:
            raise StorageUnavailableError(self._failure("read", uri, exc)) from exc

    def reading(self, read: Callable[[], T]) -> T:
        """`read()`, again when a response body was cut off midway (botocore retries requests, not the bodies
        they stream), within the same budget of attempts, each retry counted."""
        attempt = 1
        while True:
            try:
                return read()
            except Exception as exc:
                if attempt >= self.attempts or not _cut_off(exc):
                    raise
                tell(self.tally, "retried", "get")
                time.sleep(random.uniform(0, min(20.0, 2.0**attempt)))
                attempt += 1

    def write_atomic(self, uri: str, data: bytes) -> None:
        """Write so that no reader ever sees a partial object.

        Local files: write a hidden temporary beside it, then rename (atomic on POSIX). Object stores:
        a single PUT, which becomes visible only once complete.
        """
        fs, path = self.filesystem(uri)
        if _is_local(fs):
            os.replace(_written_beside(path, data), path)
            return
        try:
            fs.pipe_file(path, data)
        except PERMANENT_ERRORS as exc:  # its bucket is gone: no attempt would change that
            raise StorageError(self._failure("write", uri, exc)) from exc
        except Exception as exc:
            raise StorageUnavailableError(self._failure("write", uri, exc)) from exc

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Write `uri` whole unless it exists (then False): one writer of many wins. Local files: a hard link of a
        written temporary; object stores: a conditional PUT (If-None-Match: AWS S3 and moto honour it; a store
        that ignores it lets the last writer win)."""
        fs, path = self.filesystem(uri)
        try:
            if not _is_local(fs):
                fs.pipe_file(path, data, mode="create")
                return True
            temporary = _written_beside(path, data)
            try:
                os.link(temporary, path)
            finally:
                os.remove(temporary)
            return True
        except FileExistsError:
            return False

    def _failure(self, action: str, uri: str, exc: BaseException) -> str:
        """What a failed read or write says: the attempts too, when botocore made them (not for a refusal, a
        missing bucket or a local file)."""
        retried = "://" in uri and not isinstance(exc, (PermissionError, *PERMANENT_ERRORS))
        tries = f" ({self.attempts} attempts)" if retried else ""
        return f"cannot {action} {uri}{tries}: {reason(exc)}"

    def remove(self, uris: list[str], recursive: bool = False) -> None:
        """Delete `uris` (folders with all they hold, with `recursive`); one request on object stores. Local paths
        are removed directly: fsspec's local `rm` looks up the working directory, which a Ray worker's can lose
        (a runtime environment's folder is removed once no worker of its node uses it)."""
        if not uris:
            return
        fs, _ = self.filesystem(uris[0])
        paths = [self.filesystem(uri)[1] for uri in uris]
        if not _is_local(fs):
            try:
                fs.rm(paths, recursive=recursive)
            except Exception as exc:
                raise StorageUnavailableError(self._failure("remove", uris[0], exc)) from exc
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


@functools.lru_cache(maxsize=8)  # a job's tally makes its own: a long-lived process runs many jobs
def _s3_filesystem(endpoint: str | None, attempts: int, tally: Any) -> AbstractFileSystem:
    """One S3 filesystem per (endpoint, attempts, tally) in a process, its requests retried and counted."""
    import s3fs
    from aiobotocore.session import AioSession

    class RetriedS3FileSystem(s3fs.S3FileSystem):
        retries = 1  # s3fs would retry botocore's retries again: one budget, `attempts`, counted

    session = AioSession()
    session.register("request-created.s3", functools.partial(_count_retry, tally))
    return RetriedS3FileSystem(
        client_kwargs={"endpoint_url": endpoint} if endpoint else {},
        config_kwargs={"retries": {"mode": "standard", "total_max_attempts": attempts}},  # max_attempts: retries
        session=session,
        max_concurrency=1,  # one GET per read: above 1, s3fs asks for the size first (a HEAD per image)
    )


def _count_retry(tally: Any, request: Any, event_name: str, **_: Any) -> None:
    """botocore's `request-created` hook (once per attempt): tell `tally` of each attempt after the first."""
    if request.context.get("retries", {}).get("attempt", 1) > 1:
        tell(tally, "retried", _OPERATION_KINDS.get(event_name.rsplit(".", 1)[-1], "other"))


def _cut_off(exc: BaseException) -> bool:
    """A response body that ended early (the request itself succeeded, so botocore did not retry it)."""
    from aiohttp import ClientPayloadError
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError

    return isinstance(exc, ClientPayloadError | IncompleteReadError | ResponseStreamingError)


def _written_beside(path: str, data: bytes) -> str:
    """A hidden temporary beside local `path`, holding `data` on disk (flushed and synced); its path."""
    directory = posixpath.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = posixpath.join(directory, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def reason(exc: BaseException) -> str:
    """An exception in one line, for an error message: its type and the first line of its text (only the text for
    our own errors, whose messages say what happened)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, PiqaError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
