"""Small jobs, whole commands as a user runs them: one photo, 60 studio portraits, and curating their scores.

Every command runs in its own process, timed from start to exit, with the Makefile's network hygiene and no
RAY_ADDRESS (so `piqa score` decides itself whether a cluster is worth starting):

- one photo: `piqa predict PHOTO` and `piqa score DIR --out OUT` (target: score <= 1.5x predict);
- 60 London portraits (1350x1350): `piqa score` against a one-process loop that does the authors' procedure
  with the same bundle (full decode, full-resolution MTCNN, five crops, batch 1; `harness.naive_loop`), its
  imports and model load included (target: score >= 3x as fast);
- `piqa filter` (with `--report`) and `piqa report` on the 60 portraits' scores;
- every `piqa score` again with `--runner ray`: the Ray path every job took before issue 19;
- every `piqa` command again from `--baseline` (a git worktree of that revision, measured in the same run).

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

from harness import DATA, OUT_DIR, REPO, checkout_of, command_env, spread, write_results

BASELINE = "7713219"  # before the stages ran in threads and the CLI stopped importing scipy and torch to curate
PIQA = "import sys; from jobs.cli import main; sys.exit(main())"  # the `piqa` console script, for any checkout
TARGETS = {"one photo: score / predict <=": 1.5, "60 portraits: loop / score >=": 3.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command; the best counts")
    parser.add_argument("--images", type=int, default=60, help="London portraits in the folder job")
    parser.add_argument("--baseline", default=BASELINE, help="git revision whose commands are measured too")
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # internal: run the loop over this folder
    return parser.parse_args()


def timed(command: list[str], repeats: int, checkout: Path = REPO) -> tuple[float, str]:
    """The best wall time of `command` over `repeats` runs in `checkout`'s code, and the last run's output."""
    env = command_env(checkout)
    best, output = float("inf"), ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
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
    photo = one / london[0].name
    shutil.copy(london[0], photo)
    for path in spread(london, args.images):
        shutil.copy(path, many / path.name)

    python = sys.executable
    rows: dict[str, dict[str, float | None]] = {}

    def measure(name: str, command: list[str], checkout: Path = REPO) -> float:
        seconds, output = timed(command, args.repeats, checkout)
        rows[name] = {"seconds": round(seconds, 2), "run_seconds": job_seconds(output)}
        run = rows[name]["run_seconds"]
        print(f"{name:<56} {seconds:7.2f} s" + (f"  (the run itself: {run} s)" if run is not None else ""))
        return seconds

    def piqa(*arguments: str | Path) -> list[str]:
        return [python, "-c", PIQA, *map(str, arguments)]

    scores, curated = work / "scores", work / "curated"
    output = ("--out", str(scores), "--overwrite")
    n = args.images
    measure("imports: python -c 'import jobs.cli'", [python, "-c", "import jobs.cli"])
    measure(
        "imports: torch, timm, torchvision, facenet", [python, "-c", "import torch, timm, torchvision, facenet_pytorch"]
    )
    ray_start = "from pipelines.runtime import ensure_ray; import ray; ensure_ray(); ray.shutdown()"
    measure("a local Ray's start and stop", [python, "-c", ray_start])
    loop = measure(f"{n} portraits: the authors' loop", [python, str(Path(__file__)), "--loop", str(many)])
    ratios: dict[str, float] = {}

    def commands(label: str, checkout: Path, *flags: str) -> None:
        """Every `piqa` command of a small job, in `checkout`'s code; `flags` go to `piqa score`."""
        predict = measure(f"{label}one photo: piqa predict", piqa("predict", photo), checkout)
        score_one = measure(f"{label}one photo: piqa score", piqa("score", one, *output, *flags), checkout)
        score_many = measure(f"{label}{n} portraits: piqa score", piqa("score", many, *output, *flags), checkout)
        ratios[f"{label}one photo: score / predict"] = score_one / predict
        ratios[f"{label}{n} portraits: loop / score"] = loop / score_many
        if flags:
            return
        shutil.rmtree(curated, ignore_errors=True)
        curate = piqa("filter", scores, "--out", curated, "--top-fraction", "0.5", "--report")
        measure(f"{label}{n} scores: piqa filter --report", curate, checkout)
        measure(f"{label}{n} scores: piqa report", piqa("report", scores, "--out", work / "report.html"), checkout)

    commands("", REPO)
    commands("--runner ray: ", REPO, "--runner", "ray")
    with checkout_of(args.baseline, work / "baseline") as baseline:
        commands(f"before ({args.baseline}): ", baseline)
    for name, value in ratios.items():
        print(f"{name:<56} {value:7.2f}x")
    document = {
        "cpus": os.cpu_count(),
        "baseline": args.baseline,
        "targets": TARGETS,
        "commands": rows,
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
    }
    write_results(OUT_DIR / "small_jobs.json", document)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
