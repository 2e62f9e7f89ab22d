"""The GPU layout's two actors (Prepare, then Score) give the rows of the fused CPU actor.

Run in-process: a machine without a GPU cannot schedule `num_gpus` actors, but the data contract between
the two stages is the same wherever they run.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
from corpus import folder_corpus

from pipelines.readers import read_shards, shard_rows
from pipelines.shards import list_shards
from pipelines.stages import Prepare, PrepareAndScore, Score
from pipelines.storage import Storage
from piqa_model.bundle import UntrainedModelWarning, bundle_files, default_bundle_path, read_bundle_files

warnings.filterwarnings("ignore", category=UntrainedModelWarning)


def test_prepare_then_score_equals_the_fused_actor(shared_dir, tmp_path):
    corpus = folder_corpus(shared_dir, tmp_path / "in", count=2)
    storage = Storage()
    shard_table = pa.Table.from_pylist(shard_rows(list_shards(str(corpus.root), storage, shard_size=100)))
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
    split = Score(files, device="cpu")(prepared)
    fused = PrepareAndScore(prepare=prepare_args, score=dict(bundle_files=files))(batch)

    assert list(split["key"]) == list(fused["key"]) == list(batch["key"])
    for split_meta, fused_meta, key in zip(split["meta"], fused["meta"], split["key"], strict=True):
        a, b = json.loads(split_meta), json.loads(fused_meta)
        assert a["status"] == b["status"] == corpus.expected[key]
        if a["status"] == "ok":
            assert np.isclose(a["score"], b["score"], atol=1e-6) and a["face_box"] == b["face_box"]
