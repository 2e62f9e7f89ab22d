"""How the scoring job spreads over a cluster: pool sizes, CPUs and threads per actor, batch and block sizes.

As measured on the CI machine (BENCHMARKS.md, `bench/pipeline_throughput.py`), torch's threads stall
whenever another process takes one of their cores, and a Ray node always has other processes (the driver's
executor, the raylet, the read tasks). So CPU work runs in single-threaded actors, one per core, each holding a
little less than one CPU so that the read tasks always find room:

- no GPU: fused actors (decode, detect, crop, score in one process: crops never cross the object store),
  one per core of the cluster;
- GPUs: one scoring actor per GPU (or per `gpus_per_actor`), fed by single-threaded prepare actors (decode,
  detect, crop) on every CPU the scoring actors leave free. A GPU scores a `dn-piqa` image in a fraction of the
  core-time a photo needs to be decoded, searched for a face and cut (BENCHMARKS.md, "GPU scoring"): a GPU
  wants a dozen or more prepare actors, so give it the CPUs to match (docs/deploy.md, "Sizing").

Every size can be set explicitly (`ScoreConfig`); the derived ones fill the cluster as it is when the job starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pipelines.config import ScoreConfig

READ_TASK_CPUS = 0.25
BLOCK_ROWS = 8  # images per block between steps, at least: small enough to balance a small job's actors at the end
MAX_BLOCK_ROWS = 128  # at most: Ray's cost in the driver is per block (BENCHMARKS.md, "Scale")
BLOCKS_PER_ACTOR = 8  # a job's blocks grow until its actors would get fewer than this many each
GPU_BATCH = 32
CPU_BATCH = 1  # one image (10 crops) per forward: faster than batches of 4 on most CPU sets (BENCHMARKS.md)


@dataclass(frozen=True)
class Pool:
    """An actor pool: its size (min, max), and what each actor holds."""

    size: tuple[int, int]
    cpus: float
    threads: int
    gpus: float = 0.0


@dataclass(frozen=True)
class Layout:
    batch_size: int  # images per model forward
    block_rows: int  # images per block handed from step to step
    score: Pool  # the fused actors without GPUs; the GPU scoring actors otherwise
    prepare: Pool | None  # GPU clusters only: the CPU actors that feed the scoring ones


def plan_layout(config: ScoreConfig, total_cpus: float, total_gpus: float, node_cpus: float) -> Layout:
    """The layout for a cluster with these resources (`node_cpus`: the smallest node's CPUs)."""
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total_gpus > 0 else 0.0
    if gpus > 0:
        return _gpu_layout(config, gpus, total_cpus, total_gpus)
    batch_size = config.batch_size or CPU_BATCH
    cpus = config.cpus_per_actor or max(READ_TASK_CPUS, (node_cpus - READ_TASK_CPUS) / max(1.0, node_cpus))
    slots = _fits(total_cpus - READ_TASK_CPUS, cpus)
    pool = Pool(_sizes(config.score_actors, slots), cpus, _threads(cpus))
    return Layout(batch_size, max(batch_size, BLOCK_ROWS), pool, None)


def in_process_layout(config: ScoreConfig, cpus: int) -> Layout:
    """A job run in this process (`plan.run_in_process`, one thread per stage): prepare and score as two stages that
    overlap as two actors would, each with half the cores (torch's threads are the process's, shared by both);
    on one core, one fused stage."""
    batch_size = config.batch_size or CPU_BATCH
    block_rows = max(batch_size, BLOCK_ROWS)
    if cpus < 2:
        return Layout(batch_size, block_rows, Pool((1, 1), 1.0, 1), None)
    half = Pool((1, 1), cpus / 2, cpus // 2)
    return Layout(batch_size, block_rows, half, half)


def _gpu_layout(config: ScoreConfig, gpus: float, total_cpus: float, total_gpus: float) -> Layout:
    batch_size = config.batch_size or GPU_BATCH
    cpus = config.cpus_per_actor or 1.0
    scorers = _sizes(config.score_actors, _fits(total_gpus, gpus))
    left = total_cpus - READ_TASK_CPUS - scorers[1] * cpus
    prepare = Pool(_sizes(config.prepare_actors, _fits(left, cpus)), cpus, _threads(cpus))
    return Layout(batch_size, max(batch_size, BLOCK_ROWS), Pool(scorers, cpus, _threads(cpus), gpus), prepare)


def _fits(available: float, each: float) -> int:
    """How many `each` fit in `available` (at least one: Ray then queues what does not fit)."""
    return max(1, math.floor(available / each + 1e-6))


def _threads(cpus: float) -> int:
    return max(1, math.ceil(cpus - 1e-6))


def _sizes(requested: tuple[int, int] | None, slots: int) -> tuple[int, int]:
    """The pool's (min, max): as requested (min at most `slots`: a pool waits for its min), else all `slots`
    from the start (a fixed cluster gains nothing from starting small and growing mid-run, which loads the
    model again in each new actor)."""
    if requested is None:
        return slots, slots
    low, high = requested
    return min(low, slots), high


def sized_for(layout: Layout, images: int | None) -> Layout:
    """`layout` with blocks as large as a job of `images` images allows (None: not known before reading, as for tar
    and parquet shards). A block costs the driver the same whatever it holds, so a long job wants large blocks;
    each actor of the pool that takes them still gets `BLOCKS_PER_ACTOR` or more, so that none idles at the end."""
    actors = (layout.prepare or layout.score).size[1]
    rows = MAX_BLOCK_ROWS if images is None else images // (BLOCKS_PER_ACTOR * actors)
    return dataclasses.replace(layout, block_rows=max(layout.block_rows, min(MAX_BLOCK_ROWS, rows)))
