"""A bundle's score scale: raw network outputs, or a documented 0-100 scale fitted on labelled validation data.

A network trained with a ranking loss outputs numbers whose offset and spread mean nothing by themselves. A
`ScoreScale` maps them through the 4-parameter logistic of `piqa_model.metrics` fitted to mean opinion scores
(CLIVE's MOS, 0-100, higher is better): a calibrated score of 60 is what the crowd gave photos the network rated
alike. The logistic is strictly increasing, so rankings, fractions and SRCC are unchanged; only thresholds such as
`--min-score` become readable. Bundles without a scale (the paper's weights, retrained bundles) keep raw scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from piqa_model.errors import ConfigError
from piqa_model.metrics import logistic_4, logistic_parameters

RAW_SCALE = "raw network output (higher is better; compare scores of one model only)"


@dataclass(frozen=True)
class ScoreScale:
    """score = clip(logistic_4(raw, b1, b2, b3, b4), 0, 100), fitted on `fitted_on`."""

    b1: float
    b2: float
    b3: float
    b4: float
    fitted_on: str

    def __post_init__(self) -> None:
        if not self.b1 > self.b2:
            raise ConfigError(f"a score scale must increase with the raw score (b1 {self.b1} <= b2 {self.b2})")

    def apply(self, raw: ArrayLike) -> np.ndarray:
        return np.clip(logistic_4(raw, self.b1, self.b2, self.b3, self.b4), 0.0, 100.0)

    def describe(self) -> str:
        return f"0-100, higher is better: predicted mean opinion score, fitted on {self.fitted_on}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def fit(cls, raw: ArrayLike, mos: ArrayLike, fitted_on: str) -> ScoreScale:
        params = logistic_parameters(raw, mos, label_range=(0.0, 100.0))
        if params is None or not params[0] > params[1]:
            raise ConfigError(f"cannot fit an increasing score scale on {fitted_on}: do the scores follow the MOS?")
        return cls(*(float(p) for p in params), fitted_on=fitted_on)


def describe_scale(scale: ScoreScale | None) -> str:
    return RAW_SCALE if scale is None else scale.describe()
