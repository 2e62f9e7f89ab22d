"""A Ray Data plan as a list of stages, each declaring what it needs.

A stage is a batch callable: a class (Ray runs it as an actor pool: constructed once per actor, so what it
loads is loaded once) or a function (Ray tasks), with its kwargs, batch size, CPUs, GPUs and pool size. A job
chooses its list (`pipelines.score.scoring_stages`) and `run_stages` applies it in order; a new step (a second
detector, a GPU decoder, an extra score) is one more `Stage` in the list, not an edit of the job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.data import ActorPoolStrategy


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[..., Any]  # a class: an actor pool, `kwargs` to its constructor; a function: tasks, `kwargs` per call
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # rows per call; None: a whole block
    cpus: float = 1.0
    gpus: float = 0.0
    pool: tuple[int, int] = (1, 1)  # actors (min, max); classes only

    @property
    def is_actor(self) -> bool:
        return isinstance(self.fn, type)

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        options: dict[str, Any] = dict(batch_size=self.batch_size, batch_format="numpy", num_cpus=self.cpus)
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
