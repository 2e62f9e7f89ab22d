"""Pool sizes, CPUs and threads per actor derived from a cluster's resources (`pipelines.layout`)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import ScoreConfig
from pipelines.layout import BLOCK_ROWS, CPU_BATCH, GPU_BATCH, READ_TASK_CPUS, in_process_layout, plan_layout
from pipelines.readers import read_records, read_shards, read_units
from pipelines.shards import list_shards
from pipelines.storage import Storage


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


@pytest.mark.parametrize(("cpus", "threads"), [(2, 1), (8, 4), (3, 1)])
def test_a_job_in_this_process_overlaps_prepare_and_score_sharing_the_cores(cpus, threads):
    layout = in_process_layout(config(), cpus)
    assert layout.prepare is not None and layout.prepare.size == layout.score.size == (1, 1)
    assert layout.prepare.threads == layout.score.threads == threads  # torch's threads are the process's
    assert layout.batch_size == CPU_BATCH and layout.block_rows == BLOCK_ROWS


def test_a_job_in_this_process_on_one_core_is_one_fused_stage():
    layout = in_process_layout(config(batch_size=4), 1)
    assert layout.prepare is None and layout.score.threads == 1 and layout.batch_size == 4


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="cpus_per_actor"):
        config(cpus_per_actor=0)
    with pytest.raises(ValueError, match="score_actors"):
        config(score_actors=(3, 2))


def test_read_units_cut_a_files_shard_into_runs_that_keep_the_shards_numbering(tmp_path):
    for number in range(11):
        (tmp_path / "in" / f"{number:02d}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"{number:02d}.jpg").write_bytes(bytes([number]))
    with tarfile.open(tmp_path / "one.tar", "w") as archive:
        for number in range(3):
            member = tarfile.TarInfo(f"t{number}.jpg")
            member.size = 1
            archive.addfile(member, io.BytesIO(bytes([number])))
    storage = Storage()
    shards = list_shards(str(tmp_path / "in"), storage, shard_size=10) + list_shards(str(tmp_path / "one.tar"), storage)
    units = read_units(shards, files_per_unit=4)
    assert [(unit["shard_id"], len(unit["files"]), unit["first"], unit["total"]) for unit in units] == [
        ("files-000000", 4, 0, 10),
        ("files-000000", 4, 4, 10),
        ("files-000000", 2, 8, 10),
        ("files-000001", 1, 0, 1),
        ("one", 0, 0, -1),
    ]
    rows = []
    for unit in units:
        batch = {name: np.array([value], dtype=object) for name, value in unit.items()}
        for table in read_shards(batch, storage=storage, image_column="jpg", key_column="key", chunk_size=3):
            rows.extend(table.select(["shard", "index", "shard_total", "data"]).to_pylist())
    expected = [("files-000000", i, 10) for i in range(10)] + [("files-000001", 0, 1)]
    expected += [("one", i, 3) for i in range(3)]
    assert [(row["shard"], row["index"], row["shard_total"]) for row in rows] == expected
    assert [row["data"] for row in rows] == [bytes([n]) for n in range(11)] + [bytes([n]) for n in range(3)]


def test_a_tar_or_parquet_shard_without_images_is_one_error_row(tmp_path):
    with tarfile.open(tmp_path / "notes.tar", "w") as archive:
        member = tarfile.TarInfo("readme.txt")
        member.size = 2
        archive.addfile(member, io.BytesIO(b"hi"))
    empty = pa.table({"key": pa.array([], pa.string()), "jpg": pa.array([], pa.binary())})
    pq.write_table(empty, tmp_path / "e.parquet")
    storage = Storage()
    for name, message in (("notes.tar", "no image members"), ("e.parquet", "no rows")):
        [shard] = list_shards(str(tmp_path / name), storage)
        [record] = read_records(shard, storage)
        assert record.data is None and message in record.error
