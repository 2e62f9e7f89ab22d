"""Small jobs, whole commands as a user runs them: one photo, and 60 studio portraits.

Every command runs in its own process, timed from start to exit, with the Makefile's network hygiene and no
RAY_ADDRESS (so `piqa score` decides itself whether a cluster is worth starting):

- one photo: `piqa predict PHOTO` and `piqa score DIR --out OUT` (target: score <= 1.5x predict);
- 60 London portraits (1350x1350): `piqa score` against a one-process loop that does the authors' procedure
  with the same bundle (full decode, full-resolution MTCNN, five crops, batch 1; `harness.naive_loop`), its
  imports and model load included (target: score >= 3x as fast);
- every `piqa score` again with `--runner ray`: the Ray path every job took before, the baseline.

Also measured, for where a small run's time goes: the Python imports of the CLI and of the model libraries, a
local Ray's start and stop, and each run's own time as its summary line reports it (the rest of a command is the
interpreter, imports and exit). The best of `--repeats` runs of each. `python bench/small_jobs.py`; results in
bench/out/small_jobs.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import DATA, OUT_DIR, REPO, spread, write_results

from pipelines.runtime import HYGIENE_ENV

PIQA = str(Path(sys.executable).with_name("piqa"))
TARGETS = {"one photo: score / predict <=": 1.5, "60 portraits: loop / score >=": 3.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command; the best counts")
    parser.add_argument("--images", type=int, default=60, help="London portraits in the folder job")
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # internal: run the loop over this folder
    return parser.parse_args()


def timed(command: list[str], repeats: int) -> tuple[float, str]:
    """The best wall time of `command` over `repeats` runs, and the last run's output."""
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"} | HYGIENE_ENV
    best, output = float("inf"), ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        best, output = min(best, elapsed), done.stdout
    return best, output


def job_seconds(output: str) -> float | None:
    found = re.search(r"in ([0-9.]+) s,", output)
    return float(found.group(1)) if found else None


def run_loop(folder: Path) -> None:
    """The authors' procedure over `folder`, in this process (timed from outside, imports included)."""
    from harness import naive_loop

    from piqa_model import read_bundle
    from piqa_model.bundle import default_bundle_path

    net = read_bundle(default_bundle_path())[0].eval()
    result = naive_loop(sorted(folder.glob("*.jpg")), net, net.config.replace(crop_mode="five"))
    print(f"looped over {result.images} images in {result.seconds:.1f} s, the warm-up image not counted")


def main() -> None:
    args = parse_args()
    if args.loop is not None:
        run_loop(args.loop)
        return
    work = Path(tempfile.mkdtemp(prefix="small-jobs-"))
    one, many = work / "one", work / "london"
    one.mkdir()
    many.mkdir()
    london = sorted((DATA / "portraits" / "london").glob("*.jpg"))
    shutil.copy(london[0], one / london[0].name)
    for path in spread(london, args.images):
        shutil.copy(path, many / path.name)

    python = sys.executable
    rows: dict[str, dict[str, float | None]] = {}

    def measure(name: str, command: list[str]) -> float:
        seconds, output = timed(command, args.repeats)
        rows[name] = {"seconds": round(seconds, 2), "run_seconds": job_seconds(output)}
        run = rows[name]["run_seconds"]
        print(f"{name:<48} {seconds:7.2f} s" + (f"  (the run itself: {run} s)" if run is not None else ""))
        return seconds

    def score(folder: Path, *flags: str) -> list[str]:
        return [PIQA, "score", str(folder), "--out", str(work / "out"), "--overwrite", *flags]

    measure("imports: python -c 'import jobs.cli'", [python, "-c", "import jobs.cli"])
    measure(
        "imports: torch, timm, torchvision, facenet", [python, "-c", "import torch, timm, torchvision, facenet_pytorch"]
    )
    ray_start = "from pipelines.runtime import ensure_ray; import ray; ensure_ray(); ray.shutdown()"
    measure("a local Ray's start and stop", [python, "-c", ray_start])
    n = args.images
    predict = measure("one photo: piqa predict", [PIQA, "predict", str(one / london[0].name)])
    ratios = {
        "one photo: score / predict": measure("one photo: piqa score", score(one)) / predict,
        "one photo: score --runner ray / predict": measure(
            "one photo: piqa score --runner ray", score(one, "--runner", "ray")
        )
        / predict,
    }
    loop = measure(f"{n} portraits: the authors' loop", [python, str(Path(__file__)), "--loop", str(many)])
    ratios[f"{n} portraits: loop / score"] = loop / measure(f"{n} portraits: piqa score", score(many))
    ratios[f"{n} portraits: loop / score --runner ray"] = loop / measure(
        f"{n} portraits: piqa score --runner ray", score(many, "--runner", "ray")
    )
    for name, value in ratios.items():
        print(f"{name:<48} {value:7.2f}x")
    document = {"cpus": os.cpu_count(), "commands": rows, "ratios": {k: round(v, 2) for k, v in ratios.items()}}
    write_results(OUT_DIR / "small_jobs.json", document)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
