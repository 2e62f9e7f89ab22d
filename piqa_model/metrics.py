"""Evaluation metrics for quality predictions: SRCC, KRCC, PLCC, RMSE and MAE, overall and per group.

Rank correlations (SRCC, KRCC) use the raw predictions. PLCC, RMSE and MAE use predictions mapped onto
the label scale by the standard VQEG 4-parameter monotonic logistic, fitted to the labels, so that a
monotonic but nonlinear relation is not penalised.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

_FIELDS = ("srcc", "krcc", "plcc", "rmse", "mae")
MIN_GROUP_SIZE = 3


def logistic_4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2: rises from b2 to b1, centred at b3, width |b4|."""
    with np.errstate(over="ignore"):  # exp overflowing to inf gives the correct limit b2
        return (b1 - b2) / (1 + np.exp(-(np.asarray(x, dtype=float) - b3) / abs(b4))) + b2


def logistic_parameters(
    pred: ArrayLike, label: ArrayLike, label_range: tuple[float, float] | None = None
) -> np.ndarray | None:
    """`logistic_4`'s (b1, b2, b3, b4) least-squares fitted to map `pred` onto `label`; None when it cannot be
    fitted (fewer points than its 4 parameters, constant predictions, curve_fit not converging, non-finite).

    `label_range` (low, high) keeps both asymptotes inside it, so that the curve bends within the label scale
    instead of running straight past its ends.
    """
    from scipy import optimize  # scipy where it is used: `piqa filter` and `report` import this module

    x, y = _pair(pred, label)
    if len(x) < 4 or np.ptp(x) == 0:
        return None
    p0 = [y.max(), y.min(), x.mean(), x.std() / 4]
    bounds = (-np.inf, np.inf)
    if label_range is not None:
        low, high = label_range
        bounds = ([low, low, -np.inf, 1e-9], [high, high, np.inf, np.inf])
        p0 = [min(max(p0[0], low), high), min(max(p0[1], low), high), p0[2], max(p0[3], 1e-6)]
    try:
        with warnings.catch_warnings():
            # Only the fitted values are used, so an unestimable covariance does not matter.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(logistic_4, x, y, p0=p0, bounds=bounds, maxfev=10000)
    except RuntimeError:
        return None
    return params if np.all(np.isfinite(logistic_4(x, *params))) else None


def fit_logistic(pred: ArrayLike, label: ArrayLike) -> np.ndarray:
    """Predictions mapped onto the label scale by `logistic_4` least-squares fitted to the labels.

    Falls back to a linear least-squares fit (np.polyfit, degree 1) when the logistic cannot be fitted
    (`logistic_parameters`). Constant predictions carry no information to fit, so they map to the mean label
    (the best constant).
    """
    x, y = _pair(pred, label)
    if np.ptp(x) == 0:
        return np.full_like(y, y.mean())
    params = logistic_parameters(x, y)
    if params is not None:
        return logistic_4(x, *params)
    return np.polyval(np.polyfit(x, y, 1), x)


@dataclass(frozen=True)
class Metrics:
    """Agreement between predictions and labels. Undefined values (too few or constant items) are NaN."""

    srcc: float
    krcc: float
    plcc: float
    rmse: float
    mae: float
    n: int

    @classmethod
    def undefined(cls, n: int) -> Metrics:
        return cls(math.nan, math.nan, math.nan, math.nan, math.nan, n)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(pred: ArrayLike, label: ArrayLike) -> Metrics:
    """SRCC and KRCC on the raw predictions; PLCC, RMSE and MAE on `fit_logistic` predictions.

    With fewer than 2 items every metric is NaN; with constant predictions or labels the correlations
    are NaN (and RMSE/MAE those of the best constant fit).
    """
    from scipy import stats

    x, y = _pair(pred, label)
    if len(x) < 2:
        return Metrics.undefined(len(x))
    fitted = fit_logistic(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        srcc = stats.spearmanr(x, y).statistic
        krcc = stats.kendalltau(x, y).statistic
        plcc = stats.pearsonr(fitted, y).statistic
    error = fitted - y
    return Metrics(
        srcc=float(srcc),
        krcc=float(krcc),
        plcc=float(plcc),
        rmse=float(np.sqrt(np.mean(error**2))),
        mae=float(np.mean(np.abs(error))),
        n=len(x),
    )


@dataclass(frozen=True)
class GroupReport:
    """Metrics per group and their aggregate over groups.

    `mean` is DN-PIQA's aggregation over scenes, `median` the PIQ23 benchmark table's. Both ignore NaN
    values and groups with fewer than `MIN_GROUP_SIZE` items (listed in `per_group` with NaN metrics);
    their `n` is the number of items in the aggregated groups.
    """

    per_group: dict[str, Metrics]
    mean: Metrics
    median: Metrics

    def to_rows(self) -> list[dict[str, str | float | int]]:
        """One row per group, then a 'mean' and a 'median' row; each has a 'group' key and the metrics."""
        named = [*self.per_group.items(), ("mean", self.mean), ("median", self.median)]
        return [{"group": name, **metrics.to_dict()} for name, metrics in named]


def evaluate_groups(pred: ArrayLike, label: ArrayLike, groups: Sequence[Hashable]) -> GroupReport:
    """Evaluate each group on its own (its own logistic fit), then aggregate over groups.

    Groups are keyed by `str(group)`, in order of first appearance.
    """
    x, y = _pair(pred, label)
    if len(groups) != len(x):
        raise ValueError(f"groups has {len(groups)} entries but there are {len(x)} predictions")
    by_group: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    per_group = {
        str(group): evaluate(x[idx], y[idx]) if len(idx) >= MIN_GROUP_SIZE else Metrics.undefined(len(idx))
        for group, idx in by_group.items()
    }
    counted = [m for m in per_group.values() if m.n >= MIN_GROUP_SIZE]
    return GroupReport(per_group, _aggregate(counted, np.mean), _aggregate(counted, np.median))


def _aggregate(metrics: list[Metrics], reduce: Callable[[np.ndarray], float]) -> Metrics:
    values: dict[str, float] = {}
    for name in _FIELDS:
        column = np.array([getattr(m, name) for m in metrics], dtype=float)
        column = column[~np.isnan(column)]
        values[name] = float(reduce(column)) if column.size else math.nan
    return Metrics(**values, n=sum(m.n for m in metrics))


def _pair(pred: ArrayLike, label: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=float)
    y = np.asarray(label, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"pred and label must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    return x, y
