"""A bundle's score scale: fitted monotone to MOS, stored in the bundle, applied wherever scores are made."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import piqa_model
from piqa_model.calibration import RAW_SCALE, ScoreScale, describe_scale
from piqa_model.errors import ConfigError


def test_a_fitted_scale_is_increasing_bounded_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=200)
    mos = 50 + 30 * np.tanh(raw) + rng.normal(scale=5, size=200)
    scale = ScoreScale.fit(raw, mos, "synthetic")
    mapped = scale.apply(raw)
    assert spearmanr(raw, mapped)[0] == pytest.approx(1.0)
    assert np.all((mapped >= 0) & (mapped <= 100))
    assert np.abs(mapped - mos).mean() < 8  # on the MOS scale, not just monotone
    assert ScoreScale(**scale.to_dict()) == scale
    assert "0-100" in describe_scale(scale) and describe_scale(None) == RAW_SCALE


def test_a_scale_that_would_invert_the_ranking_is_refused():
    raw = np.linspace(0, 1, 50)
    with pytest.raises(ConfigError, match="cannot fit an increasing score scale"):
        ScoreScale.fit(raw, 100 - 80 * raw, "inverted labels")
    with pytest.raises(ConfigError, match="must increase"):
        ScoreScale(10.0, 90.0, 0.0, 1.0, "inverted")


def test_scorer_reports_scores_on_the_bundle_scale(tmp_path: Path, portrait_paths):
    torch.manual_seed(0)
    net = piqa_model.DualBranchNet(piqa_model.preset("small"))
    raw_info = piqa_model.BundleInfo("raw", trained=True)
    scale = ScoreScale(b1=90.0, b2=10.0, b3=0.0, b4=0.05, fitted_on="a test")
    scaled_info = dataclasses.replace(raw_info, name="scaled", score_scale=scale.to_dict())
    raw_bundle = piqa_model.save_bundle(net, tmp_path / "raw", raw_info)
    scaled_bundle = piqa_model.save_bundle(net, tmp_path / "scaled", scaled_info)
    images = [p.read_bytes() for p in portrait_paths["congress"] + portrait_paths["london"][:1]]
    raw = [row["score"] for row in piqa_model.load_bundle(raw_bundle).score(images)]
    scaled_scorer = piqa_model.load_bundle(scaled_bundle)
    assert scaled_scorer.info.scale == scale
    scaled = [row["score"] for row in scaled_scorer.score(images)]
    np.testing.assert_allclose(scaled, scale.apply(raw), rtol=1e-6)
    assert "0-100, higher is better" in (scaled_bundle / "MODEL_CARD.md").read_text()
