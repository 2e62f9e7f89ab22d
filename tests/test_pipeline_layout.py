"""Pool sizes, CPUs and threads per actor derived from a cluster's resources (`pipelines.layout`)."""

from __future__ import annotations

import pytest

from pipelines.config import ScoreConfig
from pipelines.layout import BLOCK_ROWS, CPU_BATCH, GPU_BATCH, READ_TASK_CPUS, plan_layout


def config(**options) -> ScoreConfig:
    return ScoreConfig(input="in", output="out", **options)


@pytest.mark.parametrize("cpus", [1, 2, 16])
def test_cpu_cluster_gets_one_single_threaded_actor_per_core_leaving_room_for_readers(cpus):
    layout = plan_layout(config(), total_cpus=cpus, total_gpus=0, node_cpus=cpus)
    assert layout.prepare is None
    assert layout.score.size == (cpus, cpus)
    assert layout.score.threads == 1 and layout.score.gpus == 0
    assert cpus * layout.score.cpus + READ_TASK_CPUS <= cpus + 1e-9
    assert layout.batch_size == CPU_BATCH and layout.block_rows == BLOCK_ROWS


def test_cpu_cluster_of_several_nodes_counts_every_core():
    layout = plan_layout(config(), total_cpus=8, total_gpus=0, node_cpus=4)
    assert layout.score.size == (8, 8)  # each node: 4 actors of just under one CPU, and room for a read task


def test_explicit_cpus_per_actor_sets_the_threads_and_the_pool_size():
    layout = plan_layout(config(cpus_per_actor=1.75), total_cpus=2, total_gpus=0, node_cpus=2)
    assert layout.score.size == (1, 1) and layout.score.threads == 2


def test_requested_pool_keeps_its_max_but_its_min_never_exceeds_what_fits():
    layout = plan_layout(config(score_actors=(4, 8)), total_cpus=2, total_gpus=0, node_cpus=2)
    assert layout.score.size == (2, 8)


def test_gpu_cluster_gets_a_scorer_per_gpu_fed_by_prepare_actors_on_the_other_cpus():
    layout = plan_layout(config(), total_cpus=16, total_gpus=2, node_cpus=8)
    assert layout.score.size == (2, 2) and layout.score.gpus == 1 and layout.score.cpus == 1
    assert layout.prepare is not None and layout.prepare.size == (13, 13)  # 16 - 0.25 - 2 scorers
    assert layout.batch_size == GPU_BATCH and layout.block_rows == GPU_BATCH


def test_fractional_gpus_share_a_device():
    layout = plan_layout(config(gpus_per_actor=0.5, batch_size=8), total_cpus=8, total_gpus=1, node_cpus=8)
    assert layout.score.size == (2, 2) and layout.score.gpus == 0.5
    assert layout.batch_size == 8 and layout.block_rows == BLOCK_ROWS


def test_forcing_cpu_scoring_on_a_gpu_cluster():
    layout = plan_layout(config(gpus_per_actor=0), total_cpus=4, total_gpus=1, node_cpus=4)
    assert layout.prepare is None and layout.score.gpus == 0 and layout.score.size == (4, 4)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="cpus_per_actor"):
        config(cpus_per_actor=0)
    with pytest.raises(ValueError, match="score_actors"):
        config(score_actors=(3, 2))
