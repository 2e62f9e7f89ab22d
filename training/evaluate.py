"""Predictions on a split and the metrics we select and promote by: per group, aggregated by mean and median,
over all groups and per dataset (a CLIVE set is one group; synthetic sets have one group per source photo)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from piqa_model import DualBranchNet
from piqa_model.metrics import GroupReport, evaluate_groups
from training.data import ExampleDataset, collate, eval_batches
from training.table import Example

METRICS = ("srcc", "krcc", "plcc", "rmse", "mae")


@torch.no_grad()
def predict_examples(
    net: DualBranchNet,
    dataset: ExampleDataset,
    batch_size: int,
    precision: str = "fp32",
    rank: int = 0,
    world: int = 1,
) -> dict[int, float]:
    """{index: image score} for this worker's share of `dataset` (inference views, mean over crops)."""
    net.eval()
    device = net.device
    scores: dict[int, float] = {}
    for indices in eval_batches(len(dataset), batch_size, rank, world):
        batch = collate([dataset[i] for i in indices])
        aux = None if batch.aux is None else batch.aux.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net.score_images(batch.overall.to(device), batch.face.to(device), aux).float().cpu()
        scores.update(zip(indices, out.tolist(), strict=True))
    return scores


def group_reports(examples: Sequence[Example], scores: Sequence[float]) -> dict[str, GroupReport]:
    """{"all": report over every group, dataset: report over that dataset's groups}."""
    labels = [e.label for e in examples]
    groups = [e.group for e in examples]
    reports = {"all": evaluate_groups(scores, labels, groups)}
    for dataset in sorted({e.dataset for e in examples}):
        idx = [i for i, e in enumerate(examples) if e.dataset == dataset]
        reports[dataset] = evaluate_groups([scores[i] for i in idx], [labels[i] for i in idx], [groups[i] for i in idx])
    return reports


def flat_metrics(reports: dict[str, GroupReport], prefix: str) -> dict[str, float]:
    """{"<prefix>/srcc_mean": ..., "<prefix>/<dataset>/srcc_median": ...}; NaN values are left out."""
    flat: dict[str, float] = {}
    for scope, report in reports.items():
        head = prefix if scope == "all" else f"{prefix}/{scope}"
        for aggregate in ("mean", "median"):
            metrics = getattr(report, aggregate)
            for name in METRICS:
                value = getattr(metrics, name)
                if not math.isnan(value):
                    flat[f"{head}/{name}_{aggregate}"] = value
    return flat


def group_rows(reports: dict[str, GroupReport]) -> list[dict[str, object]]:
    """The per-group table (and each dataset's mean/median rows), for the run's artifacts."""
    rows = []
    for scope, report in reports.items():
        if scope == "all":
            continue
        for row in report.to_rows():
            rows.append({"dataset": scope, **row})
    return rows


def score_array(scores: dict[int, float], count: int) -> np.ndarray:
    return np.array([scores[i] for i in range(count)], dtype=float)


def metrics_table(metrics: dict[str, float], datasets: Sequence[str], prefix: str = "test") -> str:
    """A Markdown table of `flat_metrics` output: one row for all groups, then one per dataset."""
    columns = ["srcc_mean", "srcc_median", "krcc_mean", "plcc_mean", "rmse_mean", "mae_mean"]
    lines = [
        "Computed per group (a source photo, a PIQ23 scene; a CLIVE-style set is one group), then aggregated over "
        "groups by mean (DN-PIQA) and median (PIQ23); PLCC, RMSE and MAE after a 4-parameter logistic fit, RMSE "
        "and MAE in label units.",
        "",
        "| test set | SRCC mean | SRCC median | KRCC mean | PLCC mean | RMSE mean | MAE mean |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scope in ["all groups", *datasets]:
        head = prefix if scope == "all groups" else f"{prefix}/{scope}"
        cells = [f"{metrics[f'{head}/{c}']:.4f}" if f"{head}/{c}" in metrics else "-" for c in columns]
        lines.append(f"| {scope} | {' | '.join(cells)} |")
    return "\n".join(lines)
