"""Scoring throughput: the Ray pipeline against the naive loop and the in-process bound, step by step.

    .venv/bin/python bench/pipeline_throughput.py                       # every set, the ladder; ~15 min, 2 cores
    .venv/bin/python bench/pipeline_throughput.py --sets mixed          # issue 3's 200 portraits only; ~4 min
    .venv/bin/python bench/pipeline_throughput.py --sets london --images 6 --no-ladder   # does it work? ~1 min

What each way does is described in `bench/harness.py`: the naive loop (the authors' script, generously), in-process
runs of the pipeline's own steps (no Ray; the best one is the bound), and pipeline runs (`run_scoring` on a local
Ray over a folder of the images, shards of 16 or `--shard-size`). A pipeline run pays ~5 s to start its actors
(two processes importing torch at once on two cores), so pipeline runs read each photo of a small set several
times under other names (`--pipeline-images`, 192 by default, or `--copies`), as a job reads many photos; the naive
and in-process runs read each photo once.

Sets (`--sets`, comma-separated): `mixed`: 200 real portraits (the 102 London Set photos at 1350x1350 and 98
Congress headshots at 225x275); `london`: London Set photos; `piq23`: the PIQ23 example photos (~2.4 MP);
`12mp`: London and PIQ23 photos upscaled to 12 MP JPEGs (made once under bench/out/12mp). `--images` caps the
ladder sets (default 48, 12 for `12mp`, whose plain steps take seconds per photo).

For every set: the naive loop; the ladder (`--no-ladder` skips it), the pipeline's optimisations switched on one
at a time, each run in-process (per-stage cost, ms per image summed over processes) and as a pipeline; the bound
(the best in-process run of the pipeline's defaults over `--bound-batch-sizes` and both layouts); the pipeline
with its defaults (plus any flags given here). A pipeline's rate is printed as measured (`run`: images over the
time from calling `run_scoring` to its return, Ray already up) and with the run's fixed cost removed (`steady`:
the images after the first over the time a run over one image does not explain; what a long job approaches).

The ladder, cumulative: plain (full decode, MTCNN at full resolution, fp32, batch 1, one actor using every core)
-> detection on a 640-px preview -> draft (DCT-scaled) decoding -> one single-threaded actor per core (these
three are the defaults, with batch 1) -> `--precision bf16` (an optional flag); also shown: batches of 4. The
model is the default bundle. Targets: on `mixed` (issue 3), pipeline >= 2x the naive loop and >= 0.8x the
one-process bound (issue 3's in-process bound: the pipeline's steps in one process, best batch size; the 2-process
bound is stricter and only printed); on the other sets, >= 3x the naive loop (issue 7). Prints tables and writes
`--out` (JSON).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
import torch
from harness import (
    COPY_MARK,
    DATA,
    FULL_RESOLUTION,
    OUT_DIR,
    LoopResult,
    PipelineRates,
    Settings,
    in_process,
    max_abs_diff,
    naive_loop,
    pipeline_rates,
    spread,
    upscaled,
    write_results,
)
from PIL import Image

from pipelines.layout import CPU_BATCH
from pipelines.runtime import apply_local_hygiene, ensure_ray
from piqa_model import read_bundle
from piqa_model.bundle import UntrainedModelWarning, default_bundle_path
from piqa_model.calibration import ScoreScale

TARGETS = {
    "mixed: pipeline / naive": 2.0,
    "mixed: pipeline / one-process bound": 0.8,
    "other sets: pipeline / naive": 3.0,
}
PIPELINE_IMAGES = 192  # a pipeline run's images at least: a run's fixed cost (~5 s) is a job's, not an image's

# Before Ray or any client library starts: loopback only, no telemetry. The model cache stays inside bench/out.
apply_local_hygiene()
os.environ.setdefault("PIQA_CACHE_DIR", str(OUT_DIR / "cache"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="mixed,london,piq23,12mp", help="comma-separated: mixed,london,piq23,12mp")
    parser.add_argument("--images", type=int, help="images per ladder set (default 48; 12 for 12mp)")
    parser.add_argument(
        "--pipeline-images",
        type=int,
        default=PIPELINE_IMAGES,
        help=f"pipeline runs: at least this many images, photos read repeatedly (default {PIPELINE_IMAGES})",
    )
    parser.add_argument("--copies", type=int, help="pipeline runs: copies of each photo (overrides --pipeline-images)")
    parser.add_argument(
        "--shard-size", type=int, default=Settings.shard_size, help="pipeline runs: images per input shard"
    )
    parser.add_argument("--no-ladder", dest="ladder", action="store_false", help="skip the step-by-step runs")
    parser.add_argument("--bound-batch-sizes", default="1,4", help="in-process batch sizes for the bound")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the pipeline's (and bound's)")
    parser.add_argument(
        "--batch-size", type=int, default=CPU_BATCH, help=f"the pipeline's batch size (default {CPU_BATCH})"
    )
    parser.add_argument("--min-face-size", type=int, default=20)
    parser.add_argument("--crop-mode", choices=("five", "center"), help="default: the bundle's own")
    parser.add_argument("--bundle", help="model bundle (default: the shipped default bundle)")
    parser.add_argument("--workdir", default=None, help="where the temporary input/output folders go")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "pipeline_throughput.json")
    args = parser.parse_args()
    args.sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = set(args.sets) - {"mixed", "london", "piq23", "12mp"}
    if unknown or not args.sets:
        parser.error(f"unknown set(s) {sorted(unknown)}; choose from mixed, london, piq23, 12mp")
    try:
        args.bound_batch_sizes = sorted({int(v) for v in args.bound_batch_sizes.split(",") if v.strip()})
    except ValueError:
        parser.error("--bound-batch-sizes takes comma-separated integers, e.g. 1,4")
    if not args.bound_batch_sizes or min(args.bound_batch_sizes) < 1 or args.batch_size < 1:
        parser.error("batch sizes must be at least 1")
    if args.images is not None and args.images < 2:
        parser.error("--images must be at least 2")
    return args


def photos(name: str, count: int | None) -> list[Path]:
    london = sorted((DATA / "portraits" / "london").glob("*.jpg"))
    piq23 = sorted(p for p in (DATA / "piq23" / "examples").iterdir() if p.suffix.lower() == ".jpg")
    if name == "mixed":
        return london + sorted((DATA / "portraits" / "congress").glob("*.jpg"))[: 200 - len(london)]
    if name == "london":
        return spread(london, min(count or 48, len(london)))
    if name == "piq23":
        return spread(piq23, min(count or 48, len(piq23)))
    half = (count or 12) // 2
    folder = OUT_DIR / "12mp"
    return [upscaled(p, folder) for p in spread(london, half) + spread(piq23, (count or 12) - half)]


def ladder(defaults: Settings, cpus: int) -> list[tuple[str, Settings]]:
    plain = replace(defaults, decode="full", detect_size=FULL_RESOLUTION, precision="fp32", batch_size=1, processes=0)
    preview = replace(plain, detect_size=defaults.detect_size)
    draft = replace(preview, decode="draft")
    per_core = replace(draft, processes=cpus, batch_size=CPU_BATCH)
    return [
        ("plain", plain),
        ("+ detect on a 640-px preview", preview),
        ("+ draft decode", draft),
        ("+ 1-thread actor/core (default)", per_core),
        ("  (batches of 4 instead)", replace(per_core, batch_size=4)),
        ("+ bf16 (--precision bf16)", replace(per_core, precision="bf16")),
    ]


class SetRun:
    """Everything measured on one set of photos."""

    def __init__(self, name: str, paths: list[Path], workdir: Path, bundle: Path, copies: int) -> None:
        self.name, self.paths, self.bundle, self.copies = name, paths, bundle, copies
        self.workdir = workdir / name
        self.photos = self.workdir / "photos"
        self.inputs, self.one_input = self.workdir / "pipeline-input", self.workdir / "one-image"
        for folder in (self.photos, self.inputs, self.one_input):
            folder.mkdir(parents=True)
        for path in paths:
            shutil.copy2(path, self.photos / path.name)
            for copy in range(copies):
                shutil.copy2(path, self.inputs / f"{path.stem}{COPY_MARK}{copy}{path.suffix}")
        shutil.copy2(paths[0], self.one_input / paths[0].name)
        self.blobs = [(p.name, (self.photos / p.name).read_bytes()) for p in paths]
        self.in_process_runs: dict[Settings, LoopResult] = {}
        self.rows: list[dict[str, Any]] = []

    def size_note(self) -> str:
        sizes: dict[str, int] = {}
        for path in self.paths:
            width, height = Image.open(path).size
            sizes[f"{width}x{height}"] = sizes.get(f"{width}x{height}", 0) + 1
        return ", ".join(f"{n} x {s}" for s, n in sorted(sizes.items(), key=lambda item: -item[1]))

    def in_process(self, settings: Settings, net) -> LoopResult:
        if settings not in self.in_process_runs:
            self.in_process_runs[settings] = in_process(self.blobs, self.bundle, net, settings)
        return self.in_process_runs[settings]

    def pipeline(self, name: str, settings: Settings) -> PipelineRates:
        return pipeline_rates(name, settings, self.inputs, self.one_input, self.workdir / "run")


def print_row(name: str, loop: LoopResult | None, pipeline: PipelineRates | None) -> None:
    cells = f"{name:34}"
    if loop is not None:
        ms = loop.stages.per_image_ms(loop.images)
        cells += f"{loop.images_per_second:8.2f}  {ms['decode']:7.1f}{ms['detect']:7.1f}{ms['prepare']:7.1f}"
        cells += f"{ms['predict']:8.1f}"
    else:
        cells += " " * 39
    if pipeline is not None:
        steady = pipeline.steady_images_per_second
        cells += f"{pipeline.images_per_second:10.2f}" + (f"{steady:8.2f}" if steady else f"{'-':>8}")
    print(cells, flush=True)


def measure_set(
    run: SetRun,
    net,
    scale: ScoreScale | None,
    defaults: Settings,
    cpus: int,
    ladder_steps: bool,
    bound_batch_sizes: list[int],
) -> dict[str, Any]:
    copies = f"; pipeline runs: each photo {run.copies} times" if run.copies > 1 else ""
    print(f"\n== {run.name}: {len(run.paths)} photos ({run.size_note()}){copies}", flush=True)
    print(f"{'':34}{'in-process':>8}  {'ms/image: decode detect prepare predict':39} {'pipeline: run':>13} steady")
    config = net.config.with_crop_mode(defaults.crop_mode)
    naive = naive_loop([run.photos / p.name for p in run.paths], net, config)
    print_row("naive loop", naive, None)
    document: dict[str, Any] = {"set": run.name, "photos": run.size_note(), "naive": naive.to_dict(), "ladder": []}
    if ladder_steps:
        for name, settings in ladder(defaults, cpus):
            loop, pipeline = run.in_process(settings, net), run.pipeline(name, settings)
            print_row(name, loop, pipeline)
            document["ladder"].append({"step": name, "in_process": loop.to_dict(), "pipeline": pipeline.to_dict()})
    candidates = [replace(defaults, batch_size=b, processes=p) for b in bound_batch_sizes for p in (0, cpus)]
    bound = max((run.in_process(s, net) for s in candidates), key=lambda r: r.images_per_second)
    one_process = max(
        (run.in_process(s, net) for s in candidates if s.processes == 0), key=lambda r: r.images_per_second
    )
    print_row(f"one-process bound: batch {one_process.settings.batch_size}", one_process, None)
    print_row(f"bound: batch {bound.settings.batch_size}, {bound.settings.processes or 1} proc", bound, None)
    pipeline = run.pipeline("pipeline", defaults)
    print_row("pipeline (these settings)", run.in_process(defaults, net), pipeline)
    steady = pipeline.steady_images_per_second or float("nan")
    ratios = {
        "run_over_naive": pipeline.images_per_second / naive.images_per_second,
        "steady_over_naive": steady / naive.images_per_second,
        "run_over_bound": pipeline.images_per_second / bound.images_per_second,
        "steady_over_bound": steady / bound.images_per_second,
        "bound_over_naive": bound.images_per_second / naive.images_per_second,
        "run_over_one_process_bound": pipeline.images_per_second / one_process.images_per_second,
        "steady_over_one_process_bound": steady / one_process.images_per_second,
    }
    print(
        "pipeline / naive: run {run_over_naive:.2f}x, steady {steady_over_naive:.2f}x;  pipeline / bound: run "
        "{run_over_bound:.2f}x, steady {steady_over_bound:.2f}x;  bound / naive {bound_over_naive:.2f}x".format(
            **ratios
        )
    )
    print(
        "pipeline / one-process bound (issue 3's bound): run {run_over_one_process_bound:.2f}x, "
        "steady {steady_over_one_process_bound:.2f}x".format(**ratios)
    )
    raw = run.in_process(defaults, net).scores  # the network's outputs; the pipeline writes them on the bundle's scale
    diff = max_abs_diff(pipeline.scores, raw if scale is None else {k: float(scale.apply(v)) for k, v in raw.items()})
    print(f"same work: max |pipeline - in-process| score {diff:.1e} (same settings)")
    if pipeline.counts.get("ok", 0) != len(run.paths) * run.copies:
        raise SystemExit(f"{run.name}: expected {len(run.paths) * run.copies} ok rows, got {pipeline.counts}")
    return document | {
        "bound": bound.to_dict(),
        "one_process_bound": one_process.to_dict(),
        "pipeline": pipeline.to_dict(),
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "pipeline_vs_in_process_max_abs_score_diff": diff,
    }


def main() -> None:
    args = parse_args()
    warnings.simplefilter("ignore", UntrainedModelWarning)
    bundle = args.bundle or default_bundle_path()
    net, info, bundle_id = read_bundle(bundle)
    cpus = os.cpu_count() or 1
    defaults = Settings(
        precision=args.precision,
        batch_size=args.batch_size,
        min_face_size=args.min_face_size,
        crop_mode=args.crop_mode,
        processes=cpus,
        shard_size=args.shard_size,
        bundle=str(bundle),
    )
    print(f"model {bundle_id} ({net.config.name}, {'trained' if info.trained else 'untrained'}); {cpus} CPUs; ")
    print(
        f"pipeline settings: {defaults.label()}, crop mode {net.config.with_crop_mode(args.crop_mode).crop_mode}",
        flush=True,
    )
    started = time.perf_counter()
    ensure_ray()
    ray_start = time.perf_counter() - started
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="piqa-throughput-", dir=args.workdir))
    results = []
    try:
        for name in args.sets:
            paths = photos(name, args.images)
            copies = args.copies or math.ceil(args.pipeline_images / len(paths))
            run = SetRun(name, paths, workdir, bundle, copies)
            ladder_steps = args.ladder and name != "mixed"  # mixed: issue 3's headline set, no ladder
            results.append(measure_set(run, net, info.scale, defaults, cpus, ladder_steps, args.bound_batch_sizes))
        cluster = ray.cluster_resources()
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nRay start (excluded above): {ray_start:.1f} s")
    verdicts = {}
    for result in results:
        ratios, name = result["ratios"], result["set"]
        checks = (
            [
                ("pipeline >= 2x naive", "over_naive", 2.0),
                ("pipeline >= 0.8x one-process bound", "over_one_process_bound", 0.8),
            ]
            if name == "mixed"
            else [("pipeline >= 3x naive", "over_naive", 3.0)]
        )
        for label, ratio, target in checks:
            for rate in ("run", "steady"):
                verdicts[f"{name}: {label} ({rate})"] = ratios[f"{rate}_{ratio}"] >= target
    for name, passed in verdicts.items():
        print(f"{name:52} {'PASS' if passed else 'FAIL'}")
    document = {
        "benchmark": "pipeline_throughput",
        "finished_at": datetime.now(UTC).isoformat(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": cpus,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "ray_cluster_resources": cluster,
            "ray_start_seconds": round(ray_start, 3),
        },
        "model": {"bundle": str(bundle), "id": bundle_id, "trained": info.trained, "preset": net.config.name},
        "pipeline_settings": asdict(defaults),
        "sets": results,
        "targets": TARGETS,
        "verdicts": verdicts,
    }
    write_results(args.out, document)


if __name__ == "__main__":
    main()
