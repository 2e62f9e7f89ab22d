"""Scale: what one scoring job's driver spends per image, and what crosses Ray's object store per image.

    .venv/bin/python bench/scale.py          # ~10 min on 2 cores
    .venv/bin/python bench/scale.py --portraits 400,1200 --rows 2000,8000 --baseline 486a24e

**Driver CPU.** Whole `python -m jobs.score` commands (Ray runner, local Ray, the Makefile's network hygiene,
default shard size), each timed to its exit with the driver process's own CPU (user + system, all its threads,
its children left out), on two workloads of two sizes each: `portraits` (the Congress headshots, 225x275,
repeated under other names past 879, scored by an untrained `small-224` bundle, centre crop: a user's job on this
machine) and `rows` (64-byte files that are not images: each is an error row, so rows move as fast as the
pipeline can move them). The driver's CPU is modelled as `a` x the run's seconds (Ray Data's scheduling loop
wakes at least ten times a second) + `b` x images + fixed costs (imports, starting Ray, planning); the
differences between each workload's two sizes give `a` and `b`, and one driver sustains (1 - a) / b images/s.
The same commands run on a checkout of `--baseline` (a git revision, by default the last one before the workers
committed their own shards), in the same run.

**Object-store bytes.** The prepare step's output per input image (what a GPU job ships from its CPU actors to
its scoring actors), for `small` and `dn-piqa` geometry (five-crop), over the sample portraits (one of which is
not an image): the crop inputs and the LIQE patches apart; measured with this checkout's and with the baseline's
`Prepare`.

Prints tables and writes bench/out/scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import DATA, OUT_DIR, REPO, checkout_of, command_env, write_results

BASELINE = "486a24e"  # the driver committed every shard, the actors were given the weights and cut the crops
TARGET_DRIVER_MS = 0.1
TARGET_DNPIQA_MB = 1.5

# Runs a module as `python -m` does, then prints this process's own CPU (all threads, no children) as JSON.
RUSAGE_WRAPPER = """
import atexit, json, resource, runpy, sys, time
started = time.monotonic()
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu, wall = usage.ru_utime + usage.ru_stime, time.monotonic() - started
    print("DRIVER_CPU " + json.dumps([cpu, wall]), file=sys.stderr, flush=True)
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


WORKLOADS = {
    "portraits": "small portraits, cheap model: what a user's job on this machine looks like",
    "rows": "undecodable 64-byte files: rows as fast as the pipeline moves them, what one driver can sustain",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--portraits", default="400,1200", help="the two job sizes of portraits")
    parser.add_argument("--rows", default="2000,8000", help="the two job sizes of undecodable files")
    parser.add_argument("--baseline", default=BASELINE, help="git revision measured beside this checkout")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "scale.json")
    return parser.parse_args()


def folder_of(workload: str, count: int, root: Path) -> Path:
    """`count` portraits (links to the Congress headshots, repeated), or `count` files that are not images."""
    photos = sorted((DATA / "portraits" / "congress").glob("*.jpg"))
    folder = root / f"{workload}-{count}"
    folder.mkdir(parents=True)
    for number in range(count):
        photo = photos[number % len(photos)]
        target = folder / f"{photo.stem}-{number:06d}.jpg"
        if workload == "portraits":
            target.symlink_to(photo)
        else:
            target.write_bytes(b"not an image" + bytes(52))
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
    env = command_env(checkout)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=1800
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"failed in {checkout}: {' '.join(args)}\n{output[-3000:]}")
    line = next(line for line in output.splitlines() if line.startswith(marker))
    return json.loads(line[len(marker) :]), output


def driver_cpu(checkout: Path, folder: Path, bundle: Path, out: Path) -> dict:
    """The driver's CPU over a whole `python -m jobs.score` (Ray runner), and the run's summary line."""
    args = ["jobs.score", str(folder), "--out", str(out), "--bundle", str(bundle), "--runner", "ray"]
    (cpu, wall), output = run(checkout, RUSAGE_WRAPPER, args, "DRIVER_CPU ")
    summary = next(line for line in output.splitlines() if line.startswith("scored "))
    images = int(summary.split()[1])
    return {
        "driver_cpu_s": cpu,
        "wall_s": wall,
        "images": images,
        "summary": summary,
        "per_image_ms": cpu * 1e3 / images,
    }


