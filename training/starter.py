"""Ship the starter model: copy a registered version into `piqa_model/assets/starter` with its model card.

`make starter` trains it (configs/starter.yaml) and calls `python -m training.starter`; the card states
the data, the recipe and the held-out metrics measured by that training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from piqa_model.bundle import CONFIG_FILE, SHIPPED_BUNDLE, read_bundle, save_bundle
from piqa_model.registry import download_registered_bundle
from training.evaluate import metrics_table

DESCRIPTION = (
    "Starter model: the small `small-224` network (2.5 M parameters) trained from scratch on a CPU on CLIVE and on "
    "synthetic degradations of public portraits. It ranks blur, noise, compression, exposure and colour faults "
    "well, but it is a small starter model, far from DN-PIQA's accuracy on real portrait photos."
)

PREFACE = """\
**This is a small starter model**, shipped so that `piqa score` gives meaningful scores out of the box. It is
not DN-PIQA: for real use, import the authors' released weights (two Swin-B branches, LIQE features) with

    piqa weights import-dnpiqa --checkpoint PIQ_model.pth --liqe LIQE.pt --out bundles/dn-piqa
    piqa score INPUT --out OUTPUT --bundle bundles/dn-piqa

or retrain the full `dn-piqa` preset on PIQ23 and your labelled data with `piqa train` (see README).

"""


def ship(uri: str, tracking_uri: str, out: Path = SHIPPED_BUNDLE, cache: Path | None = None) -> Path:
    """Copy the bundle at registry `uri` to `out`, with the starter's description and card."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        source = download_registered_bundle(uri, cache or Path(directory), tracking_uri)
        net, info, _ = read_bundle(source)
        sections = (source / "MODEL_CARD.md").read_text().split("\n## ")[1:]  # Data, Recipe, Test metrics, ...
        datasets = sorted({key.split("/")[1] for key in info.metrics if key.count("/") == 2})
        sections = [
            f"Test metrics\n\n{metrics_table(info.metrics, datasets)}\n" if title.startswith("Test metrics") else title
            for title in sections
        ]
        rest = "\n## ".join(["", *sections]).lstrip("\n")
        starter = dataclasses.replace(info, name="starter", description=DESCRIPTION, source=f"{uri} ({info.source})")
        provenance = (
            "Trained with `make starter`: `configs/starter.yaml` (10 epochs from scratch), "
            "`configs/starter-finetune.yaml` (8 epochs, lower learning rate), `configs/starter-stage3.yaml` "
            "(5 epochs of 12-image same-photo chunks), `configs/starter-stage4.yaml` (12 more epochs of those "
            "chunks), then `configs/starter-stage5.yaml` (the recipe below: 8 epochs at half the learning rate); "
            f"registry source: {starter.source}.\n\n"
        )
        card = f"# Model card: starter ({net.config.name})\n\n{PREFACE}{provenance}{rest}"
        path = save_bundle(net, out, starter, card)
    document = json.loads((path / CONFIG_FILE).read_text())
    print(f"shipped {uri} to {path} ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)")
    print(json.dumps({k: round(v, 4) for k, v in document["bundle"]["metrics"].items() if "srcc" in k}, indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/portrait-quality-starter@champion")
    parser.add_argument("--tracking-uri", default="sqlite:///starter-data/mlflow.db")
    parser.add_argument("--out", type=Path, default=SHIPPED_BUNDLE)
    args = parser.parse_args()
    ship(args.model, args.tracking_uri, args.out)


if __name__ == "__main__":
    main()
