"""How the default bundle ranks a synthetic-degradation set (`piqa data degrade`), kind by kind.

    .venv/bin/python bench/starter_by_kind.py starter-data/london-synthetic      # ~3 min for 102 photos x 25 images

For every source photo (group): SRCC of all 25 images against the labels (what the starter's card reports, here
over every photo of the set, training photos included), and SRCC of the clean image plus the 4 levels of one
kind at a time. Then each kind-and-level's mean score, standardised within its photo: where equal levels of
different kinds are not equally bad to the network, the all-kinds SRCC drops though every kind is in order.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import pyarrow.parquet as pq
from scipy.stats import spearmanr

from piqa_model import load_bundle
from piqa_model.bundle import UntrainedModelWarning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("synthetic", type=Path, help="a folder written by `piqa data degrade` (manifest.parquet)")
    parser.add_argument("--bundle", help="model bundle (default: the shipped default bundle)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UntrainedModelWarning)
    table = pq.read_table(args.synthetic / "manifest.parquet").to_pylist()
    scorer = load_bundle(args.bundle, batch_size=25)
    results = scorer.score([(args.synthetic / row["uri"]).read_bytes() for row in table])
    groups: dict[str, list[dict]] = {}
    for row, result in zip(table, results, strict=True):
        groups.setdefault(row["group"], []).append(row | {"score": result["score"]})

    def srcc(rows: list[dict]) -> float:
        return float(spearmanr([r["label"] for r in rows], [r["score"] for r in rows])[0])

    print(f"{len(groups)} photos; SRCC over each photo's 25 images (mean / median):", end=" ")
    per_group = [srcc(rows) for rows in groups.values()]
    print(f"{statistics.mean(per_group):.3f} / {statistics.median(per_group):.3f}")
    kinds = sorted({row["kind"] for row in table} - {"clean"})
    levels = sorted({row["level"] for row in table} - {0})
    standardised: dict[tuple[str, int], list[float]] = {}
    for rows in groups.values():
        mean, spread = statistics.mean(r["score"] for r in rows), statistics.pstdev(r["score"] for r in rows) or 1.0
        for r in rows:
            standardised.setdefault((r["kind"], r["level"]), []).append((r["score"] - mean) / spread)
    print(f"\n{'kind':15}{'SRCC clean+levels':>18}   mean standardised score: clean, then levels {levels}")
    clean = statistics.mean(standardised[("clean", 0)])
    for kind in kinds:
        within = [srcc([r for r in rows if r["kind"] in (kind, "clean")]) for rows in groups.values()]
        by_level = "".join(f"{statistics.mean(standardised[(kind, level)]):7.2f}" for level in levels)
        print(f"{kind:15}{statistics.mean(within):18.3f}   {clean:7.2f}{by_level}")


if __name__ == "__main__":
    main()
