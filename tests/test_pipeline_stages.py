"""The GPU layout's two actors (Prepare, then Score) give the rows of the fused CPU actor.

Run in-process: a machine without a GPU cannot schedule `num_gpus` actors, but the data contract between
the two stages is the same wherever they run.
"""

from __future__ import annotations

import gc
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus import Corpus, folder_corpus

from pipelines.config import ScoreConfig
from pipelines.layout import plan_layout
from pipelines.plan import run_in_process
from pipelines.readers import read_shards, read_units
from pipelines.score import model_stages
from pipelines.shards import list_shards
from pipelines.stages import Prepare, PrepareAndScore, Score
from pipelines.storage import Storage
from pipelines.writer import ShardCommitter, ShardLedger
from piqa_model import load_bundle, preset
from piqa_model.bundle import UntrainedModelWarning, default_bundle_path, inspect_bundle

warnings.filterwarnings("ignore", category=UntrainedModelWarning)


@dataclass
class Stages:
    corpus: Corpus
    score_args: dict  # Score's: the bundle's path and id
    prepare_args: dict
    batch: dict[str, np.ndarray]  # read_shards' rows
    prepared: dict[str, np.ndarray]  # Prepare's output


@pytest.fixture(scope="module")
def stages(shared_dir, tmp_path_factory) -> Stages:
    corpus = folder_corpus(shared_dir, tmp_path_factory.mktemp("stages") / "in", count=2)
    storage = Storage()
    shard_table = pa.Table.from_pylist(read_units(list_shards(str(corpus.root), storage, shard_size=100), 100))
    shard_batch = {name: shard_table.column(name).to_numpy(zero_copy_only=False) for name in shard_table.column_names}
    [records] = list(read_shards(shard_batch, storage=storage, image_column="jpg", key_column="key", chunk_size=100))
    batch = {name: records.column(name).to_numpy(zero_copy_only=False) for name in records.column_names}

    config, _, bundle_id = inspect_bundle(default_bundle_path())
    score_args = dict(bundle=str(default_bundle_path()), bundle_id=bundle_id)
    # Five crops, not the bundle's own centre crop: the views Prepare ships are then the whole resized images.
    prepare_args = dict(config=config.replace(crop_mode="five"), detect_size=640, min_face_size=20, max_pixels=10**8)
    prepared = Prepare(**prepare_args)(batch)
    assert list(prepared["crop_mode"]) == ["five"] * len(corpus.expected)
    return Stages(corpus, score_args, prepare_args, batch, prepared)


def assert_same_rows(a_rows: pa.Table, b_rows: pa.Table, stages: Stages) -> None:
    assert a_rows["key"].to_pylist() == b_rows["key"].to_pylist() == list(stages.batch["key"])
    for a, b, key in zip(a_rows.to_pylist(), b_rows.to_pylist(), a_rows["key"].to_pylist(), strict=True):
        assert a["status"] == b["status"] == stages.corpus.expected[key]
        if a["status"] == "ok":
            assert np.isclose(a["score"], b["score"], atol=1e-5)
            assert a["face_box"] == pytest.approx(b["face_box"], abs=1e-3)  # the detector's batch sizes differ


def test_prepare_then_score_equals_the_fused_actor(stages):
    split = Score(**stages.score_args, device="cpu")(stages.prepared)
    fused = PrepareAndScore(prepare=stages.prepare_args, score=stages.score_args, batch_size=1)(stages.batch)
    assert_same_rows(split, fused, stages)


def test_prepare_then_score_gives_the_scorers_scores(stages):
    """The views cross from Prepare to Score as bytes and come back as the inputs `Scorer.score` predicts from."""
    scorer = load_bundle()
    prepare = Prepare(scorer.config, detect_size=640, min_face_size=20, max_pixels=10**8)
    rows = Score(str(default_bundle_path()), scorer.bundle_id, device="cpu")(prepare(stages.batch)).to_pylist()
    expected = scorer.score([bytes(data) for data in stages.batch["data"]])
    assert [row["status"] for row in rows] == [row["status"] for row in expected]
    assert "ok" in {row["status"] for row in rows}
    for row, want in zip(rows, expected, strict=True):
        if row["status"] == "ok":
            assert np.isclose(row["score"], want["score"], atol=1e-5)
            assert row["face_box"] == pytest.approx(want["face_box"], abs=1e-3)


