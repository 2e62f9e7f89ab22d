"""Long runs: `piqa score` over 20,000 small portraits, the memory of every process it starts sampled.

The input: `--images` portraits (the congress portraits of ../shared shrunk to `--size` px, repeated; one in a
hundred is a broken file of tests/corpus.py) in WebDataset tars of `--shard-size` images, on local disk. The
command: `piqa score INPUT --out OUT --runner ray` in a process of its own as a user runs it, with the Makefile's
network hygiene, its own TMPDIR and its own Ray temporary folder (RAY_TMPDIR). Every `--interval` seconds: the
resident memory (RSS) and the unshared memory (USS: RSS less the pages other processes map too, the object
store's among them) of the driver and of every process under it, classed by title (driver, raylet, gcs_server,
ray::<actor class>, ...); the shards committed; the bytes in Ray's spill folders.

Measured, and the targets:
- growth after warm-up per process class: for each process that lives through the run, its median memory over
  the last tenth of the run over its median over the tenth after warm-up (warm-up: until the first `--warm-up`
  of the shards is committed; a tenth is three samples at least), less one; the class's figure is its worst
  process's. Target: USS growth <= 10 %. RSS is reported beside it: it also counts object-store pages a process
  has merely read, which come and go with the blocks in flight;
- temporary files: none left in TMPDIR, nothing in the output but the shards and the job's records;
- spilling: the spill folders' largest size over the run, bounded by `--spill-limit-mib`;
- rows: every key exactly once, with the status its bytes call for.

    python bench/soak.py [--images 20000] [--out bench/out/soak]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from PIL import Image

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from corpus import broken_inputs, portraits, tar_bytes  # noqa: E402
from harness import command_env  # noqa: E402

SHARED = REPO.parent / "shared"
JOB_RECORDS = {"_manifest.json", "_job.json"}
GROWTH_TARGET = 0.10
BROKEN_EVERY = 100


@dataclass
class Soak:
    """A soak's inputs: where they are and the status every key must end with."""

    input: Path
    expected: dict[str, str]
    shards: int


