"""Scale: what one scoring job's driver spends per image, and what crosses Ray's object store per image.

    .venv/bin/python bench/scale.py                      # ~10 min on 2 cores
    .venv/bin/python bench/scale.py --images 400,1200    # the two job sizes (the slope between them counts)

**Driver CPU.** `python -m jobs.score` (Ray runner, local Ray, the Makefile's network hygiene) over folders of
small portraits (the Congress headshots, 225x275, repeated under other names past 879) with a cheap model (an
untrained `small-224` bundle, centre crop: the workers' speed only sets how long the run lasts). The driver
process's own CPU (user + system, all its threads, its children left out) is read at its exit; the per-image
figure is the slope between the two job sizes, so that the driver's fixed costs (imports, starting Ray, planning)
drop out. The same commands run on a checkout of `--baseline` (a git revision, by default the last one before
workers committed their own shards), in the same run.

**Object-store bytes.** The prepare step's output per image (what a GPU cluster ships from the CPU actors to the
scoring actors), for `small` and `dn-piqa` geometry (five-crop), on the sample portraits: the crop inputs and the
LIQE patches apart; measured with this checkout's and with the baseline's `Prepare`.

Prints a table and writes bench/out/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import DATA, OUT_DIR, REPO, write_results

from pipelines.runtime import HYGIENE_ENV

BASELINE = "486a24e"  # the driver committed every shard, the actors were given the weights and cut the crops
TARGET_DRIVER_MS = 0.1
TARGET_DNPIQA_MB = 1.5

# Runs a module as `python -m` does, then prints this process's own CPU (all threads, no children) as JSON.
RUSAGE_WRAPPER = """
import atexit, json, resource, runpy, sys
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("DRIVER_CPU " + json.dumps(usage.ru_utime + usage.ru_stime), file=sys.stderr, flush=True)
atexit.register(report)
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

# Prints the prepare step's payload per image: {"inputs": bytes, "patches": bytes} for one geometry.
PREPARE_BYTES = """
import json, sys
from pathlib import Path
import numpy as np
from pipelines.stages import Prepare
from piqa_model.config import preset
photos = sorted(Path(sys.argv[2]).glob("*.jpg"))
prepare = Prepare(preset(sys.argv[1]), detect_size=640, min_face_size=20, max_pixels=100_000_000)
batch = {"data": np.array([p.read_bytes() for p in photos], dtype=object)}
out = prepare(batch)
def size(values):
    if values.dtype == object:
        return sum(len(v) if isinstance(v, bytes) else np.asarray(v).nbytes for v in values if v is not None)
    return values.nbytes
totals = {"inputs": 0, "patches": 0}
for name, values in out.items():
    if name != "record":
        totals["patches" if name == "patches" else "inputs"] += size(values)
print("PREPARE_BYTES " + json.dumps({k: v / len(photos) for k, v in totals.items()}))
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="400,1200", help="the two job sizes, comma-separated")
    parser.add_argument("--baseline", default=BASELINE, help="git revision measured beside this checkout")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "scale.json")
    return parser.parse_args()


def folder_of(count: int, root: Path) -> Path:
    photos = sorted((DATA / "portraits" / "congress").glob("*.jpg"))
    folder = root / f"photos-{count}"
    folder.mkdir(parents=True)
    for number in range(count):
        photo = photos[number % len(photos)]
        (folder / f"{photo.stem}-{number:06d}.jpg").symlink_to(photo)
    return folder


def cheap_bundle(root: Path) -> Path:
    """An untrained `small-224` bundle (this checkout writes it; both checkouts read it)."""
    import torch

    from piqa_model.bundle import BundleInfo, save_bundle
    from piqa_model.config import preset
    from piqa_model.network import DualBranchNet

    torch.manual_seed(0)
    net = DualBranchNet(preset("small-224").replace(crop_mode="center"))
    return save_bundle(net, root / "cheap-bundle", BundleInfo(name="bench-cheap", trained=False))


def run(checkout: Path, code: str, args: list[str], marker: str) -> tuple[float | dict, str]:
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"} | HYGIENE_ENV
    env["PYTHONPATH"] = str(checkout)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=1800
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"failed in {checkout}: {' '.join(args)}\n{output[-3000:]}")
    line = next(line for line in output.splitlines() if line.startswith(marker))
    return json.loads(line[len(marker) :]), output


def driver_cpu(checkout: Path, folder: Path, bundle: Path, out: Path) -> dict:
    args = ["jobs.score", str(folder), "--out", str(out), "--bundle", str(bundle), "--runner", "ray"]
    args += ["--shard-size", "100"]
    seconds, output = run(checkout, RUSAGE_WRAPPER, args, "DRIVER_CPU ")
    summary = next(line for line in output.splitlines() if line.startswith("scored "))
    return {"driver_cpu_s": seconds, "summary": summary}


def main() -> None:
    args = parse_args()
    small, large = (int(n) for n in args.images.split(","))
    work = Path(tempfile.mkdtemp(prefix="piqa-scale-"))
    baseline = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO, check=True)
    try:
        bundle = cheap_bundle(work)
        folders = {n: folder_of(n, work) for n in (small, large)}
        results: dict = {"images": [small, large], "baseline": args.baseline, "driver": {}, "bytes": {}}
        for name, checkout in (("baseline", baseline), ("current", REPO)):
            runs = {n: driver_cpu(checkout, folders[n], bundle, work / f"out-{name}-{n}") for n in (small, large)}
            slope = (runs[large]["driver_cpu_s"] - runs[small]["driver_cpu_s"]) / (large - small)
            results["driver"][name] = {"runs": runs, "ms_per_image": slope * 1e3}
            print(f"{name}: {runs[small]['summary']}\n{name}: {runs[large]['summary']}")
            results["bytes"][name] = {
                geometry: run(
                    checkout, PREPARE_BYTES, [geometry, str(REPO / "samples" / "portraits")], "PREPARE_BYTES "
                )[0]
                for geometry in ("small", "dn-piqa")
            }
        report(results)
        write_results(args.out, results)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False)
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    print("\n| | baseline | current | target |\n|---|---:|---:|---:|")
    driver = results["driver"]
    print(
        f"| driver CPU per image (ms) | {driver['baseline']['ms_per_image']:.3f} | "
        f"{driver['current']['ms_per_image']:.3f} | <= {TARGET_DRIVER_MS} |"
    )
    for name in ("baseline", "current"):
        rate = 1e3 / max(driver[name]["ms_per_image"], 1e-6)
        driver[name]["images_per_s_one_driver"] = rate
    print(
        f"| images/s one driver sustains | {driver['baseline']['images_per_s_one_driver']:,.0f} | "
        f"{driver['current']['images_per_s_one_driver']:,.0f} | >= {1e3 / TARGET_DRIVER_MS:,.0f} |"
    )
    for geometry in ("small", "dn-piqa"):
        before, after = results["bytes"]["baseline"][geometry], results["bytes"]["current"][geometry]
        target = f"<= {TARGET_DNPIQA_MB}" if geometry == "dn-piqa" else ""
        rows = [("crop inputs", "inputs", target), ("LIQE patches", "patches", "")]
        for label, name, goal in rows:
            if before[name] or after[name]:
                mb = f"{before[name] / 1e6:.2f} | {after[name] / 1e6:.2f}"
                print(f"| {geometry}: {label} per image (MB) | {mb} | {goal} |")


if __name__ == "__main__":
    main()
