"""The soak benchmark's short form (bench/soak.py; its long form is 20,000 images): `piqa score` over a few hundred
small portraits in tars, every process it starts sampled."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from pipelines.runtime import LOCAL_TASK_RECORDS

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from soak import make_input, run_soak, short_folder  # noqa: E402

OURS = ("driver", "ray::MapWorker(MapBatches(PrepareAndScore))", "ray::ShardCommitter", "ray::Tally")
SHORT_GROWTH_BOUND = 0.25
"""Looser than the long form's 10 %: its windows are seconds long, and a scoring actor still grows by a few percent
as it meets new batch shapes. A leak of 2.5 MB an image (72 images per actor after warm-up) breaks it."""


def test_a_short_soak_leaks_no_files_and_no_memory_and_writes_every_row_once():
    with short_folder() as work:
        soak = make_input(work / "in", images=240, shard_size=20, size=160)
        result = run_soak(work, soak, interval=1.0, warm_up=0.4, extra=[])
    assert result["rows"] == {"lost": 0, "doubled": 0, "wrong_status": 0}
    assert result["leftovers"] == []
    assert result["spilled_peak_mib"] <= 64
    assert set(OURS) <= set(result["growth"]), sorted(result["growth"])
    for title in OURS:
        assert result["growth"][title]["uss_growth"] <= SHORT_GROWTH_BOUND, (title, result["growth"][title])


def _gcs_server_mib() -> float:
    """The unshared memory of this test session's Ray GCS (a child of this process), MiB."""
    import psutil

    (gcs,) = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("gcs_server")]
    return gcs.memory_full_info().uss / 2**20


@pytest.mark.usefixtures("ray_local")
def test_a_local_cluster_keeps_few_task_records_so_its_gcs_memory_stays_flat():
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def call(self, value: int) -> int:
            return value

    echo = Echo.remote()
    ray.get([echo.call.remote(i) for i in range(2 * LOCAL_TASK_RECORDS)])  # the cap reached
    time.sleep(2)  # the workers report their tasks to the GCS once a second
    before = _gcs_server_mib()
    ray.get([echo.call.remote(i) for i in range(6000)])  # kept uncapped: about 20 MiB more
    time.sleep(2)
    assert _gcs_server_mib() - before < 8
