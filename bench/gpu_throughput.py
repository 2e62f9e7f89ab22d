"""GPU scoring throughput of the full `dn-piqa` preset: images/s per GPU, GPU busy share, time spent waiting for input.

    bash bench/gpu.sh                                                  # on a GPU machine, under 8 minutes
    .venv/bin/python bench/gpu_throughput.py --device cpu --preset small --seconds 5 --photos 8 --batch-size 2
                                                                       # does the script work? (CPU, a minute)

Random weights (speed only), bf16 autocast, five-crop then centre-crop (`--compile`: torch.compile too). For each
crop mode:

1. model only: batches of prepared uint8 inputs already in pinned host memory, copied to the GPU and scored, back
   to back: the GPU's ceiling for the preset.
2. fed by CPU workers: `--workers` processes (one torch thread each) run the pipeline's own prepare step (decode,
   MTCNN on a 640-px preview, crops, LIQE patches: `piqa_model`'s functions, as the pipeline's Prepare actors do)
   on photos held in memory and hand batches over shared memory to the scoring loop, as the Prepare actors hand
   theirs to a Score actor through Ray's object store. Reported: images/s, the share of wall time the GPU was busy
   (CUDA events around each batch's copy and forward), the share the scoring loop waited for a batch, and the mean
   GPU utilisation that NVML reports (when nvidia-ml-py is installed).

Also printed first: the prepare step's CPU cost per photo on one core (decode, detection, crops and LIQE patches),
which says how many CPU cores one GPU needs. Photos: `--photos` ~2.4 MP JPEGs (1800x1350, quality 90) cut from the
repository's sample portraits (randomly cropped, flipped and rescaled, so every one decodes and detects afresh),
cycled for `--seconds` per measurement.
Targets (issue 7, one H100): >= 150 images/s five-crop, >= 600 centre-crop, GPU busy >= 85 % of the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from PIL import Image, ImageOps

from piqa_model import DualBranchNet, FaceDetector, PreparedImage, predict, prepare, preset
from piqa_model.decode import open_preview
from piqa_model.flow import ImageFlow

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"five": 150.0, "center": 600.0, "busy": 0.85}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="dn-piqa")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="CPU prepare workers")
    parser.add_argument("--photos", type=int, default=96, help="distinct photos to cycle through")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each measurement")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also torch.compile the model (the pipeline's --compile): ceiling again, then fed",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu_throughput.json")
    return parser.parse_args()


def make_photos(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct ~2.4 MP JPEGs cut from the sample portraits."""
    sources = []
    for path in sorted((REPO / "samples" / "portraits").glob("*.jpg")):
        try:
            sources.append(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        except OSError:  # the samples include broken files on purpose
            continue
    rng = random.Random(seed)
    photos = []
    for index in range(count):
        image = sources[index % len(sources)]
        scale = max(1800 / image.width, 1350 / image.height) * rng.uniform(1.0, 1.3)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = rng.randint(0, image.width - 1800), rng.randint(0, image.height - 1350)
        image = image.crop((left, top, left + 1800, top + 1350))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def prepare_worker(config, photos: list[bytes], batch_size: int, first: int, step: int, out, stop) -> None:
    """Prepare batches of photos (this worker's share, cycled) until told to stop."""
    torch.set_num_threads(1)
    flow = ImageFlow(config, FaceDetector())
    index = first
    while not stop.is_set():
        chunk = [photos[(index + k * step) % len(photos)] for k in range(batch_size)]
        index += batch_size * step
        batch = [inputs for _, inputs in flow.prepare(chunk) if inputs is not None]
        while not stop.is_set():
            try:
                out.put(batch, timeout=0.5)
                break
            except queue.Full:
                continue


class UtilisationSampler:
    """Mean GPU utilisation (NVML, every 100 ms) while running; None without nvidia-ml-py or a GPU."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
        except Exception:
            self._read = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self._read is not None and not self._stop.wait(0.1):
            self.samples.append(int(self._read()))

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


class Timer:
    """Busy time of the device: CUDA events on a GPU, the wall clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pairs: list[tuple[Any, Any]] = []
        self.cpu_seconds = 0.0

    def run(self, work) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            self.pairs.append((start, end))
        else:
            started = time.perf_counter()
            work()
            self.cpu_seconds += time.perf_counter() - started

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1000
        return self.cpu_seconds


def score(net: DualBranchNet, batch: list[PreparedImage], precision: str) -> None:
    predict(net, batch, precision)  # type: ignore[arg-type]


def pinned(item: PreparedImage) -> PreparedImage:
    """`item` in pinned host memory (`predict` then copies it as it is)."""
    patches = None if item.liqe_patches is None else item.liqe_patches.pin_memory()
    return dataclasses.replace(
        item, overall_view=item.overall_view.pin_memory(), face_view=item.face_view.pin_memory(), liqe_patches=patches
    )


def model_only(net: DualBranchNet, batch, args: argparse.Namespace) -> dict[str, float]:
    device = net.device
    ready = [pinned(item) for item in batch] if device.type == "cuda" else batch
    for _ in range(3):
        score(net, ready, args.precision)
    timer, images, started = Timer(device), 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds / 2:
        timer.run(lambda: score(net, ready, args.precision))
        images += len(batch)
    wall = time.perf_counter() - started
    return {"images_per_second": images / wall, "busy_share": timer.seconds() / wall}


def fed(net: DualBranchNet, config, photos: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    context = mp.get_context("spawn")
    batches, stop = context.Queue(maxsize=2 * args.workers), context.Event()
    workers = [
        context.Process(
            target=prepare_worker, args=(config, photos, args.batch_size, i, args.workers, batches, stop), daemon=True
        )
        for i in range(args.workers)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in range(2):  # warm-up: the workers' first batches and the network's first shapes
            score(net, batches.get(timeout=600), args.precision)
        timer, images, waited = Timer(net.device), 0, 0.0
        with UtilisationSampler() as sampler:
            started = time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                asked = time.perf_counter()
                batch = batches.get(timeout=600)
                waited += time.perf_counter() - asked
                timer.run(lambda batch=batch: score(net, batch, args.precision))
                images += len(batch)
            busy = timer.seconds()
            wall = time.perf_counter() - started
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    return {
        "images_per_second": images / wall,
        "busy_share": busy / wall,
        "wait_share": waited / wall,
        "nvml_utilisation": sampler.mean,
        "workers": args.workers,
    }


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = preset(args.preset)
    photos = make_photos(args.photos)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{name}; preset {args.preset}; batch {args.batch_size}; {args.precision}; {args.workers} prepare workers")
    threads = torch.get_num_threads()
    costs = prepare_costs(base, photos[:8])
    torch.set_num_threads(threads)
    print(f"prepare, CPU ms per photo on one core: {costs} (total {sum(costs.values()):.0f})", flush=True)
    results: dict[str, Any] = {"prepare_ms_per_photo": costs}
    for crop_mode in ("five", "center"):
        config = base.replace(crop_mode=crop_mode)
        net = DualBranchNet(config).eval().to(device)
        detector = FaceDetector()
        sample = [_prepared(photos[i], config, detector) for i in range(args.batch_size)]
        ceiling = model_only(net, sample, args)
        print(f"{crop_mode}-crop, model only: {ceiling['images_per_second']:.1f} images/s", flush=True)
        if args.compile:
            net.compile_backbones()
            started = time.perf_counter()
            score(net, sample, args.precision)  # the first call compiles
            compile_seconds = time.perf_counter() - started
            ceiling = model_only(net, sample, args) | {"compile_seconds": compile_seconds}
            print(
                f"{crop_mode}-crop, model only, compiled: {ceiling['images_per_second']:.1f} images/s "
                f"(compile {ceiling['compile_seconds']:.0f} s)",
                flush=True,
            )
        measured = fed(net, config, photos, args)
        nvml = measured["nvml_utilisation"]
        print(
            f"{crop_mode}-crop, fed by {args.workers} CPU workers: {measured['images_per_second']:.1f} images/s, "
            f"GPU busy {measured['busy_share']:.0%}, waiting for input {measured['wait_share']:.0%}"
            + (f", NVML utilisation {nvml:.0%}" if nvml is not None else ""),
            flush=True,
        )
        results[crop_mode] = {"model_only": ceiling, "fed": measured}
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    verdicts = {
        "five-crop >= 150 images/s": results["five"]["fed"]["images_per_second"] >= TARGETS["five"],
        "centre-crop >= 600 images/s": results["center"]["fed"]["images_per_second"] >= TARGETS["center"],
        "GPU busy >= 85 % (five-crop)": results["five"]["fed"]["busy_share"] >= TARGETS["busy"],
    }
    for verdict, passed in verdicts.items():
        print(f"{verdict:32} {'PASS' if passed else 'FAIL'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "gpu_throughput",
        "device": name,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "results": results,
        "verdicts": verdicts,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


def prepare_costs(config, photos: list[bytes]) -> dict[str, float]:
    """CPU ms per photo of each prepare stage on one core (process time): how many cores one GPU needs."""
    torch.set_num_threads(1)
    detector = FaceDetector()
    _prepared(photos[0], config, detector)  # warm-up
    totals = {"decode": 0.0, "detect": 0.0, "crops_and_patches": 0.0}
    for data in photos:
        t0 = time.process_time()
        preview = open_preview(data, config, detector.detect_size)
        t1 = time.process_time()
        [detection] = detector.detect([preview.image])
        t2 = time.process_time()
        finished = preview.finish(detection)
        prepare(finished.image, finished.detection, config, finished.original_size)
        t3 = time.process_time()
        for name, seconds in zip(totals, ((t1 - t0), (t2 - t1), (t3 - t2)), strict=True):
            totals[name] += seconds
    return {name: round(1000 * seconds / len(photos), 1) for name, seconds in totals.items()}


def _prepared(data: bytes, config, detector: FaceDetector) -> PreparedImage | None:
    [(_, inputs)] = ImageFlow(config, detector).prepare([data])
    return inputs


if __name__ == "__main__":
    main()
