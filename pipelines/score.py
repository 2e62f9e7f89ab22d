"""The scoring job: shards from object storage -> its stages (read, prepare, score) on Ray Data or, for a few
images, in this process -> Parquet per shard."""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.config import ScoreConfig
from pipelines.layout import READ_TASK_CPUS, Layout, in_process_layout, plan_layout, sized_for
from pipelines.lease import OutputLease
from pipelines.plan import Stage, run_in_process, run_stages
from pipelines.readers import read_shards, read_units
from pipelines.resume import JOB_RECORD, JobRecord, continue_job, few_names
from pipelines.runtime import ensure_ray
from pipelines.shards import Shard, list_shards
from pipelines.stages import IMAGE_COLUMNS, INPUT_COLUMNS, OUTPUT_COLUMNS, Prepare, PrepareAndScore, Score
from pipelines.storage import REQUEST_KINDS, Storage
from pipelines.tally import Tally
from pipelines.writer import (
    COMMITTER_ACTOR,
    MANIFEST,
    PartWriter,
    ShardCommitter,
    ShardLedger,
    clear_parts,
    shard_output_uri,
)
from piqa_model import ConfigError, ModelConfig, PiqaError
from piqa_model.bundle import default_bundle_path, inspect_bundle, warn_if_untrained
from piqa_model.calibration import describe_scale

SMALL_JOB_IMAGES = 128  # runner "auto": a folder of at most this many images is scored here (BENCHMARKS.md)
DATASET = "a ray.data.Dataset"  # what `score_dataset` puts in its config's input and output


class ScoringInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the job between two steps; the message says how many shards are committed (they
    stay: a rerun of the same command scores the rest)."""


class ShardsFailedError(PiqaError, RuntimeError):
    """Some shards could not be finished in this run (storage kept failing them); the others are committed, and a
    rerun of the same command completes the rest."""


@dataclass
class RunSummary:
    output: str
    model: str
    model_trained: bool
    score_scale: str
    shards_total: int
    shards_skipped: int
    shards_written: int
    runner: str = "ray"  # where the stages ran: "ray" or "in-process" (ScoreConfig.runner)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    driver_cpu_seconds: float = 0.0  # the CPU this process spent while the stages ran (all of it, in-process)
    retries: dict[str, int] = field(default_factory=dict)  # requests to storage sent again, by kind (list, get, ...)

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        ok = self.counts.get("ok", 0)
        return (
            f"scored {self.images} images ({ok} ok, {self.images - ok} errors) in {self.seconds:.1f} s, "
            f"{self.images_per_second:.2f} images/s; {self.shards_written} shards written, "
            f"{self.shards_skipped} already done ({self.runner}); output: {self.output}"
        )


def run_scoring(config: ScoreConfig) -> RunSummary:
    """Score every unfinished shard of `config.input` into `config.output`; see the package docs.

    Fails before any work (StorageError, WeightsError) on a missing input, an unwritable output or
    an unreadable bundle, (OutputBusyError) on an output that another live run is writing, and
    (OutputMismatchError) on an output that holds another job's rows.
    """
    started = time.time()
    storage = dataclasses.replace(Storage.from_environment(config.s3_endpoint), tally=Tally())
    shards = list_shards(config.input, storage, config.shard_size)
    storage.check_writable(config.output)
    config = dataclasses.replace(config, bundle=_bundle_uri(config))  # once: what the driver checks, actors load
    bundle_config, info, model = inspect_bundle(config.bundle)
    warn_if_untrained(info)
    model_config = bundle_config.with_crop_mode(config.crop_mode)
    with OutputLease(config.output, storage) as lease:  # one writer per output: a second run is refused
        if config.overwrite:
            _clear_outputs(config.output, storage)
        done = _finished_shards(config.output, storage)
        continue_job(config.output, storage, JobRecord.describe(config, shards, model, model_config), done)
        todo = [shard for shard in shards if shard.shard_id not in done]

        clear_parts(config.output, storage)
        in_process = _runs_in_process(config, todo)
        driver_cpu = time.process_time()
        counts: dict[str, dict[str, int]] = {}
        workers = storage  # what the stages and the committer reach storage with
        if todo:  # the stages start (and Ray with them) when called; the commits follow their receipts
            try:
                workers = storage if in_process else _on_ray(storage)
                receipts = _written_parts(todo, config, workers, model_config, model, in_process)
                write = _write_options(config, workers, model_config)
                counts = _commit_shards(receipts, write, in_process, lease.check)
            except KeyboardInterrupt:
                committed = len(_finished_shards(config.output, storage) & {shard.shard_id for shard in shards})
                raise ScoringInterrupted(
                    f"interrupted with {committed} of {len(shards)} shards committed ({len(done)} by an earlier run)"
                ) from None
        finished = sorted(_finished_shards(config.output, storage))  # before the tallies are added up: its retries too
        retries, failures = _totals(storage, workers)
        _check_all_committed(todo, counts, failures, len(shards))
        summary = RunSummary(
            output=config.output,
            model=model,
            model_trained=info.trained,
            score_scale=describe_scale(info.scale),
            shards_total=len(shards),
            shards_skipped=len(shards) - len(todo),
            shards_written=len(counts),
            runner=("in-process" if in_process else "ray") if todo else "nothing to do",
            counts=dict(sum((Counter(shard) for shard in counts.values()), Counter())),
            retries=retries,
            seconds=time.time() - started,
            driver_cpu_seconds=time.process_time() - driver_cpu,
        )
        lease.check()
        _write_manifest(config, summary, finished, storage)
        return summary


def _commit_shards(
    receipts: Iterable[pa.Table], write: dict[str, Any], in_process: bool, check_lease: Callable[[], None]
) -> dict[str, dict[str, int]]:
    """Commit each shard once `receipts` show all its rows written (by a Ray actor, or here for a job run in this
    process); the status counts of each committed shard, by shard. `check_lease` raises, and stops the run, once
    another run has the output."""
    if in_process:
        commit = ShardCommitter(**write).commit
    else:
        commit = ray.remote(**COMMITTER_ACTOR)(ShardCommitter).remote(**write).commit.remote
    ledger = ShardLedger(commit)
    try:
        for batch in receipts:
            check_lease()
            ledger.add(batch)
    finally:  # stopped (a lost lease, a failed commit, Ctrl-C): the stages stop now, not when the error is freed
        getattr(receipts, "close", lambda: None)()
    shards = list(ledger.commits)
    results = list(ledger.commits.values()) if in_process else ray.get(list(ledger.commits.values()))
    counts = {shard: result for shard, result in zip(shards, results, strict=True) if result is not None}
    if not ledger.pending and len(counts) == len(shards):  # what committed shards leave behind (empty folders)
        clear_parts(write["output"], write["storage"])
    return counts


def _on_ray(storage: Storage) -> Storage:
    """`storage` as the job's Ray workers use it: started Ray, their retries and failures told to one actor."""
    ensure_ray()
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)  # lives as the driver
    return dataclasses.replace(storage, tally=ray.remote(num_cpus=0, scheduling_strategy=here)(Tally).remote())


