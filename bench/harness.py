"""What the throughput benchmarks share: the naive loop, in-process runs of the pipeline's steps, pipeline runs.

- naive loop: what the authors' script does, one image at a time, batch 1, fp32, torch's default threads: decode
  at full resolution with PIL, MTCNN on the full-resolution image, the most confident face grown by the model's
  margin, the five crops of image and face, one `score_images` forward per image, timm 0.6.7's plain window
  attention and PyTorch's own linears. We are generous to it: the authors reload the weights on every call, we
  build the network and MTCNN once.
- in-process run: the pipeline's own steps (`open_preview`, `FaceDetector.detect` on a batch, `finish`,
  `prepare`, `predict`) with the same `Settings`, on image bytes already in memory, in one process with all torch
  threads, or in one process per core with one thread each (the CPU pipeline's layout) started together.
  The best in-process run is the bound: what the pipeline could reach with no Ray overhead at all.
- pipeline run: `pipelines.score.run_scoring` on a local Ray over a folder of the images. A run pays a fixed cost
  (start the actors, ship the model); `pipeline_rates` also runs it on one image to take that cost out.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from PIL import Image

from pipelines.config import ScoreConfig
from pipelines.layout import READ_TASK_CPUS
from pipelines.runtime import HYGIENE_ENV
from pipelines.score import run_scoring
from piqa_model import DualBranchNet, FaceDetector, ModelConfig, predict, prepare, read_bundle
from piqa_model.backbones.swin import use_fused_attention
from piqa_model.crops import crop_views
from piqa_model.decode import open_preview
from piqa_model.faces import face_region
from piqa_model.images import to_uint8_tensor_chw
from piqa_model.onednn import use_onednn_linear

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT_DIR = REPO / "bench" / "out"
MEGAPIXELS = 12_000_000
COPY_MARK = "--copy"  # a pipeline input named <stem>--copy<N><suffix> is a copy of photo <stem><suffix>
FULL_RESOLUTION = 1_000_000
"""A detection preview size no photo reaches: MTCNN runs on the full-resolution image."""


def command_env(checkout: Path = REPO, **more: str) -> dict[str, str]:
    """The environment of a whole command run as a user runs it: this one with the Makefile's network hygiene, no
    RAY_ADDRESS (the command starts its own local Ray or runs in process), `checkout`'s code, and `more`."""
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"} | HYGIENE_ENV
    return env | {"PYTHONPATH": str(checkout)} | more


def write_results(path: Path, document: Any) -> None:
    """A benchmark's results as JSON at `path` (folders made as needed); says where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {path}")


@contextlib.contextmanager
def checkout_of(revision: str, folder: Path) -> Iterator[Path]:
    """This repository at `revision`, checked out at `folder` (a git worktree) while the block runs: a baseline
    measured in the same run. Run its code with `PYTHONPATH` set to the folder."""
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), revision], cwd=REPO, check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=REPO, check=False)


def spread(paths: list[Path], count: int) -> list[Path]:
    """`count` paths evenly spaced over the sorted list (the PIQ23 examples are one per scene)."""
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} images under {paths[0].parent if paths else DATA}, asked for {count}")
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def upscaled(path: Path, folder: Path) -> Path:
    """A 12 MP JPEG (quality 92) of `path`, same aspect ratio, made once. Upscaled photos are smoother than
    camera photos, so their full decodes are if anything cheaper than a real 12 MP photo's."""
    target = folder / f"{path.stem}-12mp.jpg"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("RGB")
        factor = math.sqrt(MEGAPIXELS / (image.width * image.height))
        size = (round(image.width * factor), round(image.height * factor))
        image.resize(size, Image.Resampling.BICUBIC).save(target, "JPEG", quality=92)
    return target


