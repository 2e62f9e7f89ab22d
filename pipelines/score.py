"""The scoring job: shards from object storage -> Ray Data (read, prepare, score) -> Parquet per shard."""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import ray
from ray.data import ActorPoolStrategy

from pipelines.config import ScoreConfig
from pipelines.layout import READ_TASK_CPUS, plan_layout
from pipelines.readers import read_shards, read_units
from pipelines.resume import JOB_RECORD, JobRecord, continue_job
from pipelines.runtime import ensure_ray
from pipelines.shards import Shard, list_shards
from pipelines.stages import Prepare, PrepareAndScore, Score
from pipelines.storage import Storage
from pipelines.writer import ShardCommitter, shard_output_uri
from piqa_model import ModelConfig
from piqa_model.bundle import (
    bundle_files,
    default_bundle_path,
    read_bundle_files,
    warn_if_untrained,
)
from piqa_model.calibration import describe_scale

MANIFEST = "_manifest.json"


class IncompleteRunError(RuntimeError):
    """The dataset ended with shards still missing rows (should never happen; rerun to resume)."""


@dataclass
class RunSummary:
    output: str
    model: str
    model_trained: bool
    score_scale: str
    shards_total: int
    shards_skipped: int
    shards_written: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

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
            f"{self.shards_skipped} already done; output: {self.output}"
        )


def run_scoring(config: ScoreConfig) -> RunSummary:
    """Score every unfinished shard of `config.input` into `config.output`; see the package docs.

    Fails before any work (StorageError, WeightsError) on a missing input, an unwritable output or
    an unreadable bundle, and (OutputMismatchError) on an output that holds another job's rows.
    """
    started = time.time()
    storage = Storage.from_environment(config.s3_endpoint)
    shards = list_shards(config.input, storage, config.shard_size)
    storage.check_writable(config.output)
    files = bundle_files(config.bundle or default_bundle_path())
    net, info, bundle_id = read_bundle_files(files)
    net.check_self_contained()
    warn_if_untrained(info)
    model_config = net.config.with_crop_mode(config.crop_mode)
    if config.overwrite:
        _clear_outputs(config.output, storage)
    done = _finished_shards(config.output, storage)
    continue_job(config.output, storage, JobRecord.describe(config, shards, bundle_id, model_config), done)
    todo = [shard for shard in shards if shard.shard_id not in done]

    committer = ShardCommitter(config.output, storage, with_liqe=model_config.aux == "liqe")
    if todo:
        ensure_ray()
        for batch in _build_dataset(todo, config, storage, model_config, files).iter_batches(
            batch_format="pyarrow", batch_size=None
        ):
            committer.add(batch)
        if committer.pending:
            raise IncompleteRunError(f"shards left incomplete: {sorted(committer.pending)[:5]}; rerun to resume")
    summary = RunSummary(
        output=config.output,
        model=bundle_id,
        model_trained=info.trained,
        score_scale=describe_scale(info.scale),
        shards_total=len(shards),
        shards_skipped=len(shards) - len(todo),
        shards_written=len(committer.committed),
        counts=dict(committer.counts),
        seconds=time.time() - started,
    )
    _write_manifest(config, summary, storage)
    return summary


def _build_dataset(
    shards: list[Shard], config: ScoreConfig, storage: Storage, model_config: ModelConfig, files: dict
) -> ray.data.Dataset:
    resources = ray.cluster_resources()
    node_cpus = min(node["Resources"].get("CPU", 1.0) for node in ray.nodes() if node["Alive"])
    layout = plan_layout(config, resources.get("CPU", 1.0), resources.get("GPU", 0.0), node_cpus)
    units = read_units(shards, layout.block_rows)
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(
        read_shards,
        batch_size=1,
        batch_format="numpy",
        num_cpus=READ_TASK_CPUS,
        fn_kwargs=dict(
            storage=storage,
            image_column=config.image_column,
            key_column=config.key_column,
            chunk_size=layout.block_rows,
        ),
    )
    prepare_args = dict(
        config=model_config,
        detect_size=config.detect_size,
        min_face_size=config.min_face_size,
        max_pixels=config.max_pixels,
        decode=config.decode,
    )
    score, prepare = layout.score, layout.prepare
    score_args = dict(bundle_files=files, precision=config.precision, threads=score.threads, compile=config.compile)
    options = dict(batch_size=layout.batch_size, batch_format="numpy")
    if prepare is None:
        return ds.map_batches(
            PrepareAndScore,
            fn_constructor_kwargs=dict(prepare=prepare_args | dict(threads=score.threads), score=score_args),
            compute=_pool(score.size, len(units)),
            num_cpus=score.cpus,
            **options,
        )
    ds = ds.map_batches(
        Prepare,
        fn_constructor_kwargs=prepare_args | dict(threads=prepare.threads),
        compute=_pool(prepare.size, len(units)),
        num_cpus=prepare.cpus,
        **options,
    )
    return ds.map_batches(
        Score,
        fn_constructor_kwargs=score_args,
        compute=_pool(score.size, len(units)),
        num_cpus=score.cpus,
        num_gpus=score.gpus,
        **options,
    )


def _pool(sizes: tuple[int, int], units: int) -> ActorPoolStrategy:
    """A pool that starts no more actors than there are read units (a few images should not pay for actors
    that would sit idle); it may grow to its max when a tar or parquet unit turns out to hold many blocks."""
    low, high = sizes
    return ActorPoolStrategy(min_size=min(low, units), max_size=high)


def _finished_shards(output: str, storage: Storage) -> set[str]:
    return {posixpath.basename(uri)[: -len(".parquet")] for uri in storage.list_visible(output, "*.parquet")}


def _clear_outputs(output: str, storage: Storage) -> None:
    fs, root = storage.filesystem(output)
    records = [posixpath.join(root, name) for name in (MANIFEST, JOB_RECORD)]
    for path in fs.glob(posixpath.join(root, "*.parquet")) + [p for p in records if fs.exists(p)]:
        fs.rm_file(path)


def _write_manifest(config: ScoreConfig, summary: RunSummary, storage: Storage) -> None:
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
        "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "finished_at": datetime.now(UTC).isoformat(),
        "shard_files": [shard_output_uri(config.output, s) for s in sorted(_finished_shards(config.output, storage))],
    }
    storage.write_atomic(posixpath.join(config.output.rstrip("/"), MANIFEST), json.dumps(document, indent=2).encode())
