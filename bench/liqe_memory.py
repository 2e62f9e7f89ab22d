"""Peak memory of the LIQE auxiliary vector of one large image: 15 cut patches against all patches materialised.

The issue's requirement: the LIQE port uses memory proportional to its 15 patches, not to the image; a 4000x3000
image's aux vector on CPU within a few hundred MB of extra memory. The full measurement (about a minute; the naive
reference needs ~6.5 GB of free RAM at 4000x3000 in float32):

    .venv/bin/python bench/liqe_memory.py --width 4000 --height 3000

A quick check that the script works:

    .venv/bin/python bench/liqe_memory.py --width 800 --height 600

Two ways of computing the same [1, 495] vector with the `small-liqe` preset (`--preset dn-piqa` for the paper's
CLIP ViT-B/32 with random weights; the image-dependent memory is the same):

- ours: `DualBranchNet.aux_features(image_u8)`, which cuts only the 15 selected 224x224 patches (uint8) and
  normalises those;
- naive: what a straightforward port of LIQE does: the whole image as a normalised float tensor, every 224x224
  patch at stride 32 materialised with `Tensor.unfold(...).permute(...).reshape(...)`, then the 15 selected ones
  indexed out (`--naive-dtype uint8` unfolds the uint8 image instead and normalises the 15 afterwards).

Each measurement runs in a fresh process (multiprocessing 'spawn'): build the network (seeded), compute the prompt
features, make the image (seeded random uint8, touched), warm up with the same method on a 512x512 image, then
take the resident set size as the baseline, reset the peak (`/proc/self/clear_refs`; `ru_maxrss` where that is not
possible), compute the vector and read the peak (VmHWM). Extra memory = peak - baseline. The vectors of the two
methods must agree (max abs diff printed). Prints a table and writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.runtime import apply_local_hygiene
from piqa_model import PRESETS, DualBranchNet, LiqeConfig, preset

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
WARMUP_SIZE = 512
MIB = 1024 * 1024

apply_local_hygiene()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--preset", default="small-liqe", choices=[n for n, c in PRESETS.items() if c.aux == "liqe"])
    parser.add_argument("--naive-dtype", choices=("float32", "uint8"), default="float32")
    parser.add_argument("--skip-naive", action="store_true", help="measure only our method")
    parser.add_argument("--force-naive", action="store_true", help="run the naive reference even if RAM looks short")
    parser.add_argument("--budget-mb", type=float, default=300.0, help="pass mark for our extra memory (MB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "liqe_memory.json")
    args = parser.parse_args()
    if min(args.width, args.height) < WARMUP_SIZE:
        parser.error(f"--width and --height must be at least {WARMUP_SIZE}")
    return args


# -- memory probes -------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak() -> str:
    """Reset the kernel's peak-RSS mark to the current RSS; say which probe reads the peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (peak could not be reset: an earlier higher peak would hide the delta)"


def peak_bytes(probe: str) -> int:
    kib = _status_kib("VmHWM") if probe.startswith("VmHWM") else None
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# -- the two methods -----------------------------------------------------------------------------------------


def grid(height: int, width: int, config: LiqeConfig) -> tuple[int, int]:
    size, stride = config.patch_size, config.patch_stride
    return (height - size) // stride + 1, (width - size) // stride + 1


def ours(net: DualBranchNet, image_u8: torch.Tensor, naive_dtype: str) -> torch.Tensor:
    return net.aux_features(image_u8)


def naive(net: DualBranchNet, image_u8: torch.Tensor, naive_dtype: str) -> torch.Tensor:
    """A straightforward LIQE port: unfold every patch of the image, keep every (N // 15)-th."""
    branch = net.liqe
    assert branch is not None
    config = branch.config
    size, stride, count = config.patch_size, config.patch_stride, config.num_patches
    x = image_u8
    if naive_dtype == "float32":
        x = (image_u8.float() / 255.0 - branch.mean) / branch.std  # ToTensor + Normalize on the whole image
    patches = x.unfold(2, size, stride).unfold(3, size, stride)  # [1, 3, R, C, S, S], a view
    patches = patches.permute(2, 3, 0, 1, 4, 5).reshape(-1, 3, size, size)  # copies all R * C patches
    step = patches.shape[0] // count
    selected = patches[torch.arange(count) * step]
    if naive_dtype == "uint8":
        selected = (selected.float() / 255.0 - branch.mean) / branch.std
    if selected.shape[-1] != config.image_size:
        selected = F.interpolate(selected, size=config.image_size, mode="bilinear", align_corners=False)
    features = F.normalize(branch.clip.encode_image(selected).float(), dim=-1)
    logits = branch.clip.logit_scale.exp().float() * features @ branch.prompt_features().t()
    return logits.mean(dim=0, keepdim=True)


