"""One writer per output: a scoring run holds a lease object in its output while it writes there.

`OUT/_lease.json` names the run (its id, host, process, start) and carries a heartbeat that the holder renews every
HEARTBEAT_SECONDS. A second run into the same output (or an `--overwrite` of it) is refused while the lease is live,
with one line naming the holder. A lease is stale, and is taken over without any flag, once its heartbeat is older
than LEASE_SECONDS, or at once when its process is gone from this same host (a `kill -9` and a rerun). Two runs
that start together race for it with an exclusive create (`Storage.create_exclusive`): one wins; two that take over
the same stale lease both look again a moment later, and only the one whose lease is there goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pipelines.storage import Storage
from piqa_model.errors import PiqaError

LEASE = "_lease.json"
LEASE_SECONDS = 60.0
HEARTBEAT_SECONDS = 15.0
TAKEOVER_SETTLE_SECONDS = 1.0  # how long a run that took over a stale lease waits before it looks again


class OutputBusyError(PiqaError, RuntimeError):
    """Another live run is writing the same output."""


@dataclass(frozen=True)
class Lease:
    run: str
    host: str
    pid: int
    started: str
    heartbeat: float  # seconds since the epoch, renewed by the holder

    @classmethod
    def ours(cls) -> Lease:
        now = time.time()
        return cls(uuid.uuid4().hex[:12], socket.gethostname(), os.getpid(), _iso(now), now)

    def live(self, now: float) -> bool:
        if self.host == socket.gethostname() and not _running(self.pid):
            return False
        return now - self.heartbeat < LEASE_SECONDS

    def describe(self, now: float) -> str:
        return (
            f"run {self.run}, process {self.pid} on {self.host}, started {self.started}, "
            f"last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago"
        )


UNREADABLE = Lease("unreadable", "", 0, "", 0.0)
"""What a lease file that is not a lease of ours reads as: stale to a run starting, no claim to a run renewing."""


class OutputLease:
    """`with OutputLease(output, storage):` holds the output's lease, renewed in a thread, released at the end."""

    def __init__(self, output: str, storage: Storage) -> None:
        self.output, self.storage = output, storage
        self.uri = posixpath.join(output.rstrip("/"), LEASE)
        self.lease = Lease.ours()
        self.lost_to: Lease | None = None  # the run that took the lease over, once the renewer saw it
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="output-lease", daemon=True)

    def __enter__(self) -> OutputLease:
        self._take()
        self._renewer.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._renewer.join(timeout=HEARTBEAT_SECONDS)
        with contextlib.suppress(OSError):  # a lease left behind goes stale: the run's own outcome is what counts
            if self._held_by() == self.lease.run:
                self.storage.remove([self.uri])

    def _take(self) -> None:
        held = self._read()
        now = time.time()
        if held is not None and held.live(now):
            raise OutputBusyError(self._busy(held, now))
        if held is not None:  # stale: its run was killed, or stopped renewing long ago
            self.storage.remove([self.uri])
        # Lost to a run that started at the same moment, unless ours landed and only its answer was lost.
        if not self.storage.create_exclusive(self.uri, self._encoded()) and self._held_by() != self.lease.run:
            raise OutputBusyError(self._busy(self._read(), time.time()))
        if held is not None:  # two runs taking over one stale lease: the later removes the earlier's; both look again
            time.sleep(TAKEOVER_SETTLE_SECONDS)
            if self._held_by() != self.lease.run:
                raise OutputBusyError(self._busy(self._read(), time.time()))

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                held = self._read()
                # Another run took over (this one stalled past LEASE_SECONDS); a file that is no lease is no claim.
                if held not in (None, UNREADABLE) and held.run != self.lease.run:
                    self.lost_to = held
                    return
                self.lease = replace(self.lease, heartbeat=time.time())
                self.storage.write_atomic(self.uri, self._encoded())
            except OSError:  # a missed beat: the run itself meets the fault, and says so
                continue

    def check(self) -> None:
        """Raise OutputBusyError once another run has taken the lease over: this one stalled past LEASE_SECONDS
        (a paused VM, a partitioned network) and must stop writing; the shards it committed stay."""
        if self.lost_to is not None:
            raise OutputBusyError(
                f"stopped: another run took over the output {self.output} ({self.lost_to.describe(time.time())}) "
                f"after this run's heartbeat lapsed for over {LEASE_SECONDS:.0f} s; the shards committed stay"
            )

    def _busy(self, held: Lease | None, now: float) -> str:
        holder = held.describe(now) if held is not None else "a run that has just started"
        return (
            f"output {self.output} is being written by another run ({holder}); wait for it to end or choose another "
            f"--out (a killed run's lease expires {LEASE_SECONDS:.0f} s after its last heartbeat)"
        )

    def _held_by(self) -> str | None:
        held = self._read()
        return held.run if held is not None else None

    def _read(self) -> Lease | None:
        try:
            return Lease(**json.loads(self.storage.read_bytes(self.uri)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # not a lease of ours: treat it as stale
            return UNREADABLE

    def _encoded(self) -> bytes:
        return json.dumps(asdict(self.lease), indent=2).encode()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
