"""Ship the starter model: copy a registered version into `piqa_model/assets/starter`, calibrated, with its card.

`make starter` trains it (configs/starter.yaml) and calls `python -m training.starter`. Shipping fits the score
scale (`piqa_model.calibration`) on the CLIVE validation split and measures the held-out figures per fault kind on
the test split (`training.heldout`); the card states the data, the recipe and those figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from piqa_model.bundle import CARD_FILE, CONFIG_FILE, SHIPPED_BUNDLE, read_bundle, save_bundle
from piqa_model.calibration import ScoreScale
from piqa_model.registry import download_registered_bundle
from training.config import TrainConfig
from training.evaluate import metrics_table
from training.heldout import bundle_scores, split_examples, summarise, test_series

STORED_AS = torch.float16
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "starter.yaml"

DESCRIPTION = (
    "Starter model: two ImageNet-pretrained EfficientNet-Lite0 branches (whole photo and face, 352 px, 7 M "
    "parameters) fine-tuned on a CPU on the CLIVE training split and on randomised synthetic degradations of "
    "public portraits. Scores are on a 0-100 scale calibrated to CLIVE's mean opinion scores."
)

PREFACE = """\
**This is a small starter model**, shipped so that `piqa score` gives meaningful scores out of the box. It is
not DN-PIQA: for the paper's accuracy, import the authors' released weights (two Swin-B branches, LIQE features)
with

    piqa weights import-dnpiqa --checkpoint PIQ_model.pth --liqe LIQE.pt --out bundles/dn-piqa
    piqa score INPUT --out OUTPUT --bundle bundles/dn-piqa

or retrain the full `dn-piqa` preset on PIQ23 and your labelled data with `piqa train` (see README).

**Good for:** ranking photos by gross technical faults: blur (focus, motion), noise, compression, under- and
over-exposure, low resolution, colour casts, and authentic phone-camera degradations of the kind CLIVE holds.
**Not good for:** aesthetics, pose, expression or identity; fine differences between good photos; comparing its
scores with another model's.

"""

SCALE = """\
## Score scale

`score` is on a 0-100 scale, higher is better: the network's raw output mapped by a monotone 4-parameter logistic
fitted on {fitted_on} (CLIVE's mean opinion scores, 0-100). A score of 60 is what CLIVE's raters gave photos the
network rated alike; clean studio portraits score near the top of the range, and the worst of CLIVE near its
bottom. The mapping never changes a ranking. To choose `--min-score`, look at the run's distribution first
(`piqa report`'s histogram, or `--bottom-fraction F` to drop a share instead of a level).

"""


def fit_scale(bundle: Path, config: TrainConfig) -> ScoreScale:
    """The logistic from the bundle's raw scores to MOS on the CLIVE validation split."""
    val = [e for e in split_examples(config, "val") if e.dataset == "clive"]
    scores = bundle_scores(bundle, [e.uri for e in val])
    return ScoreScale.fit(
        [scores[e.uri] for e in val], [e.label for e in val], f"the CLIVE validation split ({len(val)} photos)"
    )


def per_kind_table(bundle: Path, config: TrainConfig) -> str:
    series = test_series(config)
    summary = summarise(series, bundle_scores(bundle, sorted({p for item in series for p in item.paths})))
    lines = ["| test set | kind | SRCC |", "| --- | --- | ---: |"]
    for name, kinds in summary.items():
        lines += [f"| {name} | {kind} | {value:.3f} |" for kind, value in kinds.items()]
    return "\n".join(lines)


def ship(uri: str, tracking_uri: str, config: TrainConfig, out: Path = SHIPPED_BUNDLE) -> Path:
    """Copy the bundle at registry `uri` to `out`, calibrated, with the starter's description and card."""
    with tempfile.TemporaryDirectory() as directory:
        registered = download_registered_bundle(uri, Path(directory), tracking_uri)
        net, info, _ = read_bundle(registered)
        # Stored in half precision (the repository's size limit); the scale and the figures are the stored model's.
        source = save_bundle(net, Path(directory) / "half", info, (registered / CARD_FILE).read_text(), STORED_AS)
        net, _, _ = read_bundle(source)
        scale = fit_scale(source, config)
        kinds = per_kind_table(source, config)
        sections = (source / CARD_FILE).read_text().split("\n## ")[1:]  # Data, Recipe, Test metrics, ...
        datasets = sorted({key.split("/")[1] for key in info.metrics if key.count("/") == 2})
        sections = [
            f"Test metrics\n\n{metrics_table(info.metrics, datasets)}\n" if title.startswith("Test metrics") else title
            for title in sections
        ]
        rest = "\n## ".join(["", *sections]).lstrip("\n")
        starter = dataclasses.replace(
            info,
            name="starter",
            description=DESCRIPTION,
            source=f"{uri} ({info.source})",
            score_scale=scale.to_dict(),
        )
        provenance = (
            "Trained with `make starter`: `piqa data degrade` on the London and Congress portraits (every kind but "
            "`contrast`, held out as a fault the model never sees), then `configs/starter.yaml`, then this card "
            f"and the score scale (`python -m training.starter`); registry source: {starter.source}.\n\n"
        )
        held_out = (
            "## Held-out SRCC per fault kind\n\nOn the test split: photos never trained on, each a series of its "
            "clean version and one kind's levels (mean SRCC over photos); CLIVE's test split against MOS. The "
            "synthetic versions come from the training generator; faults and photos it never made, and BRISQUE "
            f"beside this model, are in BENCHMARKS.md (`make quality`).\n\n{kinds}\n\n"
        )
        card = (
            f"# Model card: starter ({net.config.name})\n\n{PREFACE}{provenance}"
            f"{SCALE.format(fitted_on=scale.fitted_on)}{held_out}{rest}"
        )
        path = save_bundle(net, out, starter, card, STORED_AS)
    document = json.loads((path / CONFIG_FILE).read_text())
    print(f"shipped {uri} to {path} ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)")
    print(json.dumps({k: round(v, 4) for k, v in document["bundle"]["metrics"].items() if "srcc" in k}, indent=2))
    print(kinds)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/portrait-quality-starter@champion")
    parser.add_argument("--tracking-uri", default="sqlite:///starter-data/mlflow.db")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the training config (its splits)")
    parser.add_argument("--out", type=Path, default=SHIPPED_BUNDLE)
    args = parser.parse_args()
    ship(args.model, args.tracking_uri, TrainConfig.from_yaml(args.config), args.out)


if __name__ == "__main__":
    main()
