"""Failure modes of a scoring run: the driver killed or stopped by a signal mid-run (resume), a scoring actor
killed mid-run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from corpus import portraits
from pipeline_helpers import assert_rows_match, read_scores, score
from processes import RAY_ERROR_LINE, RAY_INFO_LINE, kill_driver_when, settled, wait_for

import piqa_model

warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)


def image_folder(shared_dir: Path, root: Path, count: int) -> dict[str, str]:
    root.mkdir(parents=True)
    for path in portraits(shared_dir, count):
        (root / path.name).write_bytes(path.read_bytes())
    return {path.name: "ok" for path in portraits(shared_dir, count)}


def test_driver_killed_mid_run_then_rerun_completes(shared_dir, tmp_path, repo_root):
    expected = image_folder(shared_dir, tmp_path / "in", count=48)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "--out", str(out), "--shard-size", "4", "--batch-size", "2", "--crop-mode", "center"]
    env = dict(os.environ, RAY_ADDRESS="local")
    command = [sys.executable, "-m", "jobs.score", *args]
    kill_driver_when(command, repo_root, env, lambda: len(list(out.glob("*.parquet"))) >= 2, 240, "two shards")

    # Commits the driver asked for before it died may still land (whole) while the workers stop.
    committed = settled(lambda: sorted(out.glob("*.parquet")))
    assert 2 <= len(committed) < 12, "the kill should land mid-run"
    for path in committed:  # committed files are whole: every row of their shard
        assert pq.read_table(path).num_rows == 4
    assert not (out / "_manifest.json").exists()

    finished = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"{12 - len(committed)} shards written, {len(committed)} already done" in finished.stdout
    assert not RAY_INFO_LINE.search(finished.stdout + finished.stderr), finished.stderr[-2000:]  # no --verbose
    assert not RAY_ERROR_LINE.search(finished.stderr), finished.stderr[-2000:]  # a normal run: no error from Ray
    assert_rows_match(read_scores(out), expected)


@pytest.mark.parametrize(
    ("runner", "signal_number"),
    [("ray", signal.SIGTERM), ("in-process", signal.SIGINT)],  # a preempted pod; Ctrl-C on a small folder
)
def test_a_signal_stops_the_run_within_seconds_and_a_rerun_completes(
    shared_dir, tmp_path, repo_root, runner, signal_number
):
    expected = image_folder(shared_dir, tmp_path / "in", count=48)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "--out", str(out), "--shard-size", "4", "--batch-size", "2", "--runner", runner]
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "jobs.score", *args]
    driver = subprocess.Popen(
        command, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: len(list(out.glob("*.parquet"))) >= 2 or driver.poll() is not None, 240, "two shards")
        assert driver.poll() is None, "the job ended before the signal"
        family = [psutil.Process(driver.pid), *psutil.Process(driver.pid).children(recursive=True)]
        signalled = time.monotonic()
        driver.send_signal(signal_number)
        _, stderr = driver.communicate(timeout=60)
        stopped_after = time.monotonic() - signalled
    finally:
        driver.kill()
    assert driver.returncode == 130, stderr[-2000:]
    assert stopped_after < 20, f"took {stopped_after:.0f} s to stop"
    said = re.fullmatch(
        r"python -m jobs.score: interrupted with (\d+) of 12 shards committed \(0 by an earlier run\); "
        r"rerun the same command to resume\n",
        stderr,
    )
    assert said, stderr[-2000:]  # one line, no traceback
    _, alive = psutil.wait_procs(family, timeout=20)  # the local Ray's processes stop with the driver
    assert not alive, [process.cmdline() for process in alive]

    committed = sorted(out.glob("*.parquet"))
    assert int(said.group(1)) <= len(committed) < 12, "the signal should land mid-run"
    for path in committed:  # committed files are whole: every row of their shard
        assert pq.read_table(path).num_rows == 4
    finished = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"{12 - len(committed)} shards written, {len(committed)} already done" in finished.stdout
    assert_rows_match(read_scores(out), expected)


@pytest.mark.usefixtures("ray_local")
def test_scoring_actor_killed_mid_run_loses_and_doubles_nothing(shared_dir, tmp_path):
    expected = image_folder(shared_dir, tmp_path / "in", count=24)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor() -> None:
        wait_for(lambda: len(list(out.glob("*.parquet"))) >= 1, 240, "a committed shard")
        for process in psutil.process_iter(["pid", "cmdline"]):
            if "PrepareAndScore" in " ".join(process.info["cmdline"] or []):
                process.kill()
                killed.append(process.info["pid"])
                return

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    summary = score(tmp_path / "in", out, shard_size=2, batch_size=2)
    killer.join(timeout=10)

    assert killed, "no scoring actor process was found to kill"
    assert summary.shards_written == 12
    assert_rows_match(read_scores(out), expected)