@dataclass(frozen=True)
class Settings:
    """The pipeline flags that change the work per image; in-process runs mirror them."""

    decode: str = "draft"
    detect_size: int = 640
    min_face_size: int = 20
    precision: str = "fp32"
    batch_size: int = 1
    crop_mode: str | None = None  # None: the bundle's own
    processes: int = 0  # 0: one process with all torch threads; N: N processes with one thread each
    shard_size: int = 16  # pipeline runs: images per virtual shard of the input folder
    bundle: str | None = None  # pipeline runs: None, the default bundle

    def label(self) -> str:
        layout = "1 proc x all threads" if self.processes == 0 else f"{self.processes} procs x 1 thread"
        detect = "full-res" if self.detect_size >= FULL_RESOLUTION else str(self.detect_size)
        return (
            f"decode {self.decode}, detect {detect}/{self.min_face_size}, {self.precision}, "
            f"batch {self.batch_size}, {layout}"
        )

    def score_config(self, source: Path, output: Path, node_cpus: float) -> ScoreConfig:
        """The pipeline's configuration for these settings; `processes` N maps to N one-thread actors."""
        cpus_per_actor = None
        if self.processes == 0:
            cpus_per_actor = node_cpus - READ_TASK_CPUS
        return ScoreConfig(
            input=str(source),
            output=str(output),
            shard_size=self.shard_size,
            overwrite=True,
            batch_size=self.batch_size,
            decode=self.decode,  # type: ignore[arg-type]
            detect_size=self.detect_size,
            min_face_size=self.min_face_size,
            precision=self.precision,  # type: ignore[arg-type]
            crop_mode=self.crop_mode,  # type: ignore[arg-type]
            cpus_per_actor=cpus_per_actor,
            bundle=self.bundle,
        )


@dataclass
class StageTimes:
    """Seconds spent per step, summed over all images (and processes)."""

    decode: float = 0.0
    detect: float = 0.0
    prepare: float = 0.0
    predict: float = 0.0

    def add(self, other: StageTimes) -> None:
        for name, seconds in asdict(other).items():
            setattr(self, name, getattr(self, name) + seconds)

    def per_image_ms(self, images: int) -> dict[str, float]:
        return {name: round(1000 * seconds / images, 2) for name, seconds in asdict(self).items()}


@dataclass
class Timed:
    """A timed run over some images."""

    name: str
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
        }


@dataclass
class LoopResult(Timed):
    """One in-process run over all images (the naive loop, or the pipeline's steps with some settings)."""

    settings: Settings | None = None
    stages: StageTimes = field(default_factory=StageTimes)
    scores: dict[str, float] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {
            "settings": asdict(self.settings) if self.settings else None,
            "stage_ms_per_image": self.stages.per_image_ms(self.images),
        }


@dataclass
class PipelineRates:
    """A pipeline run over all images, and the fixed cost of a run (a run over one image)."""

    name: str
    settings: Settings
    images: int
    seconds: float
    one_image_seconds: float
    counts: dict[str, int]
    scores: dict[str, float] = field(repr=False)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def steady_images_per_second(self) -> float | None:
        """The rate with the run's fixed cost removed: what a long job approaches (None: too few images to tell)."""
        if self.seconds <= self.one_image_seconds * 1.1:
            return None
        return (self.images - 1) / (self.seconds - self.one_image_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": asdict(self.settings),
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "one_image_seconds": round(self.one_image_seconds, 3),
            "steady_images_per_second": self.steady_images_per_second,
            "counts": self.counts,
        }


def naive_loop(paths: list[Path], net: DualBranchNet, config: ModelConfig) -> LoopResult:
    """The authors' way (see the module docstring); `net` is left as it was."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True)
    net = copy.deepcopy(net)
    use_fused_attention(net, enabled=False)
    use_onednn_linear(net, enabled=False)

    def one(path: Path, stages: StageTimes) -> float:
        t0 = time.perf_counter()
        image = Image.open(path).convert("RGB")
        t1 = time.perf_counter()
        boxes, probs = mtcnn.detect(image)
        t2 = time.perf_counter()
        box = None
        if boxes is not None and probs is not None and len(boxes):
            box = tuple(float(v) for v in boxes[int(probs.argmax())])
        face = image.crop(face_region(box, image.width, image.height, config.face_margin))  # type: ignore[arg-type]
        overall_crops, face_crops = crop_views(image, config)[None], crop_views(face, config)[None]
        t3 = time.perf_counter()
        aux = net.aux_features(to_uint8_tensor_chw(image)[None]) if net.uses_aux else None
        score = float(net.score_images(overall_crops, face_crops, aux)[0])
        t4 = time.perf_counter()
        stages.add(StageTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        return score

    stages, scores = StageTimes(), {}
    with torch.no_grad():
        one(paths[0], StageTimes())  # warm-up, not timed
        started = time.perf_counter()
        for path in paths:
            scores[path.name] = one(path, stages)
        seconds = time.perf_counter() - started
    return LoopResult("naive loop", len(paths), seconds, stages=stages, scores=scores)


def _steps(
    blobs: list[tuple[str, bytes]], net: DualBranchNet, settings: Settings, detector: FaceDetector, stages: StageTimes
) -> dict[str, float]:
    """The pipeline's steps over `blobs` in batches of `settings.batch_size`; adds to `stages`."""
    config = net.config.with_crop_mode(settings.crop_mode)
    scores = {}
    for start in range(0, len(blobs), settings.batch_size):
        chunk = blobs[start : start + settings.batch_size]
        t0 = time.perf_counter()
        previews = [open_preview(data, config, settings.detect_size, mode=settings.decode) for _, data in chunk]
        t1 = time.perf_counter()
        detections = detector.detect([preview.image for preview in previews])
        t2 = time.perf_counter()
        images = [preview.finish(detection) for preview, detection in zip(previews, detections, strict=True)]
        t3 = time.perf_counter()
        prepared = [prepare(item.image, item.detection, config, item.original_size) for item in images]
        t4 = time.perf_counter()
        batch_scores, _ = predict(net, prepared, settings.precision)  # type: ignore[arg-type]
        t5 = time.perf_counter()
        stages.add(StageTimes((t1 - t0) + (t3 - t2), t2 - t1, t4 - t3, t5 - t4))
        scores.update({name: float(s) for (name, _), s in zip(chunk, batch_scores, strict=True)})
    return scores


