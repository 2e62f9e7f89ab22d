"""Killing a job's driver mid-run, as an operator's `kill -9` or a lost node would."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def kill_driver_when(
    command: list[str], cwd: Path, env: dict[str, str], condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """Start `command`, SIGKILL it once `condition()` holds, then clean up the local Ray it left behind."""
    driver = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: condition() or driver.poll() is not None, timeout, what)
        assert driver.poll() is None, f"the job ended before {what}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


def settled(observe: Callable[[], Any], quiet: float = 3.0, timeout: float = 60.0) -> Any:
    """What `observe()` returns once it has stayed the same for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = observe(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"still changing after {timeout} s: {last}"
        time.sleep(0.5)
        now = observe()
        if now != last:
            last, since = now, time.monotonic()
    return last


RAY_INFO_LINE = re.compile(r"^\S.*\tINFO \S+\.py:\d+ -- |Running Dataset|Started a local Ray instance", re.MULTILINE)
"""A line of Ray's own INFO logs ("2026-01-01 00:00:00,000\tINFO worker.py:2038 -- Started a local Ray instance.")."""

RAY_ERROR_LINE = re.compile(r"^\[[\d-]+ [\d:,]+ E \d+ \d+\] ", re.MULTILINE)
"""An error-level line of Ray's C++ core ("[2026-12-02 04:18:54,842 E 9153 9153] core_worker.cc:2465: ...")."""
