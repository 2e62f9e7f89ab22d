"""What a `piqa` command that runs Ray prints: its own lines and Ray's warnings; Ray's INFO logs with --verbose."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from processes import RAY_INFO_LINE

from jobs.cli import run


@pytest.mark.usefixtures("ray_local")
def test_ray_info_logs_only_with_verbose(repo_root, tmp_path, capfd, caplog):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("congress_A000014.jpg", "london_001_03.jpg"):
        shutil.copy(repo_root / "samples" / "portraits" / name, images / name)

    assert run(["score", str(images), "--out", str(tmp_path / "loud"), "--verbose"]) == 0
    loud = capfd.readouterr()
    # In one test process Ray's console handler may still hold the stream of an earlier test's capture: its
    # INFO records then reach pytest's log capture instead. A real command has one console.
    loud_logs = caplog.text
    assert run(["score", str(images), "--out", str(tmp_path / "quiet")]) == 0
    quiet = capfd.readouterr()

    assert RAY_INFO_LINE.search(loud.out + loud.err) or "INFO" in loud_logs, loud.err[-2000:]
    assert not RAY_INFO_LINE.search(quiet.out + quiet.err), quiet.err[-2000:]
    assert quiet.out.startswith("scored 2 images (2 ok, 0 errors)")
    assert "INFO" not in caplog.text[len(loud_logs) :], caplog.text[-2000:]


def test_a_command_drops_rays_false_alarm_and_passes_everything_else(repo_root):
    alarm = (
        "[2026-12-02 04:18:54,842 E 9153 9153] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(X))'"
        " and ID: '935c' has constructor arguments in the object store and max_restarts > 0. If the arguments ..."
    )
    script = f"""
import os, sys, time
from pipelines.runtime import RAY_FALSE_ALARM, drop_stderr_lines
drop_stderr_lines(RAY_FALSE_ALARM)
os.write(2, b"native line\\n" + {alarm!r}.encode() + b"\\nprogress 1%\\r")
time.sleep(0.3)
print("progress 2%", end="", file=sys.stderr, flush=True)
time.sleep(0.3)
print("\\nlast words", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"native line\nprogress 1%\rprogress 2%\nlast words\n"