def _timed_steps(
    blobs: list[tuple[str, bytes]], net: DualBranchNet, settings: Settings, ready: Any = None, go: Any = None
) -> tuple[float, float, StageTimes, dict[str, float]]:
    """Warm up on one batch, then (after `ready.put` and `go.wait`, when given) time the steps over `blobs`:
    (start, end, stage times, scores)."""
    detector = FaceDetector(settings.detect_size, settings.min_face_size)
    _steps(blobs[: settings.batch_size], net, settings, detector, StageTimes())
    if ready is not None:
        ready.put(True)
        go.wait()
    stages = StageTimes()
    started = time.perf_counter()
    scores = _steps(blobs, net, settings, detector, stages)
    return started, time.perf_counter(), stages, scores


def _worker(bundle: str, blobs: list, settings: Settings, ready: Any, go: Any, results: Any) -> None:
    torch.set_num_threads(1)
    net, _, _ = read_bundle(bundle)
    results.put(_timed_steps(blobs, net, settings, ready, go))


def in_process(blobs: list[tuple[str, bytes]], bundle: Path, net: DualBranchNet, settings: Settings) -> LoopResult:
    """The pipeline's steps with `settings`, without Ray (see the module docstring)."""
    name = f"in-process: {settings.label()}"
    if settings.processes == 0:
        started, ended, stages, scores = _timed_steps(blobs, net, settings)
        return LoopResult(name, len(blobs), ended - started, settings, stages, scores)
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    shares = [blobs[i :: settings.processes] for i in range(settings.processes)]
    workers = [
        context.Process(target=_worker, args=(str(bundle), share, settings, ready, go, results)) for share in shares
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=600)
    go.set()
    outcomes = [results.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join()
    stages, scores = StageTimes(), {}
    for _, _, worker_stages, worker_scores in outcomes:
        stages.add(worker_stages)
        scores.update(worker_scores)
    seconds = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    return LoopResult(name, len(blobs), seconds, settings, stages, scores)


def pipeline_rates(name: str, settings: Settings, inputs: Path, one_input: Path, workdir: Path) -> PipelineRates:
    """`run_scoring` over `inputs` and over `one_input` (one image) with `settings`; Ray must be up."""
    import ray

    node_cpus = min(node["Resources"].get("CPU", 1.0) for node in ray.nodes() if node["Alive"])
    started = time.perf_counter()
    run_scoring(settings.score_config(one_input, workdir / "scores-one", node_cpus))
    one_image = time.perf_counter() - started
    output = workdir / "scores"
    started = time.perf_counter()
    summary = run_scoring(settings.score_config(inputs, output, node_cpus))
    seconds = time.perf_counter() - started
    return PipelineRates(name, settings, summary.images, seconds, one_image, dict(summary.counts), read_scores(output))


def read_scores(output: Path) -> dict[str, float]:
    scores = {}
    for path in sorted(output.glob("*.parquet")):
        for row in pq.read_table(path, columns=["key", "score"]).to_pylist():
            scores[re.sub(rf"{COPY_MARK}\d+(?=\.[^.]+$)", "", Path(row["key"]).name)] = row["score"]
    return scores


def max_abs_diff(a: dict[str, float], b: dict[str, float]) -> float | None:
    common = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    return max((abs(a[k] - b[k]) for k in common), default=None)


def with_processes(settings: Settings, processes: int) -> Settings:
    return replace(settings, processes=processes)
