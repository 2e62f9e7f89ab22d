"""The soak benchmark's short form (bench/soak.py; its long form is 20,000 images): `piqa score` over a few hundred
small portraits in tars, every process it starts sampled."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from soak import make_input, run_soak, short_folder  # noqa: E402

OURS = ("driver", "ray::MapWorker(MapBatches(PrepareAndScore))", "ray::ShardCommitter", "ray::Tally")
SHORT_GROWTH_BOUND = 0.25
"""Looser than the long form's 10 % (its windows are seconds long, after half the run); a leak of a megabyte an
image still breaks it."""


def test_a_short_soak_leaks_no_files_and_no_memory_and_writes_every_row_once():
    with short_folder() as work:
        soak = make_input(work / "in", images=160, shard_size=20, size=160)
        result = run_soak(work, soak, interval=1.0, warm_up=0.5, extra=[])
    assert result["rows"] == {"lost": 0, "doubled": 0, "wrong_status": 0}
    assert result["leftovers"] == []
    assert result["spilled_peak_mib"] <= 64
    assert set(OURS) <= set(result["growth"]), sorted(result["growth"])
    for title in OURS:
        assert result["growth"][title]["uss_growth"] <= SHORT_GROWTH_BOUND, (title, result["growth"][title])
