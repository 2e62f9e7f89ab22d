"""A fault-injecting HTTP proxy for S3 on loopback, between the jobs and the moto server.

Each request is classed as `list`, `get` (GET and HEAD of an object), `put` (a single PUT), `multipart` (create,
upload part, complete, abort) or `other` (deletes, bucket calls); a `Fault` rule for a class answers a chosen
fraction of its requests with `503 SlowDown`, `500 InternalError` or `403 AccessDenied` (without forwarding
them), forwards them and then cuts the connection halfway through the response (`reset`: a PUT is stored, the
client never hears so), or delays them (`latency`); `HELD_OUT` faults are for the benchmark only. Draws come
from a seeded generator per class, so the nth request of a class meets the same fault whatever the requests of
other classes around it (their order varies from run to run); `injected` counts what was done per (class, fault),
`requests` every request per class.

The proxy runs its own event loop in a thread of the test process, so jobs in other processes (Ray workers, a
`python -m jobs.score` subprocess) reach it by its endpoint alone.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

KINDS = ("list", "get", "put", "multipart", "other")
FAULTS = ("slowdown", "error", "reset", "latency")
DENIED = "denied"  # 403 AccessDenied: not transient, for an output that stops being writable
HELD_OUT = ("drop",)
"""Faults no test injects, for the benchmark only (bench/faults.py): the code was not tuned on them. `drop` closes
the connection once the request has arrived, unanswered and unforwarded."""

_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "error": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    DENIED: (403, "Forbidden", "AccessDenied", "Access Denied"),
}


@dataclass(frozen=True)
class Fault:
    """Do `fault` to a `fraction` of the requests of `kind` (only those whose path holds `match`, when given)."""

    kind: str
    fault: str
    fraction: float
    match: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.fault not in (*FAULTS, DENIED, *HELD_OUT) or not 0 <= self.fraction <= 1:
            raise ValueError(f"not a fault rule: {self}")


def request_kind(method: str, target: str) -> str:
    """The class of an S3 request (path-style addressing, as clients use for an endpoint on an IP address)."""
    url = urlsplit(target)
    query = parse_qs(url.query, keep_blank_values=True)
    path = url.path.strip("/")
    if "uploads" in query or "uploadId" in query:
        return "multipart"
    if method == "GET" and ("/" not in path or "list-type" in query):
        return "list"
    if method in ("GET", "HEAD") and "/" in path:
        return "get"
    if method == "PUT" and "/" in path and not query:
        return "put"
    return "other"


class FaultProxy:
    """`with FaultProxy(upstream) as proxy:` serves on `proxy.endpoint` until the block ends."""

    def __init__(self, upstream: str, seed: int = 0, latency: float = 0.2) -> None:
        address = urlsplit(upstream)
        self.upstream = (address.hostname or "127.0.0.1", address.port or 80)
        self.latency = latency
        self.rules: list[Fault] = []
        self.injected: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (kind, fault, request target) of each fault injected
        self.requests: Counter[str] = Counter()
        self.seed = seed
        self._draws: dict[str, random.Random] = {}  # per class, seeded on first use
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self.endpoint = ""

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def inject(self, *rules: Fault) -> None:
        """Replace the rules (none: a plain forwarder), start the counts and the draws again (the nth request of a
        class meets the same fault as before)."""
        with self._lock:
            self._draws.clear()
            self.rules = list(rules)
            self.injected.clear()
            self.log.clear()
            self.requests.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._started.set()
        self._loop.run_forever()

    def _draw(self, kind: str, target: str) -> str | None:
        with self._lock:
            self.requests[kind] += 1
            if kind not in self._draws:
                self._draws[kind] = random.Random(f"{self.seed}:{kind}")
            draws = self._draws[kind]
            for rule in self.rules:
                matches = rule.kind == kind and (rule.match is None or rule.match in target)
                if matches and draws.random() < rule.fraction:
                    self.injected[kind, rule.fault] += 1
                    self.log.append((kind, rule.fault, target))
                    return rule.fault
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, headers)
                fault = self._draw(request_kind(method, target), target)
                if fault == "latency":
                    await asyncio.sleep(self.latency)
                if fault == "drop":
                    _reset(writer)
                    return
                if fault in _ERRORS:
                    writer.write(_error_response(fault, method))
                    await writer.drain()
                    continue
                response = await self._forward(method, target, headers, body)
                if fault == "reset":
                    writer.write(response[: len(response) // 2])
                    await writer.drain()
                    _reset(writer)
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            sent = {k: v for k, v in headers.items() if k not in ("connection", "expect", "transfer-encoding")}
            sent |= {"connection": "close", "content-length": str(len(body))}
            lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in sent.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            status_head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, response_headers = _parse_head(status_head, response=True)
            has_body = method != "HEAD" and not status_line.split()[1].startswith(("1", "204", "304"))
            payload = await _read_response_body(reader, response_headers) if has_body else b""
        finally:
            writer.close()
        kept = {k: v for k, v in response_headers.items() if k not in ("connection", "transfer-encoding")}
        if has_body:
            kept["content-length"] = str(len(payload))
        lines = [status_line, *(f"{k}: {v}" for k, v in kept.items()), "connection: keep-alive"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _parse_head(head: bytes, response: bool = False) -> tuple[str, str, dict[str, str]]:
    first, *rest = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in rest:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if response:
        return first, "", headers
    method, target, _ = first.split(" ", 2)
    return method, target, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def _read_response_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()  # delimited by the end of the connection


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the (empty) trailer
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _error_response(fault: str, method: str) -> bytes:
    status, reason, code, message = _ERRORS[fault]
    body = (
        b""
        if method == "HEAD"
        else (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
    )
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/xml\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, not a clean end: what a dropped connection looks like to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