def _totals(driver: Storage, workers: Storage) -> tuple[dict[str, int], dict[str, str]]:
    """Retries by request kind and failed shards of the driver's and the workers' tallies together (the workers'
    actor is stopped: the job's stages are done)."""
    retries, failures = driver.tally.totals()
    if workers.tally is not driver.tally:
        try:
            more_retries, more_failures = ray.get(workers.tally.totals.remote())
        except ray.exceptions.RayActorError:  # lost with its node: the workers' retries go uncounted
            more_retries, more_failures = {}, {}
        ray.kill(workers.tally)
        retries = dict(Counter(retries) + Counter(more_retries))
        failures = more_failures | failures
    return retries, failures


def _check_all_committed(
    todo: list[Shard], counts: dict[str, dict[str, int]], failures: dict[str, str], total: int
) -> None:
    """Raise ShardsFailedError, naming the shards and why, unless every shard of `todo` was committed."""
    missing = [shard.shard_id for shard in todo if shard.shard_id not in counts]
    if not missing:
        return
    first = missing[0]
    also = f"; also {few_names(missing[1:])}" if missing[1:] else ""
    raise ShardsFailedError(
        f"{len(missing)} of {total} shards were not written ({first}: "
        f"{failures.get(first, 'not all of its rows came back')}{also}); the other "
        f"{total - len(missing)} are committed: rerun the same command to complete them"
    )