METHODS = {"ours": ours, "naive": naive}


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=generator)


def measure(method: str, preset_name: str, width: int, height: int, seed: int, naive_dtype: str) -> dict[str, Any]:
    """Runs in a fresh process: the extra peak memory of one aux vector."""
    torch.manual_seed(seed)
    net = DualBranchNet(preset(preset_name)).eval()
    assert net.liqe is not None
    function = METHODS[method]
    with torch.no_grad():
        net.liqe.prompt_features()
        image = random_image(height, width, seed)
        image.add_(0)  # touch every page before the baseline
        function(net, random_image(WARMUP_SIZE, WARMUP_SIZE, seed + 1), naive_dtype)  # warm-up
        gc.collect()
        baseline = rss_bytes()
        probe = reset_peak()
        started = time.perf_counter()
        vector = function(net, image, naive_dtype)
        seconds = time.perf_counter() - started
        peak = peak_bytes(probe)
    return {
        "method": method,
        "baseline_mb": round(baseline / MIB, 1),
        "peak_mb": round(peak / MIB, 1),
        "extra_mb": round((peak - baseline) / MIB, 1),
        "seconds": round(seconds, 3),
        "peak_probe": probe,
        "vector": vector.reshape(-1).tolist(),
    }


def in_fresh_process(*args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, *args).result()


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main() -> None:
    args = parse_args()
    config = preset(args.preset).liqe
    assert config is not None
    rows, cols = grid(args.height, args.width, config)
    patch_bytes = 3 * config.patch_size**2
    itemsize = 4 if args.naive_dtype == "float32" else 1
    all_patches = rows * cols * patch_bytes * itemsize
    naive_need = all_patches + (args.height * args.width * 3 * 4 * 2 if args.naive_dtype == "float32" else 0)
    print(
        f"LIQE aux vector of a {args.width}x{args.height} uint8 image, preset {args.preset}: "
        f"{rows} x {cols} = {rows * cols} candidate patches, {config.num_patches} used"
    )
    print(
        f"all patches materialised ({args.naive_dtype}): {all_patches / MIB:.0f} MB; "
        f"the {config.num_patches} used (uint8): {config.num_patches * patch_bytes / MIB:.1f} MB"
    )

    results = {"ours": in_fresh_process("ours", args.preset, args.width, args.height, args.seed, args.naive_dtype)}
    skipped = None
    free = available_bytes()
    if args.skip_naive:
        skipped = "--skip-naive"
    elif free is not None and naive_need > 0.8 * free and not args.force_naive:
        skipped = f"needs ~{naive_need / MIB:.0f} MB, {free / MIB:.0f} MB available (--force-naive to run it anyway)"
    else:
        results["naive"] = in_fresh_process("naive", args.preset, args.width, args.height, args.seed, args.naive_dtype)

    ours_mb = results["ours"]["extra_mb"]
    diff = ratio = None
    print()
    print(f"{'method':44}{'extra peak MB':>15}{'seconds':>10}{'baseline MB':>13}")
    labels = {"ours": "cut 15 patches (piqa_model aux_features)", "naive": f"naive: unfold all ({args.naive_dtype})"}
    for name, result in results.items():
        print(f"{labels[name]:44}{result['extra_mb']:15.1f}{result['seconds']:10.2f}{result['baseline_mb']:13.1f}")
    if "naive" in results:
        a, b = torch.tensor(results["ours"]["vector"]), torch.tensor(results["naive"]["vector"])
        diff = float((a - b).abs().max())
        ratio = results["naive"]["extra_mb"] / max(ours_mb, 0.1)
        print(f"naive / ours: {ratio:.1f}x the extra memory; same vector: max |diff| = {diff:.2e}")
    else:
        print(f"naive reference skipped: {skipped}")
    passed = ours_mb <= args.budget_mb
    print(f"ours within {args.budget_mb:.0f} MB of extra memory: {'PASS' if passed else 'FAIL'} ({ours_mb:.1f} MB)")
    print(f"peak probe: {results['ours']['peak_probe']}")

    document = {
        "benchmark": "liqe_memory",
        "finished_at": datetime.now(UTC).isoformat(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "image": {"width": args.width, "height": args.height, "dtype": "uint8"},
        "patches": {
            "candidates": rows * cols,
            "used": config.num_patches,
            "all_patches_mb": round(all_patches / MIB, 1),
            "used_patches_mb": round(config.num_patches * patch_bytes / MIB, 2),
        },
        "results": {name: {k: v for k, v in r.items() if k != "vector"} for name, r in results.items()},
        "naive_skipped": skipped,
        "naive_over_ours": round(ratio, 2) if ratio is not None else None,
        "max_abs_diff": diff,
        "budget_mb": args.budget_mb,
        "pass": passed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
