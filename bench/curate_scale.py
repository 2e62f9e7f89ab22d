"""Curating big score sets: `piqa filter` on synthetic score sets of millions of rows, time and peak memory.

Score sets in the real output schema (`pipelines.writer.OUTPUT_SCHEMA`, LIQE columns included), 1,000 rows per
Parquet file as `piqa score` writes one file per input shard, every row `ok` but for 1 % of decode errors; scores
are random, `liqe_scene` takes nine values (a few huge groups). They are made once and kept under
bench/out/curate_scale/.

For each size (`--rows`, millions) and rule kind, whole `piqa filter` commands run in their own process, with
this checkout and with `--baseline` (a git worktree of that revision) in the same run; the fastest of
`--repeats` runs counts. The peak resident memory of the command's process tree is sampled every 50 ms (the
driver is the command's own process; any other is a worker). A rule kind's kept and dropped rows are compared,
by content, between the two checkouts. Results in bench/out/curate_scale.json, with a line per rule kind
extrapolating the driver's memory and the time to a billion rows from the measured slope.

    python bench/curate_scale.py --rows 1 5 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from harness import OUT_DIR, REPO, checkout_of, command_env, write_results

from pipelines.writer import OUTPUT_SCHEMA

BASELINE = "7def218"  # before filter ran out of core: the whole score set in one process
PIQA = "import sys; from jobs.cli import main; sys.exit(main())"
ROWS_PER_FILE = 1000
SCENES = ("animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others")
RULES = {
    "min-score": ["--min-score", "0.5"],
    "top-fraction": ["--top-fraction", "0.3"],
    "top-fraction per shard": ["--top-fraction", "0.3", "--per", "shard"],
    "bottom+top per scene": ["--bottom-fraction", "0.1", "--top-fraction", "0.5", "--per", "liqe_scene"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=float, nargs="+", default=[1, 5, 20], help="score set sizes, millions")
    parser.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES), help="rule kinds to run")
    parser.add_argument("--baseline", default=BASELINE, help="git revision measured too ('' for none)")
    parser.add_argument(
        "--baseline-max-rows", type=float, default=5, help="largest size (millions) the baseline runs on"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command; the fastest counts")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `piqa filter` arguments")
    return parser.parse_args()


def score_set(millions: float) -> Path:
    """The folder of a synthetic score set of `millions` million rows, made on first use."""
    rows = int(millions * 1_000_000)
    folder = OUT_DIR / "curate_scale" / f"rows-{rows}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)
    started = time.perf_counter()
    for number in range(-(-rows // ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - number * ROWS_PER_FILE)
        shard = f"shard-{number:07d}"
        pq.write_table(synthetic_shard(shard, n, rng), folder / f"{shard}.parquet")
    done.touch()
    print(f"made {rows} rows under {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def synthetic_shard(shard: str, rows: int, rng: np.random.Generator) -> pa.Table:
    broken = rng.random(rows) < 0.01
    score = rng.normal(0.55, 0.12, rows).astype(np.float32)
    faces = rng.integers(0, 3, rows).astype(np.int32)
    columns = {
        "key": pa.array([f"photos/{shard}/{i:05d}.jpg" for i in range(rows)]),
        "source": pa.array([f"s3://bucket/shards/{shard}.tar"] * rows),
        "shard": pa.array([shard] * rows),
        "status": pa.array(np.where(broken, "decode_error", "ok")),
        "error": pa.array([("cannot identify image file" if b else None) for b in broken], pa.string()),
        "width": pa.array(np.full(rows, 1024, np.int32)),
        "height": pa.array(np.full(rows, 1365, np.int32)),
        "num_faces": pa.array(faces, mask=broken),
        "face_box": pa.array([None if b else [100.0, 120.0, 500.0, 600.0] for b in broken], pa.list_(pa.float32())),
        "face_prob": pa.array(rng.uniform(0.9, 1.0, rows).astype(np.float32), mask=broken),
        "score": pa.array(score, mask=broken),
        "liqe_quality": pa.array(rng.uniform(1, 5, rows).astype(np.float32), mask=broken),
        "liqe_scene": pa.array(np.array(SCENES)[rng.integers(0, len(SCENES), rows)], mask=broken),
        "liqe_distortion": pa.array(["blur"] * rows, mask=broken),
        "model": pa.array(["starter-v3"] * rows),
        "scored_at": pa.array(np.full(rows, 1_790_000_000_000_000, "datetime64[us]")).cast(
            pa.timestamp("us", tz="UTC")
        ),
    }
    return pa.table([columns[field.name] for field in OUTPUT_SCHEMA], schema=OUTPUT_SCHEMA)


def run_filter(checkout: Path, scores: Path, out: Path, rules: list[str]) -> dict[str, float]:
    """Wall time and peak resident memory (driver, largest worker) of one whole `piqa filter` command."""
    env = command_env(checkout)
    command = [sys.executable, "-c", PIQA, "filter", str(scores), "--out", str(out), "--emit-dropped", *rules]
    started = time.perf_counter()
    process = psutil.Popen(command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    driver = worker = 0
    while process.poll() is None:
        try:
            driver = max(driver, process.memory_info().rss)
            children = process.children(recursive=True)
            worker = max([worker, *(child.memory_info().rss for child in children if child.is_running())])
        except psutil.Error:
            pass
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return {"seconds": round(elapsed, 2), "driver_peak_gb": round(driver / 1e9, 3), "worker_peak_gb": worker / 1e9}


def rows_of(path: Path) -> set[tuple]:
    """The (key, source, decided_by) rows of a manifest (a file or a folder of parts), for comparing content."""
    table = pq.read_table(path, columns=["key", "source", "decided_by"])
    return set(zip(*(table[name].to_pylist() for name in table.column_names), strict=True))


def same_rows(first: Path, second: Path) -> bool:
    return all(rows_of(first / name) == rows_of(second / name) for name in ("kept.parquet", "dropped.parquet"))


def extrapolate(points: list[tuple[float, float]]) -> float | None:
    """The value at a billion rows of the least-squares line through (millions, value) points."""
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return round(float(slope * 1000 + intercept), 1)


def main() -> None:
    args = parse_args()
    results: dict = {"rows_per_file": ROWS_PER_FILE, "baseline": args.baseline, "runs": []}
    with tempfile.TemporaryDirectory(prefix="curate-scale-") as temporary:
        work = Path(temporary)
        checkouts = {"this code": REPO}
        context = checkout_of(args.baseline, work / "baseline") if args.baseline else None
        if context:
            checkouts["baseline"] = context.__enter__()
        try:
            for millions in args.rows:
                scores = score_set(millions)
                for kind in args.rules:
                    outs = {}
                    for name, checkout in checkouts.items():
                        if name == "baseline" and millions > args.baseline_max_rows:
                            continue
                        outs[name] = work / f"{name.replace(' ', '-')}-{millions}-{kind.replace(' ', '-')}"
                        rules = RULES[kind] + args.extra
                        runs = [run_filter(checkout, scores, outs[name], rules) for _ in range(args.repeats)]
                        figures = min(runs, key=lambda figures: figures["seconds"])
                        run = {"code": name, "millions": millions, "rules": kind, **figures}
                        print(run, flush=True)
                        results["runs"].append(run)
                    if len(outs) == 2:
                        results["runs"][-1]["same_rows_as_baseline"] = same_rows(*outs.values())
                        print(f"  same rows as the baseline: {results['runs'][-1]['same_rows_as_baseline']}")
        finally:
            if context:
                context.__exit__(None, None, None)
    for kind in args.rules:
        ours = [run for run in results["runs"] if run["code"] == "this code" and run["rules"] == kind]
        results.setdefault("billion_rows", {})[kind] = {
            "driver_peak_gb": extrapolate([(run["millions"], run["driver_peak_gb"]) for run in ours]),
            "seconds": extrapolate([(run["millions"], run["seconds"]) for run in ours]),
        }
        print(f"{kind}: a billion rows, extrapolated: {results['billion_rows'][kind]}")
    write_results(OUT_DIR / "curate_scale.json", results)


if __name__ == "__main__":
    main()
