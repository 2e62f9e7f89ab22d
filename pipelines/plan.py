"""A Ray Data plan as a list of stages, each declaring what it needs.

A stage is a batch callable: a class (Ray runs it as an actor pool: constructed once per actor, so what it
loads is loaded once) or a function (Ray tasks), with its kwargs, batch size, CPUs, GPUs and pool size. A job
chooses its list (`pipelines.score.model_stages`) and `run_stages` applies it in order, or `run_in_process` runs
the same list here for a job too small to pay for a cluster; a new step (a second detector, a GPU decoder, an
extra score) is one more `Stage` in the list, not an edit of the job.
"""

from __future__ import annotations

import functools
import gc
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[..., Any]  # a class: an actor pool, `kwargs` to its constructor; a function: tasks, `kwargs` per call
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # rows per call; None: a whole block
    cpus: float = 1.0
    gpus: float = 0.0
    pool: tuple[int, int] = (1, 1)  # actors (min, max); classes only
    batch_format: str = "numpy"  # what the callable takes: a dict of numpy arrays, or "pyarrow": a table

    @property
    def is_actor(self) -> bool:
        return isinstance(self.fn, type)

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        from ray.data import ActorPoolStrategy  # here: a job run in this process need not import Ray Data

        options: dict[str, Any] = dict(batch_size=self.batch_size, batch_format=self.batch_format, num_cpus=self.cpus)
        if self.gpus:
            options["num_gpus"] = self.gpus
        if not self.is_actor:
            return ds.map_batches(self.fn, fn_kwargs=self.kwargs, **options)
        low, high = self.pool
        compute = ActorPoolStrategy(min_size=low, max_size=high)
        return ds.map_batches(self.fn, fn_constructor_kwargs=self.kwargs, compute=compute, **options)


def run_stages(ds: ray.data.Dataset, stages: Sequence[Stage]) -> ray.data.Dataset:
    """`ds` through every stage, in order (lazily, as Ray Data plans always are)."""
    for stage in stages:
        ds = stage.apply(ds)
    return ds


Batch = pa.Table | dict[str, np.ndarray]  # what a stage takes and returns: an Arrow table or numpy columns


def run_in_process(stages: Sequence[Stage], items: list[dict[str, Any]]) -> Iterator[Batch]:
    """The same stages in this process, for jobs too small to pay for starting a cluster: each stage's callable is
    built once (as on one actor) and called on batches of its batch size. Each stage runs in a thread of its own,
    handing its batches on through a short queue, so that the stages overlap as a pool's actors do on Ray (torch,
    PIL and Arrow release the interpreter's lock while they compute). A stage returns a batch (an Arrow table or a
    dict of numpy columns), or an iterator of them."""
    batches: Iterator[Batch] = iter([pa.Table.from_pylist(items)])
    for stage in stages:
        batches = _in_thread(_batches_through(stage, batches), stage.name)
    try:
        yield from batches
    finally:
        gc.unfreeze()  # actors freeze what they load for their lifetime (`stages`); this process lives on


def _batches_through(stage: Stage, batches: Iterable[Batch]) -> Iterator[Batch]:
    try:
        call = stage.fn(**stage.kwargs) if stage.is_actor else functools.partial(stage.fn, **stage.kwargs)
        for batch in _rebatched(batches, stage.batch_size):
            if stage.batch_format == "numpy" and isinstance(batch, pa.Table):
                batch = {name: batch[name].to_numpy(zero_copy_only=False) for name in batch.column_names}
            result = call(batch)
            yield from [result] if isinstance(result, (pa.Table, dict)) else result
    finally:  # this stage failed or was stopped: the stages before it stop too
        getattr(batches, "close", lambda: None)()


@dataclass(frozen=True)
class _Raised:
    error: BaseException


_END = object()


STAGE_STOP_TIMEOUT_S = 60.0  # closing `run_in_process`'s batches waits this long for a stage to finish its batch


def _in_thread(batches: Iterator[Batch], name: str, depth: int = 2) -> Iterator[Batch]:
    """`batches`, computed in a thread of their own at most `depth` batches ahead of their reader; what the thread
    raises is raised here. Closing this generator (Ctrl-C, a failed commit) stops the thread after its batch, and
    waits for that: a thread still in torch when the interpreter exits aborts the process."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def hand_on(item: Any) -> bool:
        while not stopped.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for batch in batches:
                if not hand_on(batch):
                    return
            hand_on(_END)
        except BaseException as error:  # handed to the reader, which raises it
            hand_on(_Raised(error))
        finally:
            batches.close()

    thread = threading.Thread(target=pump, name=f"stage-{name}", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stopped.set()
        thread.join(timeout=STAGE_STOP_TIMEOUT_S)  # its batch done: a thread still in torch aborts the exit


def _rebatched(batches: Iterable[Batch], size: int | None) -> Iterator[Batch]:
    """Batches of `size` rows (the last one may be smaller) from a stream of batches, as Ray Data bundles blocks
    for a stage; None: each batch as it comes."""
    pending: list[Batch] = []
    rows = 0
    for batch in batches:
        if size is None:
            yield batch
            continue
        pending.append(batch)
        rows += _num_rows(batch)
        while rows >= size:
            merged = _concat(pending)
            yield _slice(merged, 0, size)
            pending, rows = [_slice(merged, size, rows - size)], rows - size
    if rows:
        yield _concat(pending)


def _num_rows(batch: Batch) -> int:
    return batch.num_rows if isinstance(batch, pa.Table) else len(next(iter(batch.values())))


def _slice(batch: Batch, start: int, length: int) -> Batch:
    if isinstance(batch, pa.Table):
        return batch.slice(start, length)
    return {name: values[start : start + length] for name, values in batch.items()}


def _concat(batches: list[Batch]) -> Batch:
    if isinstance(batches[0], pa.Table):
        return pa.concat_tables(batches)
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
