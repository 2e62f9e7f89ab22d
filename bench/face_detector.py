"""Face detection alone: facenet-pytorch's `MTCNN.detect` against `piqa_model.mtcnn.Mtcnn` (same networks).

    .venv/bin/python bench/face_detector.py                  # 12 photos per set, about 1 minute on 2 cores
    .venv/bin/python bench/face_detector.py --images 4       # quicker

On the images MTCNN sees in the pipeline (640-px previews of London Set and PIQ23 photos, Congress headshots at
their 225x275) and on full-resolution London photos (1350x1350, the naive loop's input): CPU time per image of
each detector (fastest of `--repeats`, one torch thread, as in a Ray worker), their ratio, and how far our boxes
and probabilities are from facenet-pytorch's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from harness import DATA, OUT_DIR, spread, write_results
from PIL import Image

from piqa_model.mtcnn import Mtcnn


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="photos per set (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per photo; the fastest counts (default 3)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "face_detector.json")
    args = parser.parse_args()
    if min(args.images, args.repeats) < 1:
        parser.error("--images and --repeats must be at least 1")
    return args


def rgb(path: Path, longest: int | None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if longest is not None and max(image.size) > longest:
        scale = longest / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(image)


def fastest_ms(repeats: int, run) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.process_time()
        result = run()
        best = min(best, time.process_time() - started)
    return best * 1000, result


def measure(images: list[np.ndarray], repeats: int, stock, ours: Mtcnn) -> dict:
    stock_ms, ours_ms, box_diff, prob_diff, count_mismatches = [], [], 0.0, 0.0, 0
    for image in images:
        ms, (boxes, probs) = fastest_ms(repeats, lambda image=image: stock.detect(image[None]))
        stock_ms.append(ms)
        ms, [(our_boxes, our_probs)] = fastest_ms(repeats, lambda image=image: ours.detect(image[None]))
        ours_ms.append(ms)
        expected = np.zeros((0, 4)) if boxes[0] is None else np.asarray(boxes[0], dtype=np.float64)
        if len(expected) != len(our_boxes):
            count_mismatches += 1
        elif len(expected):
            box_diff = max(box_diff, float(np.abs(expected - our_boxes).max()))
            prob_diff = max(prob_diff, float(np.abs(np.asarray(probs[0], dtype=np.float64) - our_probs).max()))
    return {
        "images": len(images),
        "facenet_ms": float(np.mean(stock_ms)),
        "ours_ms": float(np.mean(ours_ms)),
        "speedup": float(np.sum(stock_ms) / np.sum(ours_ms)),
        "max_box_diff_px": box_diff,
        "max_prob_diff": prob_diff,
        "face_count_mismatches": count_mismatches,
    }


def main() -> None:
    from facenet_pytorch import MTCNN

    args = parse_args()
    torch.set_num_threads(1)
    london = spread(sorted((DATA / "portraits" / "london").glob("*.jpg")), args.images)
    piq23 = spread(
        sorted(p for p in (DATA / "piq23" / "examples").iterdir() if p.suffix.lower() == ".jpg"), args.images
    )
    congress = spread(sorted((DATA / "portraits" / "congress").glob("*.jpg")), args.images)
    sets = {
        "London, 640-px preview": [rgb(p, 640) for p in london],
        "PIQ23, 640-px preview": [rgb(p, 640) for p in piq23],
        "Congress, 225x275": [rgb(p, None) for p in congress],
        "London, full 1350x1350": [rgb(p, None) for p in london],
    }
    stock, ours = MTCNN(keep_all=True), Mtcnn()
    stock.detect(sets["Congress, 225x275"][0][None]), ours.detect(sets["Congress, 225x275"][0][None])  # warm-up
    print("CPU ms per image, one torch thread; diffs: ours vs facenet-pytorch")
    print(f"{'set':24}{'n':>4}{'facenet':>9}{'ours':>7}{'speedup':>9}{'box px':>9}{'prob':>9}{'count !=':>9}")
    results = {}
    for name, images in sets.items():
        r = results[name] = measure(images, args.repeats, stock, ours)
        print(
            f"{name:24}{r['images']:4}{r['facenet_ms']:9.1f}{r['ours_ms']:7.1f}{r['speedup']:8.2f}x"
            f"{r['max_box_diff_px']:9.4f}{r['max_prob_diff']:9.1e}{r['face_count_mismatches']:9}"
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