def driver_model(runs: dict[str, dict[int, dict]]) -> dict[str, float]:
    """Driver CPU = a x wall seconds + b x images + fixed costs, solved from the two workloads' differences between
    their two sizes (the fixed costs cancel): `a` is what the driver spends per second whatever flows (Ray Data's
    scheduling loop wakes ten times a second or more), `b` per image; one driver sustains (1 - a) / b images/s."""
    rows = []
    for by_size in runs.values():
        small, large = sorted(by_size)
        rows.append([by_size[large][key] - by_size[small][key] for key in ("wall_s", "images", "driver_cpu_s")])
    (w1, n1, c1), (w2, n2, c2) = rows
    determinant = w1 * n2 - w2 * n1
    a, b = (c1 * n2 - c2 * n1) / determinant, (w1 * c2 - w2 * c1) / determinant
    return {
        "cores_per_second": a,
        "ms_per_image": b * 1e3,
        "images_per_s_one_driver": (1 - a) / b if b > 0 else float("inf"),
    }


def main() -> None:
    args = parse_args()
    sizes = {"portraits": [int(n) for n in args.portraits.split(",")], "rows": [int(n) for n in args.rows.split(",")]}
    work = Path(tempfile.mkdtemp(prefix="piqa-scale-"))
    with checkout_of(args.baseline, work / "baseline") as baseline:
        bundle = cheap_bundle(work)
        folders = {(w, n): folder_of(w, n, work) for w, counts in sizes.items() for n in counts}
        results: dict = {"sizes": sizes, "baseline": args.baseline, "driver": {}, "bytes": {}}
        for name, checkout in (("baseline", baseline), ("current", REPO)):
            runs = {
                workload: {
                    n: driver_cpu(checkout, folders[workload, n], bundle, work / f"out-{name}-{workload}-{n}")
                    for n in counts
                }
                for workload, counts in sizes.items()
            }
            for workload, by_size in runs.items():
                print("\n".join(f"{name}, {workload}: {run['summary']}" for run in by_size.values()))
            results["driver"][name] = {"runs": runs, "model": driver_model(runs)}
            results["bytes"][name] = {
                geometry: run(
                    checkout, PREPARE_BYTES, [geometry, str(REPO / "samples" / "portraits")], "PREPARE_BYTES "
                )[0]
                for geometry in ("small", "dn-piqa")
            }
        report(results)
        write_results(args.out, results)
    shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    driver = results["driver"]
    names = ("baseline", "current")
    print("\n| driver CPU | baseline | current | target |\n|---|---:|---:|---:|")
    for workload, (_, large) in results["sizes"].items():
        whole = " | ".join(f"{driver[n]['runs'][workload][large]['per_image_ms']:.2f}" for n in names)
        print(f"| {workload}, {large}: whole command, ms per image | {whole} | |")
    models = [driver[n]["model"] for n in names]
    per_image = " | ".join(f"{m['ms_per_image']:.3f}" for m in models)
    print(f"| per image (b), ms | {per_image} | <= {TARGET_DRIVER_MS} |")
    per_second = " | ".join(f"{m['cores_per_second']:.3f}" for m in models)
    print(f"| per second of the run (a), cores | {per_second} | |")
    rate = " | ".join(f"{m['images_per_s_one_driver']:,.0f}" for m in models)
    print(f"| images/s one driver sustains, (1 - a) / b | {rate} | >= {1e3 / TARGET_DRIVER_MS:,.0f} |")
    print("\n| object store, per image | baseline | current | target |\n|---|---:|---:|---:|")
    for geometry in ("small", "dn-piqa"):
        before, after = results["bytes"]["baseline"][geometry], results["bytes"]["current"][geometry]
        target = f"<= {TARGET_DNPIQA_MB} MB" if geometry == "dn-piqa" else ""
        for label, name, goal in (("crop inputs", "inputs", target), ("LIQE patches", "patches", "")):
            if before[name] or after[name]:
                print(f"| {geometry}: {label} (MB) | {before[name] / 1e6:.2f} | {after[name] / 1e6:.2f} | {goal} |")


if __name__ == "__main__":
    main()
