"""The network's forward alone: PyTorch's own linears against the oneDNN ones (`piqa_model.onednn`).

    .venv/bin/python bench/model_forward.py                          # the starter and `small`, about 1 minute
    .venv/bin/python bench/model_forward.py --presets dn-piqa --rounds 2 --images 1 \
        --out bench/out/model_forward_dnpiqa.json                     # the paper's model, about 1 minute

One image per forward (its five crops of the whole image and of the face, as the CPU pipeline runs it), one torch
thread (as in a Ray worker), random crops. Both ways run in alternating rounds in the same process and the
fastest round of each counts, so a busy host slows both alike. Prints CPU ms per image, the ratio, and the
largest score difference. Timed: the two Swins and the head (models with LIQE get zero LIQE features; their CLIP's
linears switch too, untimed here). Random weights for the presets (the speed does not depend on them); `starter`
is the shipped default bundle.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from harness import OUT_DIR, write_results

import piqa_model
from piqa_model.bundle import UntrainedModelWarning, default_bundle_path
from piqa_model.onednn import onednn_available, use_onednn_linear


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="starter,small", help="comma-separated: starter or preset names")
    parser.add_argument("--images", type=int, default=4, help="images (forwards) per round (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the fastest counts (default 5)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "model_forward.json")
    args = parser.parse_args()
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    if min(args.images, args.rounds) < 1 or not args.presets:
        parser.error("--images and --rounds must be at least 1, --presets must name one")
    return args


def network(name: str) -> piqa_model.DualBranchNet:
    if name == "starter":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedModelWarning)
            return piqa_model.read_bundle(default_bundle_path())[0].eval()
    torch.manual_seed(0)
    return piqa_model.DualBranchNet(piqa_model.preset(name)).eval()


def round_ms(
    net: piqa_model.DualBranchNet, crops: list[tuple[torch.Tensor, torch.Tensor]], aux: torch.Tensor | None
) -> float:
    started = time.process_time()
    for overall, face in crops:
        net.score_images(overall, face, aux)
    return (time.process_time() - started) * 1000 / len(crops)


@torch.inference_mode()
def measure(name: str, images: int, rounds: int) -> dict:
    ours = network(name)
    plain = copy.deepcopy(ours)
    use_onednn_linear(plain, enabled=False)
    config = ours.config
    generator = torch.Generator().manual_seed(0)
    shape = (1, config.crops_per_image, 3, config.crop, config.crop)
    crops = [
        tuple(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for _ in range(2))
        for _ in range(images)
    ]
    aux = torch.zeros(1, config.aux_width) if ours.uses_aux else None
    diff = max(float((ours.score_images(o, f, aux) - plain.score_images(o, f, aux)).abs().max()) for o, f in crops)
    best = {"plain": float("inf"), "onednn": float("inf")}
    for _ in range(rounds):
        best["plain"] = min(best["plain"], round_ms(plain, crops, aux))
        best["onednn"] = min(best["onednn"], round_ms(ours, crops, aux))
    return {
        "preset": config.name,
        "crop": config.crop,
        "plain_ms": best["plain"],
        "onednn_ms": best["onednn"],
        "speedup": best["plain"] / best["onednn"],
        "max_abs_score_diff": diff,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    if not onednn_available():
        raise SystemExit("oneDNN's fused linear is not available on this machine: nothing to compare")
    print(f"CPU ms per image (one forward of 5 + 5 crops), one torch thread, fastest of {args.rounds} rounds")
    print(f"{'model':10}{'preset':>11}{'crop':>6}{'PyTorch':>9}{'oneDNN':>9}{'speedup':>9}{'max |diff|':>12}")
    results = {}
    for name in args.presets:
        r = results[name] = measure(name, args.images, args.rounds)
        print(
            f"{name:10}{r['preset']:>11}{r['crop']:6}{r['plain_ms']:9.1f}{r['onednn_ms']:9.1f}{r['speedup']:8.2f}x"
            f"{r['max_abs_score_diff']:12.1e}"
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
