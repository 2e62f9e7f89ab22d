"""One function over many items: in this process's threads, or as Ray tasks on a cluster.

Jobs that do the same work over thousands of files (`pipelines.curate`) write it once, as a plain function of
an item, and `map_tasks` runs it here (threads: pyarrow and numpy release the GIL) or as Ray tasks. Results come
back in item order with only a few calls in flight, so a caller folds them without holding them all. `shared`
values go to every call; with Ray they are put in the object store once.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

Result = TypeVar("Result")
IN_FLIGHT_PER_WORKER = 2


def map_tasks(
    function: Callable[..., Result], items: Iterable[Any], *, use_ray: bool, shared: dict[str, Any] | None = None
) -> Iterator[Result]:
    """`function(item, **shared)` for each item, in item order; an exception in any call is raised here."""
    shared = shared or {}
    if use_ray:
        yield from _on_ray(function, items, shared)
        return
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers, thread_name_prefix="map-tasks") as pool:
        yield from _windowed((lambda item: pool.submit(function, item, **shared)), items, Future.result, workers)


def _on_ray(function: Callable[..., Result], items: Iterable[Any], shared: dict[str, Any]) -> Iterator[Result]:
    import ray  # a second to import: not for runs in this process

    from pipelines.runtime import ensure_ray

    ensure_ray()
    remote = ray.remote(num_cpus=1)(function)
    refs = {name: ray.put(value) for name, value in shared.items()}
    workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    yield from _windowed((lambda item: remote.remote(item, **refs)), items, ray.get, workers)


def _windowed(
    start: Callable[[Any], Any], items: Iterable[Any], wait: Callable[[Any], Result], workers: int
) -> Iterator[Result]:
    pending: deque = deque()
    try:
        for item in items:
            pending.append(start(item))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield wait(pending.popleft())
        while pending:
            yield wait(pending.popleft())
    finally:
        for handle in pending:
            if isinstance(handle, Future):
                handle.cancel()
            else:
                import ray

                ray.cancel(handle)