def _written_parts(
    shards: list[Shard],
    config: ScoreConfig,
    storage: Storage,
    model: ModelConfig,
    bundle_id: str,
    in_process: bool,
) -> Iterable[pa.Table]:
    """The receipts of the parts that the job's stages (on Ray, or in this process) write for `shards`."""
    # In process: the cores this process may use; on Ray (up since `_on_ray`), the cluster's.
    layout = in_process_layout(config, len(os.sched_getaffinity(0))) if in_process else _cluster_layout(config)
    images = sum(len(shard.files) for shard in shards) if all(shard.files for shard in shards) else None
    layout = sized_for(layout, images)
    units = read_units(shards, layout.block_rows)
    stages = [
        _read_stage(config, storage, layout),
        *model_stages(config, layout, model, bundle_id, len(units), write=_write_options(config, storage, model)),
    ]
    if in_process:
        return run_in_process(stages, units)
    import ray.data

    dataset = run_stages(ray.data.from_items(units, override_num_blocks=len(units)), stages)
    return dataset.iter_batches(batch_format="pyarrow", batch_size=None)


def _runs_in_process(config: ScoreConfig, shards: list[Shard]) -> bool:
    if config.runner != "auto":
        return config.runner == "in-process"
    if "RAY_ADDRESS" in os.environ or ray.is_initialized():  # a cluster is named, or already up here
        return False
    sizing = (config.prepare_actors, config.score_actors, config.gpus_per_actor, config.cpus_per_actor)
    if any(value is not None for value in sizing):  # actors asked for: a Ray job
        return False
    return all(shard.files for shard in shards) and sum(len(shard.files) for shard in shards) <= SMALL_JOB_IMAGES


def score_dataset(
    ds: ray.data.Dataset, bundle: str | None = None, *, image_column: str = "jpg", **settings: Any
) -> ray.data.Dataset:
    """`ds` scored: the building block for Ray Data pipelines of your own (`piqa score` is this plus shards).

    `ds` holds encoded images in `image_column`; its other columns pass through (a key to join on, say). Each
    row comes out with those columns, the `ScoreRecord` fields (status, error, width, height, num_faces,
    face_box, face_prob, score, and liqe_* with the LIQE branch) and `model` (the bundle's id); a broken image
    is a row with its status, never an error. `settings` are `ScoreConfig`'s model and layout settings
    (detect_size, crop_mode, decode, precision, batch_size, score_actors, ...). Joins the Ray cluster of
    RAY_ADDRESS or starts a local one, as the job does.
    """
    config = ScoreConfig(input=DATASET, output=DATASET, bundle=bundle, image_column=image_column, **settings)
    ensure_ray()
    config = dataclasses.replace(config, bundle=_bundle_uri(config))
    bundle_config, _, bundle_id = inspect_bundle(config.bundle)
    model_config = bundle_config.with_crop_mode(config.crop_mode)
    taken = set(IMAGE_COLUMNS) | set(INPUT_COLUMNS) | set(OUTPUT_COLUMNS)
    clashes = sorted(taken & (set(ds.schema().names) - {image_column}))
    if clashes:
        raise ConfigError(
            f"the dataset's columns {', '.join(clashes)} clash with what scoring reads or adds; rename or drop them "
            f"(ds.rename_columns / ds.drop_columns) first"
        )
    images = ds if image_column == "data" else ds.rename_columns({image_column: "data"})
    # Pools start with one actor and grow into what the cluster has: the dataset's own read tasks (a CPU each
    # by default) must still find room, or a cluster filled with scoring actors would wait for them forever.
    return run_stages(images, model_stages(config, _cluster_layout(config), model_config, bundle_id, most_actors=1))


def model_stages(
    config: ScoreConfig,
    layout: Layout,
    model: ModelConfig,
    bundle_id: str,
    most_actors: int | None = None,
    write: dict[str, Any] | None = None,
) -> list[Stage]:
    """Decode, detect, crop and score, as `layout` spreads them: one fused stage without GPUs (crops never
    cross the object store), CPU prepare actors feeding GPU scoring actors otherwise. No pool starts with more
    than `most_actors` actors (a few images should not pay for actors that would sit idle); it may grow to its
    max when a tar or parquet unit turns out to hold many blocks. Scoring actors load the config's bundle on
    their own node and refuse it unless it is still `bundle_id` (what `inspect_bundle` found). With `write`
    (`PartWriter`'s arguments) the rows are written as parts and the stages return receipts: by the fused actors
    themselves, or by a pool of writers after the GPU ones (a GPU should not wait on storage)."""
    prepare_args = dict(
        config=model,
        detect_size=config.detect_size,
        min_face_size=config.min_face_size,
        max_pixels=config.max_pixels,
        decode=config.decode,
    )
    score, prepare = layout.score, layout.prepare
    score_args = dict(
        bundle=config.bundle,
        bundle_id=bundle_id,
        precision=config.precision,
        threads=score.threads,
        compile=config.compile,
    )

    def pool(sizes: tuple[int, int]) -> tuple[int, int]:
        low, high = sizes
        return (low if most_actors is None else min(low, most_actors)), high

    if prepare is None:
        fused = dict(
            prepare=prepare_args | dict(threads=score.threads),
            score=score_args,
            batch_size=layout.batch_size,
            write=write,
        )
        # Each block as it comes (the read cut it to `block_rows` at most): a batch size would make Ray bundle
        # small blocks (tars of 20) into one actor's call, and leave the others idle.
        return [Stage("prepare-and-score", PrepareAndScore, fused, None, score.cpus, pool=pool(score.size))]
    writers = [] if write is None else [_write_stage(write, layout)]
    return [
        Stage(
            "prepare",
            Prepare,
            prepare_args | dict(threads=prepare.threads),
            layout.batch_size,
            prepare.cpus,
            pool=pool(prepare.size),
        ),
        Stage("score", Score, score_args, layout.batch_size, score.cpus, score.gpus, pool(score.size)),
        *writers,
    ]


