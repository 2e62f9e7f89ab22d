import math
import warnings
from dataclasses import asdict

import numpy as np
import pytest
from scipy import optimize, stats

from piqa_model.metrics import GroupReport, Metrics, evaluate, evaluate_groups, fit_logistic, logistic_4


def test_logistic_4_values():
    x = np.array([-1.0, 0.0, 2.0])
    expected = (5.0 - 1.0) / (1 + np.exp(-(x - 0.5) / 0.25)) + 1.0
    np.testing.assert_allclose(logistic_4(x, 5.0, 1.0, 0.5, -0.25), expected)
    assert logistic_4(np.array([-1e6]), 5.0, 1.0, 0.0, 1.0)[0] == 1.0  # overflow gives the lower limit


def test_correlations_match_scipy_on_random_data():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=80)
    label = pred + rng.normal(scale=0.7, size=80)
    m = evaluate(pred, label)
    assert m.srcc == pytest.approx(stats.spearmanr(pred, label).statistic, rel=1e-12)
    assert m.krcc == pytest.approx(stats.kendalltau(pred, label).statistic, rel=1e-12)
    fitted = fit_logistic(pred, label)
    assert m.plcc == pytest.approx(stats.pearsonr(fitted, label).statistic, rel=1e-12)
    assert m.n == 80


def test_errors_are_computed_on_fitted_predictions():
    rng = np.random.default_rng(1)
    pred = rng.uniform(-3, 3, size=60)
    label = 40 + 20 * np.tanh(pred) + rng.normal(scale=2, size=60)
    m = evaluate(pred, label)
    fitted = fit_logistic(pred, label)
    assert m.rmse == pytest.approx(np.sqrt(np.mean((fitted - label) ** 2)), rel=1e-12)
    assert m.mae == pytest.approx(np.mean(np.abs(fitted - label)), rel=1e-12)
    # On the raw scale the error would be far larger: the fit maps predictions onto the labels.
    assert m.rmse < 5 < np.sqrt(np.mean((pred - label) ** 2))


def test_monotonic_nonlinear_relation_is_fitted():
    rng = np.random.default_rng(2)
    pred = rng.uniform(-2, 2, size=100)
    label = 3 * np.tanh(2 * pred) + 5
    assert stats.pearsonr(pred, label).statistic < 0.97  # so a linear map would not pass
    m = evaluate(pred, label)
    assert m.plcc > 0.99
    assert m.srcc == pytest.approx(1.0)
    assert m.krcc == pytest.approx(1.0)


def test_exponential_relation_keeps_perfect_rank_correlation():
    pred = np.linspace(0.0, 1.0, 30)
    m = evaluate(pred, np.exp(pred))
    assert m.srcc == pytest.approx(1.0)
    assert m.plcc > 0.99


def test_fit_falls_back_to_linear_when_logistic_fit_fails(monkeypatch: pytest.MonkeyPatch):
    def failing_curve_fit(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(optimize, "curve_fit", failing_curve_fit)
    pred = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    label = np.array([1.0, 2.5, 2.9, 4.2, 5.1])
    np.testing.assert_allclose(fit_logistic(pred, label), np.polyval(np.polyfit(pred, label, 1), pred))


@pytest.mark.parametrize(
    ("pred", "label"),
    [
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]),
        ([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]),
        ([0.5], [3.0]),
        ([], []),
    ],
)
def test_degenerate_input_gives_nan_correlations_without_warnings(pred: list[float], label: list[float]):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate(pred, label)
    assert math.isnan(m.srcc) and math.isnan(m.krcc) and math.isnan(m.plcc)
    assert m.n == len(pred)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="equal length"):
        evaluate([1.0, 2.0, 3.0], [1.0, 2.0])


def _grouped_data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    sizes = {"indoor": 12, "night": 7, "outdoor": 20, "lowlight": 5, "solo": 1, "duo": 2}
    groups = [name for name, n in sizes.items() for _ in range(n)]
    order = rng.permutation(len(groups))
    groups = [groups[i] for i in order]
    pred = rng.normal(size=len(groups))
    label = 2 * pred + rng.normal(scale=1.5, size=len(groups))
    return pred, label, groups


def test_evaluate_groups_evaluates_each_group_alone():
    pred, label, groups = _grouped_data()
    report = evaluate_groups(pred, label, groups)
    assert set(report.per_group) == set(groups)
    for name in ("indoor", "night", "outdoor", "lowlight"):
        idx = [i for i, g in enumerate(groups) if g == name]
        alone = evaluate(pred[idx], label[idx])
        # The logistic fit behind PLCC, RMSE and MAE iterates: copies of the same numbers may end 1e-11 apart.
        assert asdict(report.per_group[name]) == pytest.approx(asdict(alone), rel=1e-9)
    for name in ("solo", "duo"):
        small = report.per_group[name]
        assert math.isnan(small.srcc) and math.isnan(small.plcc) and math.isnan(small.rmse)


def test_evaluate_groups_aggregates_match_numpy():
    pred, label, groups = _grouped_data()
    report = evaluate_groups(pred, label, groups)
    counted = [report.per_group[name] for name in ("indoor", "night", "outdoor", "lowlight")]
    for field in ("srcc", "krcc", "plcc", "rmse", "mae"):
        values = [getattr(m, field) for m in counted]
        assert getattr(report.mean, field) == pytest.approx(np.mean(values), rel=1e-12)
        assert getattr(report.median, field) == pytest.approx(np.median(values), rel=1e-12)
    assert report.mean.n == report.median.n == 12 + 7 + 20 + 5


def test_aggregation_ignores_nan_values():
    # Group "flat" has constant labels, so its correlations are NaN but its errors are defined.
    pred = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0])
    label = np.array([1.0, 2.0, 2.5, 5.0, 3.0, 3.0, 3.0, 3.0, 4.0, 1.0, 2.0])
    groups = ["up"] * 4 + ["flat"] * 4 + ["mixed"] * 3
    report = evaluate_groups(pred, label, groups)
    assert math.isnan(report.per_group["flat"].srcc)
    srccs = [report.per_group["up"].srcc, report.per_group["mixed"].srcc]
    assert report.mean.srcc == pytest.approx(np.mean(srccs))
    rmses = [report.per_group[g].rmse for g in ("up", "flat", "mixed")]
    assert report.median.rmse == pytest.approx(np.median(rmses))


def test_report_rows_and_all_small_groups():
    pred, label, groups = _grouped_data()
    rows = evaluate_groups(pred, label, groups).to_rows()
    assert [r["group"] for r in rows][-2:] == ["mean", "median"]
    assert len(rows) == len(set(groups)) + 2
    assert set(rows[0]) == {"group", "srcc", "krcc", "plcc", "rmse", "mae", "n"}

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = evaluate_groups([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1, 1, 2])
    assert isinstance(small, GroupReport)
    assert small.mean.n == 0 and math.isnan(small.mean.srcc) and math.isnan(small.median.mae)
    assert set(small.per_group) == {"1", "2"}


def test_metrics_to_dict():
    m = Metrics(srcc=0.5, krcc=0.4, plcc=0.6, rmse=1.0, mae=0.8, n=10)
    assert m.to_dict() == {"srcc": 0.5, "krcc": 0.4, "plcc": 0.6, "rmse": 1.0, "mae": 0.8, "n": 10}
