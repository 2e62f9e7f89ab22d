"""BRISQUE (stock LIVE-trained SVM, PyPI `brisque`) scores for a list of image files; runs in its own environment.

    bench/out/brisque-env/bin/python bench/brisque_scores.py LIST.json OUT.json

`brisque` needs numpy < 2 and OpenCV, which the project's environment does not have: `make brisque-env` makes
that environment, and `bench/quality.py --brisque` calls this script in it. BRISQUE's score is lower for better
images; OUT holds it negated, so that higher is better as for every other score here.
"""

import json
import multiprocessing
import sys
import warnings
from pathlib import Path

import numpy as np
from brisque import BRISQUE
from PIL import Image


def score(path: str) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return -float(BRISQUE(url=False).score(np.asarray(Image.open(path).convert("RGB"))))
    except Exception as exc:  # a failure is recorded, not fatal: BRISQUE fails on flat images
        print(f"brisque failed on {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def main() -> None:
    paths = json.loads(Path(sys.argv[1]).read_text())
    with multiprocessing.Pool() as pool:  # one process per core: BRISQUE is pure NumPy/SciPy
        scores = dict(zip(paths, pool.map(score, paths, chunksize=16), strict=True))
    Path(sys.argv[2]).write_text(json.dumps(scores))


if __name__ == "__main__":
    main()