def _bundle_uri(config: ScoreConfig) -> str:
    """The bundle as every worker can name it: a URI as given, a local path made absolute (workers may run
    elsewhere than the driver's directory)."""
    bundle = str(config.bundle or default_bundle_path())
    return bundle if "://" in bundle or bundle.startswith("models:/") else os.path.abspath(bundle)


def _read_stage(config: ScoreConfig, storage: Storage, layout: Layout) -> Stage:
    options = dict(
        image_column=config.image_column,
        key_column=config.key_column,
        max_image_bytes=config.max_image_bytes,
        chunk_size=layout.block_rows,
    )
    return Stage("read", read_shards, dict(storage=storage, **options), batch_size=1, cpus=READ_TASK_CPUS)


def _write_options(config: ScoreConfig, storage: Storage, model: ModelConfig) -> dict[str, Any]:
    return dict(output=config.output, storage=storage, with_liqe=model.aux == "liqe")


def _write_stage(write: dict[str, Any], layout: Layout) -> Stage:
    """Parts of each block's rows, by a pool growing up to one writer per scoring actor; no CPU reserved: a writer
    waits on storage, and must never wait for a core."""
    pool = (1, layout.score.size[1])
    return Stage("write", PartWriter, write, layout.block_rows, cpus=0, pool=pool, batch_format="pyarrow")


def _cluster_layout(config: ScoreConfig) -> Layout:
    resources = ray.cluster_resources()
    node_cpus = min(node["Resources"].get("CPU", 1.0) for node in ray.nodes() if node["Alive"])
    return plan_layout(config, resources.get("CPU", 1.0), resources.get("GPU", 0.0), node_cpus)


def _finished_shards(output: str, storage: Storage) -> set[str]:
    return {posixpath.basename(uri)[: -len(".parquet")] for uri in storage.list_visible(output, "*.parquet")}


def _clear_outputs(output: str, storage: Storage) -> None:
    fs, root = storage.filesystem(output)
    records = [posixpath.join(root, name) for name in (MANIFEST, JOB_RECORD)]
    for path in fs.glob(posixpath.join(root, "*.parquet")) + [p for p in records if fs.exists(p)]:
        fs.rm_file(path)


def _write_manifest(config: ScoreConfig, summary: RunSummary, finished: list[str], storage: Storage) -> None:
    """`_manifest.json`: the run's summary and every shard file the output holds (`finished`). Its retries are
    those of every request before it; its own write's, and the lease's release, come after."""
    document: dict[str, Any] = {
        "input": config.input,
        "output": config.output,
        "model": summary.model,
        "model_trained": summary.model_trained,
        "score_scale": summary.score_scale,
        "config": config.to_dict(),
        "shards": {
            "total": summary.shards_total,
            "skipped_already_done": summary.shards_skipped,
            "written": summary.shards_written,
        },
        "counts_this_run": summary.counts,
        "images_this_run": summary.images,
        "runner": summary.runner,
        "storage_retries": {kind: summary.retries.get(kind, 0) for kind in REQUEST_KINDS},
        "storage_attempts_per_request": storage.attempts,
        "seconds": round(summary.seconds, 3),
        "driver_cpu_seconds": round(summary.driver_cpu_seconds, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "finished_at": datetime.now(UTC).isoformat(),
        "shard_files": [shard_output_uri(config.output, shard) for shard in finished],
    }
    storage.write_atomic(posixpath.join(config.output.rstrip("/"), MANIFEST), json.dumps(document, indent=2).encode())
