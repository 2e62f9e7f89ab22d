"""Two writers, one output: a live run's lease refuses a second run (and an --overwrite of its output) with one line
naming it; a killed run's lease is taken over without a flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pytest
import s3fs
from corpus import portraits
from pipeline_helpers import assert_rows_match, read_scores, score
from processes import wait_for

from pipelines import lease as leases
from pipelines.lease import LEASE, Lease, OutputBusyError, OutputLease
from pipelines.storage import Storage


def place(out, holder: Lease) -> None:
    """`holder`'s lease in `out`, written whole (as a run writes its own) so a renewer never reads half of it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "lease.tmp").write_text(json.dumps(asdict(holder)))
    (out / "lease.tmp").replace(out / LEASE)


def test_a_live_lease_refuses_a_second_writer_in_one_line_naming_it(tmp_path):
    holder = Lease("abc123", "render-node-7", 4242, "2026-12-03T10:00:00+00:00", time.time() - 5)
    place(tmp_path / "out", holder)
    with pytest.raises(OutputBusyError) as refused, OutputLease(str(tmp_path / "out"), Storage()):
        pass
    message = str(refused.value)
    assert "\n" not in message
    assert "is being written by another run (run abc123, process 4242 on render-node-7" in message
    assert json.loads((tmp_path / "out" / LEASE).read_text())["run"] == "abc123", "the holder's lease stays"


@pytest.mark.parametrize(
    "holder",
    [
        Lease("old", "render-node-7", 4242, "2026-12-03T10:00:00+00:00", time.time() - leases.LEASE_SECONDS - 1),
        Lease("killed", "", 0, "2026-12-03T10:00:00+00:00", time.time()),  # host filled in below: this one
    ],
    ids=["heartbeat-expired", "process-gone-on-this-host"],
)
def test_a_stale_lease_is_taken_over_and_released_at_the_end(holder, tmp_path):
    if holder.run == "killed":
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        holder = Lease("killed", leases.socket.gethostname(), int(finished.stdout), holder.started, holder.heartbeat)
    place(tmp_path / "out", holder)
    with OutputLease(str(tmp_path / "out"), Storage()) as held:
        assert json.loads((tmp_path / "out" / LEASE).read_text())["run"] == held.lease.run != holder.run
    assert not (tmp_path / "out" / LEASE).exists()


def test_the_holder_renews_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "HEARTBEAT_SECONDS", 0.2)
    with OutputLease(str(tmp_path / "out"), Storage()) as held:
        first = held.lease.heartbeat
        wait_for(lambda: json.loads((tmp_path / "out" / LEASE).read_text())["heartbeat"] > first, 10, "a heartbeat")


def test_a_holder_that_reads_a_file_that_is_no_lease_keeps_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "HEARTBEAT_SECONDS", 0.1)
    with OutputLease(str(tmp_path / "out"), Storage()) as held:
        (tmp_path / "out" / LEASE).write_text("{not a lease")
        wait_for(lambda: (tmp_path / "out" / LEASE).read_text().startswith("{\n"), 10, "the lease rewritten")
        held.check()
        assert json.loads((tmp_path / "out" / LEASE).read_text())["run"] == held.lease.run


def test_a_run_whose_lease_was_taken_over_stops_and_leaves_the_new_holder_be(shared_dir, tmp_path, monkeypatch):
    """A run that stalled past LEASE_SECONDS (here: its lease replaced while it runs, by a holder that renews it as
    a run does) stops at its next block with one line, writes no manifest, and leaves the other run's lease in
    place."""
    monkeypatch.setattr(leases, "HEARTBEAT_SECONDS", 0.1)
    photos = tmp_path / "in"
    photos.mkdir()
    for number, path in enumerate(portraits(shared_dir, 4) * 3):
        (photos / f"{number:02d}.jpg").write_bytes(path.read_bytes())
    out = tmp_path / "out"
    usurper = Lease("usurper", "render-node-7", 4242, "2026-12-03T10:00:00+00:00", time.time() + 3600)
    done = threading.Event()

    def take_over_and_renew() -> None:
        # Renewed, as a run renews its lease: the stalled run may overwrite it once (a heartbeat it read before the
        # take-over and wrote after), and then reads the new holder's at its next beat.
        wait_for((out / LEASE).exists, 60, "a lease")
        while not done.is_set():
            place(out, usurper)
            done.wait(0.05)

    replaced = threading.Thread(target=take_over_and_renew)
    seen = OutputLease.check

    def check_with_the_new_holder_quiet(lease: OutputLease) -> None:
        if lease.lost_to is not None:  # seen: the new holder stops writing, so what the run leaves behind shows
            done.set()
            replaced.join()
        seen(lease)

    monkeypatch.setattr(OutputLease, "check", check_with_the_new_holder_quiet)
    replaced.start()
    try:
        with pytest.raises(OutputBusyError) as stopped:
            score(photos, out, shard_size=2, runner="in-process")
    finally:
        done.set()
        replaced.join()
    assert "stopped: another run took over the output" in str(stopped.value) and "run usurper" in str(stopped.value)
    # Stopped while the error is still held: a stage thread left in torch aborts the interpreter at its exit.
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("stage-")]
    assert json.loads((out / LEASE).read_text())["run"] == "usurper"
    assert not (out / "_manifest.json").exists()
    assert len(list(out.glob("*.parquet"))) < 6


def test_two_runs_starting_together_on_s3_one_wins(s3_endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("leases")
    storage = Storage(s3_endpoint)
    first, second = OutputLease("s3://leases/out", storage), OutputLease("s3://leases/out", storage)
    assert storage.create_exclusive(first.uri, first._encoded())
    with pytest.raises(OutputBusyError, match=f"run {first.lease.run}, process {os.getpid()}"):
        second._take()  # what a run that read no lease a moment earlier meets at its exclusive create
    assert not storage.create_exclusive(first.uri, b"{}")


def test_a_second_score_run_into_a_live_output_is_refused_and_the_first_completes(shared_dir, tmp_path, repo_root):
    (tmp_path / "in").mkdir()
    for path in portraits(shared_dir, 80):
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    command = [sys.executable, "-m", "jobs.score", str(tmp_path / "in"), "--out", str(out), "--shard-size", "4"]
    command += ["--batch-size", "2", "--crop-mode", "center", "--runner", "in-process"]
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    first = subprocess.Popen(command, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / LEASE).exists() or first.poll() is not None, 120, "the first run's lease")
        seconds = [  # a plain rerun and an --overwrite, at once
            subprocess.Popen(second, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for second in (command, [*command, "--overwrite"])
        ]
        for second in seconds:
            _, stderr = second.communicate(timeout=120)
            assert second.returncode == 1, stderr[-2000:]
            [line] = stderr.strip().splitlines()
            assert line.startswith(f"python -m jobs.score: error: output {out} is being written by another run"), line
            assert f"process {first.pid} on " in line
        assert first.poll() is None, "the first run ended before the others were refused"
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-2000:]
    assert "20 shards written" in stdout
    assert_rows_match(read_scores(out), {path.name: "ok" for path in portraits(shared_dir, 80)})
    assert not (out / LEASE).exists()
