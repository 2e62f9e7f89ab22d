"""The GPU layout's two actors (Prepare, then Score) give the rows of the fused CPU actor.

Run in-process: a machine without a GPU cannot schedule `num_gpus` actors, but the data contract between
the two stages is the same wherever they run.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from corpus import Corpus, folder_corpus

from pipelines.readers import read_shards, read_units
from pipelines.shards import list_shards
from pipelines.stages import Prepare, PrepareAndScore, Score
from pipelines.storage import Storage
from piqa_model.bundle import UntrainedModelWarning, bundle_files, default_bundle_path, read_bundle_files

warnings.filterwarnings("ignore", category=UntrainedModelWarning)


@dataclass
class Stages:
    corpus: Corpus
    files: dict[str, bytes]
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

    files = bundle_files(default_bundle_path())
    net, _, _ = read_bundle_files(files)
    prepare_args = dict(
        config=net.config.replace(crop_mode="center"), detect_size=640, min_face_size=20, max_pixels=10**8
    )
    prepared = Prepare(**prepare_args)(batch)
    crop = net.config.crop
    assert prepared["overall"].shape == (len(corpus.expected), 1, 3, crop, crop)
    return Stages(corpus, files, prepare_args, batch, prepared)


def assert_same_rows(a_rows: pa.Table, b_rows: pa.Table, stages: Stages) -> None:
    assert a_rows["key"].to_pylist() == b_rows["key"].to_pylist() == list(stages.batch["key"])
    for a, b, key in zip(a_rows.to_pylist(), b_rows.to_pylist(), a_rows["key"].to_pylist(), strict=True):
        assert a["status"] == b["status"] == stages.corpus.expected[key]
        if a["status"] == "ok":
            assert np.isclose(a["score"], b["score"], atol=1e-5) and a["face_box"] == b["face_box"]


def test_prepare_then_score_equals_the_fused_actor(stages):
    split = Score(stages.files, device="cpu")(stages.prepared)
    fused = PrepareAndScore(prepare=stages.prepare_args, score=dict(bundle_files=stages.files))(stages.batch)
    assert_same_rows(split, fused, stages)


def test_compiled_scoring_actor_gives_the_eager_scores(stages):
    eager = Score(stages.files, device="cpu")
    compiled = Score(stages.files, device="cpu", compile=True)
    assert list(compiled.net.state_dict()) == list(eager.net.state_dict())  # bundles still save and load
    assert_same_rows(compiled(stages.prepared), eager(stages.prepared), stages)


def test_actors_take_what_they_loaded_out_of_the_collectors_view(stages):
    """Frozen, what an actor loaded is not walked again by Python's last collection at exit."""
    try:
        for build in (lambda: Score(stages.files, device="cpu"), lambda: Prepare(**stages.prepare_args)):
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