def make_input(root: Path, images: int, shard_size: int, size: int) -> Soak:
    """`images` keys in tars of `shard_size`: small portraits repeated, one in `BROKEN_EVERY` a broken file."""
    photos = [_shrunk(path, size) for path in portraits(SHARED, 40)]
    broken = list(broken_inputs(photos[0]).items())
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    shards = 0
    for first in range(0, images, shard_size):
        members = []
        for number in range(first, min(first + shard_size, images)):
            if number % BROKEN_EVERY == BROKEN_EVERY - 1:
                name, (data, status) = broken[number // BROKEN_EVERY % len(broken)]
                suffix = name.rsplit(".", 1)[1]
            else:
                data, status, suffix = photos[number % len(photos)], "ok", "jpg"
            members.append((f"{number:07d}.{suffix}", data))
            expected[f"{number:07d}"] = status
        (root / f"shard-{shards:05d}.tar").write_bytes(tar_bytes(members))
        shards += 1
    return Soak(root, expected, shards)


def _shrunk(path: Path, size: int) -> bytes:
    with Image.open(path) as image:
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Samples:
    """What the sampler saw: per process, (time, rss, uss); per time, shards committed and bytes spilled."""

    classes: dict[int, str] = field(default_factory=dict)
    memory: dict[int, list[tuple[float, int, int]]] = field(default_factory=lambda: defaultdict(list))
    committed: list[tuple[float, int]] = field(default_factory=list)
    spilled: list[tuple[float, int]] = field(default_factory=list)


def process_class(process: psutil.Process, driver: int) -> str:
    """A process's class: `driver`, a Ray worker's title (`ray::PrepareAndScore`), or its program's name."""
    if process.pid == driver:
        return "driver"
    command = process.cmdline()
    if command and command[0].startswith("ray::"):
        return command[0].split(".", 1)[0].split(" ", 1)[0]
    scripts = [Path(part).name for part in command[1:2] if part.endswith(".py")]
    return scripts[0] if scripts else process.name()


def sample_until_exit(run: subprocess.Popen, out: Path, ray_temp: Path, interval: float) -> Samples:
    """Samples the run's processes every `interval` seconds until it exits."""
    samples = Samples()
    driver = psutil.Process(run.pid)
    started = time.monotonic()
    while run.poll() is None:
        now = time.monotonic() - started
        try:
            processes = [driver, *driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in processes:
            try:
                title = process_class(process, run.pid)
                memory = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if title != "ray::IDLE" or process.pid not in samples.classes:
                samples.classes[process.pid] = title
            samples.memory[process.pid].append((now, memory.rss, memory.uss))
        samples.committed.append((now, _committed(out)))
        samples.spilled.append((now, _spilled_bytes(ray_temp)))
        time.sleep(interval)
    return samples


def _committed(out: Path) -> int:
    return len(list(out.glob("*.parquet"))) if out.exists() else 0


def _spilled_bytes(ray_temp: Path) -> int:
    total = 0
    for folder, _, files in os.walk(ray_temp):
        if "spill" in folder:
            total += sum(_size(Path(folder, name)) for name in files)
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def growth(samples: Samples, shards: int, warm_up: float, interval: float) -> dict[str, dict]:
    """Per process class: its worst process's growth after warm-up (RSS and USS, from and to), and how many of
    its processes lived through the run."""
    end = next((t for t, done in samples.committed if done >= shards), samples.committed[-1][0])
    warm = next(t for t, done in samples.committed if done >= warm_up * shards or t >= end)
    window = max((end - warm) / 10, 3 * interval)  # a short run's windows still hold a few samples
    by_class: dict[str, dict] = {}
    for pid, points in samples.memory.items():
        early = [p for p in points if warm <= p[0] <= warm + window]
        late = [p for p in points if end - window <= p[0] <= end]
        if not early or not late:
            continue
        figures = {}
        for column, name in ((1, "rss"), (2, "uss")):
            before = statistics.median(p[column] for p in early)
            after = statistics.median(p[column] for p in late)
            figures |= {f"{name}_mib": [before / 2**20, after / 2**20], f"{name}_growth": after / before - 1}
        worst = by_class.get(samples.classes[pid], {"uss_growth": -1.0, "processes": 0})
        kept = figures if figures["uss_growth"] > worst["uss_growth"] else worst
        by_class[samples.classes[pid]] = kept | {"processes": worst["processes"] + 1}
    return by_class


def leftovers(temp: Path, out: Path) -> list[str]:
    """Files a finished run should not have left: anything in its TMPDIR, anything in the output but the shards
    and the job's records."""
    left = [str(path) for path in temp.rglob("*") if path.is_file()]
    return left + [str(path) for path in out.iterdir() if not (path.suffix == ".parquet" or path.name in JOB_RECORDS)]


def check_rows(out: Path, expected: dict[str, str]) -> dict[str, int]:
    """Rows lost, doubled and with a status other than their bytes call for."""
    keys: list[str] = []
    wrong = 0
    for path in sorted(out.glob("*.parquet")):
        table = pq.read_table(path, columns=["key", "status"])
        for key, status in zip(table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True):
            keys.append(key)
            wrong += expected.get(key) != status
    return {"lost": len(set(expected) - set(keys)), "doubled": len(keys) - len(set(keys)), "wrong_status": wrong}


@contextlib.contextmanager
def short_folder() -> Iterator[Path]:
    """A fresh folder under /tmp, removed afterwards: short, as Ray's socket paths under RAY_TMPDIR must be."""
    work = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_soak(work: Path, soak: Soak, interval: float, warm_up: float, extra: list[str]) -> dict:
    """Scores `soak` with `piqa score` into `work`/out, sampled; the figures this benchmark reports."""
    out, temp, ray_temp = work / "out", work / "tmp", work / "r"
    for folder in (temp, ray_temp):
        folder.mkdir(parents=True, exist_ok=True)
    env = command_env(TMPDIR=str(temp), RAY_TMPDIR=str(ray_temp))
    command = [sys.executable, "-m", "jobs.cli", "score", str(soak.input), "--out", str(out), "--runner", "ray", *extra]
    started = time.perf_counter()
    with subprocess.Popen(
        [*command, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as run:
        output: list[bytes] = []
        reader = threading.Thread(target=lambda: output.extend(run.stdout), daemon=True)
        reader.start()
        samples = sample_until_exit(run, out, ray_temp, interval)
        reader.join()
    seconds = time.perf_counter() - started
    text = b"".join(output).decode(errors="replace")
    if run.returncode != 0:
        raise SystemExit(f"piqa score failed ({run.returncode}):\n{text[-3000:]}")
    return {
        "command": " ".join(command),
        "images": len(soak.expected),
        "shards": soak.shards,
        "seconds": seconds,
        "summary": text.strip().splitlines()[-1],
        "growth": growth(samples, soak.shards, warm_up, interval),
        "spilled_peak_mib": max(b for _, b in samples.spilled) / 2**20,
        "leftovers": leftovers(temp, out),
        "rows": check_rows(out, soak.expected),
        "samples": len(samples.committed),
        "curve": memory_curve(samples),
        "raw": {"classes": samples.classes, "memory": samples.memory, "committed": samples.committed},
    }


def memory_curve(samples: Samples, points: int = 10) -> list[dict]:
    """The run in `points` steps: shards committed and each class's summed USS (MiB), for BENCHMARKS.md."""
    end = samples.committed[-1][0]
    curve = []
    for step in range(1, points + 1):
        at = end * step / points
        row = {"seconds": round(at), "committed": max(done for t, done in samples.committed if t <= at)}
        totals: dict[str, float] = defaultdict(float)
        for pid, memory in samples.memory.items():
            before = [uss for t, _, uss in memory if t <= at]
            if before and memory[-1][0] >= at - 2 * (end / points):
                totals[samples.classes[pid]] += before[-1] / 2**20
        curve.append(row | {title: round(mib) for title, mib in sorted(totals.items())})
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--size", type=int, default=160, help="longest side of the portraits, px")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--warm-up", type=float, default=0.2, help="shards committed before growth counts")
    parser.add_argument("--spill-limit-mib", type=float, default=256.0)
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "soak.json")
    parser.add_argument("score_options", nargs="*", help="more `piqa score` options, after --")
    args = parser.parse_args()
    with short_folder() as work:
        soak = make_input(work / "in", args.images, args.shard_size, args.size)
        result = run_soak(work, soak, args.interval, args.warm_up, args.score_options)
    result["targets"] = verdicts(result, args.spill_limit_mib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"wrote {args.out}")


def verdicts(result: dict, spill_limit_mib: float) -> dict[str, bool]:
    return {
        f"uss growth <= {GROWTH_TARGET:.0%} per class": all(
            figures["uss_growth"] <= GROWTH_TARGET for figures in result["growth"].values()
        ),
        "no leaked files": not result["leftovers"],
        f"spill <= {spill_limit_mib:g} MiB": result["spilled_peak_mib"] <= spill_limit_mib,
        "every key exactly once, right status": not any(result["rows"].values()),
    }


def report(result: dict) -> None:
    print(f"{result['images']} images, {result['shards']} shards in {result['seconds']:.0f} s: {result['summary']}")
    print(f"{'class':34} {'n':>2} {'RSS MiB':>15} {'RSS +':>7} {'USS MiB':>15} {'USS +':>7}")
    for title, figures in sorted(result["growth"].items()):
        rss, uss = figures["rss_mib"], figures["uss_mib"]
        print(
            f"{title:34} {figures['processes']:>2} {rss[0]:7.0f}>{rss[1]:<7.0f} {figures['rss_growth']:7.1%} "
            f"{uss[0]:7.0f}>{uss[1]:<7.0f} {figures['uss_growth']:7.1%}"
        )
    print(f"spilled at most {result['spilled_peak_mib']:.1f} MiB; leftover files: {len(result['leftovers'])}")
    print(f"rows: {result['rows']}")
    for target, met in result["targets"].items():
        print(f"{'met' if met else 'MISSED'}: {target}")


if __name__ == "__main__":
    main()
