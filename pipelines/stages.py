"""The pipeline's model steps as Ray Data callables: prepare and score (actor pools); reading is in `readers`.

Each step is a thin shell around `piqa_model`: the numbers come from the same functions `Scorer` uses.
Per-image results travel as a small JSON column (`record`: a `ScoreRecord`) so that error rows and nulls need
no sentinels; crops travel as uint8 tensor columns between `Prepare` and `Score`.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from piqa_model import ModelConfig, PreparedImage, predict
from piqa_model.bundle import read_bundle_files
from piqa_model.errors import ImageReadError
from piqa_model.faces import FaceDetector
from piqa_model.flow import ImageFlow, add_score
from piqa_model.options import DEFAULT_DECODE, DEFAULT_PRECISION, DecodeMode, Precision
from piqa_model.record import RECORD_SCHEMA, ScoreRecord, record_schema

IMAGE_COLUMNS = ("data", "read_error")  # the encoded image, or why it could not be read (optional)
INPUT_COLUMNS = ("overall", "face", "patches", "record")  # what Prepare hands Score
OUTPUT_COLUMNS = (*RECORD_SCHEMA.names, "model")  # what Score adds to a batch's own columns


class Prepare:
    """Actor: decode, detect faces (MTCNN held once per actor), cut crops and LIQE patches."""

    def __init__(
        self,
        config: ModelConfig,
        detect_size: int,
        min_face_size: int,
        max_pixels: int,
        device: str = "cpu",
        decode: DecodeMode = DEFAULT_DECODE,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        self.flow = ImageFlow(config, FaceDetector(detect_size, min_face_size, device=device), max_pixels, decode)
        _freeze_what_lives_as_long_as_the_actor()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = batch.get("read_error", [None] * len(batch["data"]))
        images = [
            ImageReadError(error or "no bytes") if error is not None or data is None else bytes(data)
            for data, error in zip(batch["data"], errors, strict=True)
        ]
        prepared = self.flow.prepare(images)
        out = {name: values for name, values in batch.items() if name not in IMAGE_COLUMNS}
        out["record"] = np.array([json.dumps(asdict(record)) for record, _ in prepared], dtype=object)
        out.update(_stack_inputs([inputs for _, inputs in prepared], self.flow.config))
        return out


def _freeze_what_lives_as_long_as_the_actor() -> None:
    """Take the modules and the model, loaded once per actor, out of the garbage collector's view (`gc.freeze`).

    They live until the actor exits, and Python's last collection at exit walked all of them: seconds of CPU per
    actor after a job's last row, taken from whatever runs next on the node (the next dataset of the same driver,
    another job); frozen, the actor exits much sooner (BENCHMARKS.md, "Scoring throughput"). The collection
    first frees what loading left behind, so that no garbage is frozen with it.
    """
    gc.collect()
    gc.freeze()


def _stack_inputs(prepared: list[PreparedImage | None], config: ModelConfig) -> dict[str, np.ndarray]:
    """Uniform uint8 tensor columns; rows without an image carry zeros (they are never scored)."""
    size = len(prepared)
    shape = (size, config.crops_per_image, 3, config.crop, config.crop)
    columns = {"overall": np.zeros(shape, np.uint8), "face": np.zeros(shape, np.uint8)}
    if config.aux == "liqe" and config.liqe is not None:
        liqe = config.liqe
        columns["patches"] = np.zeros((size, liqe.num_patches, 3, liqe.patch_size, liqe.patch_size), np.uint8)
    for slot, item in enumerate(prepared):
        if item is None:
            continue
        columns["overall"][slot] = item.overall.numpy()
        columns["face"][slot] = item.face.numpy()
        if "patches" in columns and item.liqe_patches is not None:
            columns["patches"][slot] = item.liqe_patches.numpy()
    return columns


class Score:
    """Actor: the network (weights shipped from the driver) scores the prepared rows of a batch."""

    def __init__(
        self,
        bundle_files: dict[str, bytes],
        precision: Precision = DEFAULT_PRECISION,
        threads: int = 1,
        device: str = "auto",
        compile: bool = False,
    ) -> None:
        torch.set_num_threads(threads)
        self.precision = precision
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net, info, self.bundle_id = read_bundle_files(bundle_files)
        self.scale = info.scale
        self.net.to(device)
        if compile:
            self.net.compile_backbones()
        _freeze_what_lives_as_long_as_the_actor()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """The batch's own columns (Prepare's inputs left out), the `ScoreRecord` fields, and `model`."""
        records = [ScoreRecord(**json.loads(record)) for record in batch["record"]]
        ok = [slot for slot, record in enumerate(records) if record.status == "ok"]
        if ok:
            items = [
                PreparedImage(
                    torch.from_numpy(np.ascontiguousarray(batch["overall"][slot])),
                    torch.from_numpy(np.ascontiguousarray(batch["face"][slot])),
                    torch.from_numpy(np.ascontiguousarray(batch["patches"][slot])) if "patches" in batch else None,
                )
                for slot in ok
            ]
            scores, aux = predict(self.net, items, self.precision)
            for position, slot in enumerate(ok):
                add_score(records[slot], float(scores[position]), None if aux is None else aux[position], self.scale)
        with_liqe = self.net.uses_aux
        table = pa.Table.from_pylist([r.as_row(with_liqe) for r in records], schema=record_schema(with_liqe))
        passed = [(name, values) for name, values in batch.items() if name not in INPUT_COLUMNS]
        for position, (name, values) in enumerate(passed):  # the batch's own columns first, as they came
            table = table.add_column(position, name, pa.array(values if values.ndim == 1 else list(values)))
        return table.append_column("model", pa.array([self.bundle_id] * len(records), pa.string()))


class PrepareAndScore:
    """Actor for clusters without GPUs: both steps in one process, so crops never cross the object store."""

    def __init__(self, prepare: dict[str, Any], score: dict[str, Any]) -> None:
        self.prepare = Prepare(**prepare)
        self.score = Score(**score, device="cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.score(self.prepare(batch))
