"""The promotion gate: a candidate replaces the champion unless it is worse by more than a tolerance.

Both models are evaluated in the same job on the same test split, so the comparison is like for like.
A metric where lower is better (rmse, mae) is compared the other way round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

LOWER_IS_BETTER = ("rmse", "mae")


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    candidate: float
    champion: float | None
    tolerance: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(metric: str, candidate: float, champion: float | None, tolerance: float) -> Decision:
    """Promote when there is no champion, or when the candidate is not worse by more than `tolerance`."""
    if math.isnan(candidate):
        return Decision(False, metric, candidate, champion, tolerance, f"candidate {metric} is undefined")
    if champion is None or math.isnan(champion):
        return Decision(True, metric, candidate, champion, tolerance, "no champion to compare with")
    lower = metric.split("_")[0] in LOWER_IS_BETTER
    shortfall = (candidate - champion) if lower else (champion - candidate)
    promote = shortfall <= tolerance
    verdict = "within" if promote else "beyond"
    reason = (
        f"candidate {metric} {candidate:.4f} vs champion {champion:.4f}: "
        f"shortfall {max(shortfall, 0.0):.4f} {verdict} the tolerance {tolerance:.4f}"
    )
    return Decision(promote, metric, candidate, champion, tolerance, reason)
