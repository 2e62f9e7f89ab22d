"""Held-out quality of model bundles, with BRISQUE beside them as the floor to beat.

    .venv/bin/python bench/quality.py --bundle starter=piqa_model/assets/starter --bundle old=bench/out/old-starter

Every figure is a mean SRCC over series; a series is a set of versions of one photo (or CLIVE's whole test split)
ranked against its labels:
- `clive-test`: authentic camera distortions, the CLIVE images of the starter config's test split, against MOS;
- `generator-test`: `piqa data degrade` versions of the synthetic sets' test photos (never trained on), per
  kind (the clean image and that kind's levels) and all kinds at once. The generator is the training one: these
  figures measure the generator as much as the photos;
- `unseen-fault`: the same test photos degraded by the generator's `contrast` kind, which `make starter` holds out
  of training;
- `independent`: `bench/independent_degradations.py` (other formulas, other filters: nothing in training reads
  it) applied to photos of a source the model never saw (the PIQ23 scene examples, smartphone portraits) and to
  the synthetic sets' test photos: seven faults, four levels each, per (photo, fault) series.

`--brisque PYTHON` scores every image with BRISQUE's stock SVM in that interpreter (`make brisque-env` makes one
at bench/out/brisque-env, the default when it exists). Images and scores are kept under `--out`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from harness import DATA, OUT_DIR, REPO, write_results
from independent_degradations import series as independent_series
from PIL import Image

from piqa_model.bundle import bundle_files, bundle_id, default_bundle_path, read_bundle_config
from piqa_model.images import open_image
from training.config import TrainConfig
from training.degrade import degraded_versions, downscale
from training.heldout import Series, bundle_scores, clean_version, summarise, test_series

UNSEEN_KIND = "contrast"
MAX_SIDE = 768  # the independent set's photos are shown at this longest side (PIQ23 examples are 1800 px)


def unseen_fault_series(generator: list[Series], out: Path) -> list[Series]:
    """The generator's held-out kind on every test photo (from its clean version)."""
    found = []
    for item in generator:
        if item.set != "generator-test" or item.kind != "all kinds":
            continue
        image = open_image(Path(clean_version(item)).read_bytes())
        folder = out / "unseen" / item.group.replace("/", "_")
        paths, labels = [], []
        for version in degraded_versions(image, (UNSEEN_KIND,), 3, np.random.default_rng(len(found))):
            path = folder / f"{version.kind}-{version.level}.png"
            _save(version.image, path)
            paths.append(str(path))
            labels.append(-version.severity)
        found.append(Series("unseen-fault", UNSEEN_KIND, item.group, tuple(paths), tuple(labels)))
    return found


def independent_sets(generator: list[Series], out: Path, piq23_photos: int) -> list[Series]:
    sources = {f"piq23/{p.stem}": p for p in sorted((DATA / "piq23" / "examples").glob("*"))[:piq23_photos]}
    for item in generator:
        if item.set == "generator-test" and item.kind == "all kinds":
            sources[item.group] = Path(clean_version(item))
    found = []
    for group, source in sources.items():
        photo = downscale(open_image(source.read_bytes()), MAX_SIDE)
        origin = "unseen photos (PIQ23 examples)" if group.startswith("piq23/") else "test photos of the synthetic sets"
        for fault, images in independent_series(photo).items():
            paths = []
            for level, image in enumerate(images):
                path = out / "independent" / group.replace("/", "_") / f"{fault}-{level}.png"
                _save(image, path)
                paths.append(str(path))
            found.append(
                Series(f"independent: {origin}", fault, group, tuple(paths), tuple(-float(i) for i in range(5)))
            )
    return found


def _save(image: Image.Image, path: Path) -> None:
    """Write once, atomically: an interrupted run leaves no truncated image for the next one to reuse."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.png")
        image.save(partial, compress_level=1)
        partial.replace(path)


def brisque_scores(python: str, paths: list[str], out: Path) -> dict[str, float | None]:
    listing, result = out / "brisque-inputs.json", out / "brisque-scores.json"
    listing.write_text(json.dumps(paths))
    subprocess.run([python, str(REPO / "bench" / "brisque_scores.py"), str(listing), str(result)], check=True)
    return json.loads(result.read_text())


def cached(path: Path, paths: list[str], compute) -> dict[str, float | None]:
    """Scores kept at `path` (the images are deterministic), with `compute(missing)` run for the paths it lacks."""
    kept = json.loads(path.read_text()) if path.exists() else {}
    missing = [p for p in paths if p not in kept]
    if missing:
        kept.update(compute(missing))
        path.write_text(json.dumps(kept))
    return kept


def scored_id(bundle: str | None) -> str:
    files = bundle_files(bundle or default_bundle_path())
    return bundle_id(files, read_bundle_config(files)[1])


def markdown(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    names = list(summaries)
    rows = sorted({(s, k) for summary in summaries.values() for s, kinds in summary.items() for k in kinds})
    lines = [f"| set | kind | {' | '.join(names)} |", f"| --- | --- |{' ---: |' * len(names)}"]
    for set_name, kind in rows:
        cells = [summaries[n].get(set_name, {}).get(kind) for n in names]
        lines.append(f"| {set_name} | {kind} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", action="append", default=[], help="NAME=PATH (repeat); default: the shipped one")
    parser.add_argument("--config", default=str(REPO / "configs" / "starter.yaml"), help="whose test split to use")
    default_brisque = OUT_DIR / "brisque-env" / "bin" / "python"
    parser.add_argument("--brisque", default=str(default_brisque) if default_brisque.exists() else None)
    parser.add_argument("--piq23-photos", type=int, default=50, help="PIQ23 example photos in the independent set")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "quality")
    args = parser.parse_args()
    bundles = dict(item.split("=", 1) for item in args.bundle) or {"starter": None}
    config = TrainConfig.from_yaml(args.config)
    generator = test_series(config)
    all_series = (
        generator + unseen_fault_series(generator, args.out) + independent_sets(generator, args.out, args.piq23_photos)
    )
    paths = sorted({p for item in all_series for p in item.paths})
    print(f"{len(all_series)} series over {len(paths)} images", flush=True)
    summaries = {}
    for name, bundle in bundles.items():
        kept = args.out / f"scores-{scored_id(bundle)}.json"
        scores = cached(kept, paths, lambda missing, b=bundle: bundle_scores(b, missing))
        summaries[name] = summarise(all_series, scores)
        print(f"scored with {name}", flush=True)
    if args.brisque:
        kept = args.out / "scores-brisque.json"
        scores = cached(kept, paths, lambda missing: brisque_scores(args.brisque, missing, args.out))
        summaries["BRISQUE"] = summarise(all_series, scores)
    table = markdown(summaries)
    print(table)
    write_results(args.out / "quality.json", {"bundles": bundles, "summaries": summaries, "table": table})


if __name__ == "__main__":
    main()