def test_the_gpu_layouts_stage_list_writes_and_commits_the_fused_actors_rows(stages, tmp_path):
    """The GPU job's stages (prepare actors, scoring actors, a pool of part writers), run here, commit the rows
    that the fused CPU actor scores."""
    config = ScoreConfig(input="unused", output=str(tmp_path), bundle=stages.score_args["bundle"], crop_mode="five")
    layout = plan_layout(config, total_cpus=4, total_gpus=1, node_cpus=4)
    assert layout.prepare is not None, "a GPU layout: prepare and score apart"
    write = dict(output=str(tmp_path), storage=Storage(), with_liqe=False)
    model = stages.prepare_args["config"]
    gpu_stages = model_stages(config, layout, model, stages.score_args["bundle_id"], write=write)
    assert [stage.name for stage in gpu_stages] == ["prepare", "score", "write"]
    items = pa.Table.from_pydict({name: list(values) for name, values in stages.batch.items()}).to_pylist()
    ledger = ShardLedger(ShardCommitter(**write).commit)
    for receipts in run_in_process(gpu_stages, items):
        ledger.add(receipts)
    assert ledger.pending == [] and len(ledger.commits) == 1
    committed = pq.read_table(next(tmp_path.glob("*.parquet")))
    fused = PrepareAndScore(prepare=stages.prepare_args, score=stages.score_args, batch_size=1)(stages.batch)
    assert_same_rows(committed, fused, stages)


def test_the_fused_stage_takes_each_block_whole_as_the_read_cut_it(stages, tmp_path):
    """With a batch size, Ray Data bundles blocks up to it before an actor's call: eight tars of 20 images went as
    one call of 140 to one actor and one of 20 to the other, and nothing committed until the end."""
    config = ScoreConfig(input="unused", output=str(tmp_path), bundle=stages.score_args["bundle"])
    layout = plan_layout(config, total_cpus=2, total_gpus=0, node_cpus=2)
    [fused] = model_stages(config, layout, stages.prepare_args["config"], stages.score_args["bundle_id"])
    assert fused.name == "prepare-and-score" and fused.batch_size is None


SAMPLES = Path(__file__).parents[1] / "samples" / "portraits"


def test_prepare_ships_dn_piqa_views_of_at_most_1_5_mb_per_image():
    """The full model's five-crop geometry: an image's two views, not its ten crops (4.4 MB); the LIQE patches as
    they were; nothing for an image that failed."""
    config = preset("dn-piqa")
    names = ["london_001_03.jpg", "london_010_03.jpg", "congress_A000014.jpg", "congress_B001260.jpg"]
    data = [(SAMPLES / name).read_bytes() for name in [*names, "broken_not_an_image.jpg"]]
    out = Prepare(config, detect_size=640, min_face_size=20, max_pixels=10**8)({"data": np.array(data, object)})
    assert [json.loads(record)["status"] for record in out["record"]] == ["ok"] * len(names) + ["decode_error"]
    views = [len(overall) + len(face) for overall, face in zip(out["overall"], out["face"], strict=True)]
    assert np.mean(views[:-1]) <= 1.5e6
    assert all(len(patches) == 15 * 3 * 224 * 224 for patches in out["patches"][:-1])
    assert (views[-1], len(out["patches"][-1]), out["view_sizes"][-1].any()) == (0, 0, False)


def test_compiled_scoring_actor_gives_the_eager_scores(stages):
    eager = Score(**stages.score_args, device="cpu")
    compiled = Score(**stages.score_args, device="cpu", compile=True)
    assert list(compiled.net.state_dict()) == list(eager.net.state_dict())  # bundles still save and load
    assert_same_rows(compiled(stages.prepared), eager(stages.prepared), stages)


def test_actors_take_what_they_loaded_out_of_the_collectors_view(stages):
    """Frozen, what an actor loaded is not walked again by Python's last collection at exit."""
    try:
        for build in (lambda: Score(**stages.score_args, device="cpu"), lambda: Prepare(**stages.prepare_args)):
            gc.unfreeze()
            actor = build()
            tracked = {id(o) for o in gc.get_objects()}  # frozen objects are not listed
            assert id(actor.__dict__) not in tracked
    finally:
        gc.unfreeze()  # leave this test process as it was


def test_cli_speed_flags_reach_the_config():
    from jobs.cli import build_parser
    from jobs.score import score_config_from_args

    default = score_config_from_args(build_parser().parse_args(["score", "in", "--out", "out"]))
    assert (default.compile, default.precision) == (False, "fp32")
    flagged = build_parser().parse_args(["score", "in", "--out", "out", "--compile", "--precision", "bf16"])
    assert (score_config_from_args(flagged).compile, score_config_from_args(flagged).precision) == (True, "bf16")
