"""Stages run in this process (`pipelines.plan.run_in_process`): each in a thread of its own, overlapping."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from pipelines.plan import Stage, run_in_process

SECOND_BATCH_STARTED = threading.Event()


def first(batch: pa.Table) -> pa.Table:
    if batch["n"][0].as_py() == 1:
        SECOND_BATCH_STARTED.set()
    return batch.append_column("first", pa.array([threading.current_thread().name] * batch.num_rows))


def second(batch: pa.Table) -> pa.Table:
    if batch["n"][0].as_py() == 0:  # run one stage after the other, and the first never starts its second batch
        assert SECOND_BATCH_STARTED.wait(timeout=30), "the stages did not overlap"
    return batch.append_column("second", pa.array([threading.current_thread().name] * batch.num_rows))


def broken(batch: pa.Table) -> pa.Table:
    raise KeyError("a bug in a stage")


CALLS: list[int] = []


def counted(batch: pa.Table) -> pa.Table:
    CALLS.append(batch["n"][0].as_py())
    return batch


def stage(fn) -> Stage:
    return Stage(fn.__name__, fn, batch_size=1, batch_format="pyarrow")


def test_each_stage_runs_in_a_thread_of_its_own_and_the_next_batch_starts_before_the_last_is_done():
    SECOND_BATCH_STARTED.clear()
    rows = pa.concat_tables(run_in_process([stage(first), stage(second)], [{"n": n} for n in range(4)]))
    assert rows["n"].to_pylist() == [0, 1, 2, 3]  # in order
    assert set(rows["first"].to_pylist()).isdisjoint(rows["second"].to_pylist())
    assert threading.current_thread().name not in rows["first"].to_pylist()


def test_what_a_stage_raises_reaches_the_reader():
    with pytest.raises(KeyError, match="a bug in a stage"):
        list(run_in_process([stage(first), stage(broken)], [{"n": n} for n in range(3)]))


def test_closing_the_batches_stops_every_stage():
    CALLS.clear()
    batches = run_in_process([stage(counted), stage(first)], [{"n": n} for n in range(1000)])
    next(batches)
    batches.close()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("stage-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("stage-")]
    assert len(CALLS) < 20  # a few batches ahead of the reader, never the whole input
