"""The pipeline's model steps as Ray Data callables: prepare and score (actor pools); reading is in `readers`.

Each step is a thin shell around `piqa_model`: the numbers come from the same functions `Scorer` uses.
Per-image results travel as a small JSON column (`record`: a `ScoreRecord`) so that error rows and nulls need
no sentinels. Between `Prepare` and `Score` an image's model inputs travel as its two resized views (smaller
than their crops; `piqa_model.crops`), each the raw bytes of a uint8 [3, H, W] tensor with its size in
`view_sizes`, plus the crop size and mode to cut them with and, with LIQE, the patches' bytes; a row without
an image carries empty bytes.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.writer import PartWriter
from piqa_model import ModelConfig, PreparedImage, predict
from piqa_model.bundle import local_bundle, read_bundle
from piqa_model.errors import ImageReadError
from piqa_model.faces import FaceDetector
from piqa_model.flow import ImageFlow, add_score
from piqa_model.options import DEFAULT_DECODE, DEFAULT_PRECISION, DecodeMode, Precision
from piqa_model.record import RECORD_SCHEMA, ScoreRecord, record_schema

IMAGE_COLUMNS = ("data", "read_error")  # the encoded image, or why it could not be read (optional)
INPUT_COLUMNS = ("overall", "face", "view_sizes", "crop", "crop_mode", "patches", "record")  # Prepare -> Score
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
        out.update(_input_columns([inputs for _, inputs in prepared], self.flow.config))
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


def _input_columns(prepared: list[PreparedImage | None], config: ModelConfig) -> dict[str, np.ndarray]:
    """The columns of `INPUT_COLUMNS` but `record`, one row per image (see the module docstring)."""
    columns = {
        name: np.array([b"" if item is None else _raw(getattr(item, f"{name}_view")) for item in prepared], object)
        for name in ("overall", "face")
    }
    no_view = ((0, 0), (0, 0))
    columns["view_sizes"] = np.array(
        [no_view if item is None else (item.overall_view.shape[1:], item.face_view.shape[1:]) for item in prepared],
        np.int32,
    ).reshape(len(prepared), 2, 2)
    columns["crop"] = np.full(len(prepared), config.crop, np.int32)
    columns["crop_mode"] = np.array([config.crop_mode] * len(prepared), object)
    if config.aux == "liqe" and config.liqe is not None:
        columns["patches"] = np.array(
            [b"" if item is None or item.liqe_patches is None else _raw(item.liqe_patches) for item in prepared],
            object,
        )
    return columns


def _prepared_images(batch: dict[str, np.ndarray], slots: list[int], config: ModelConfig) -> list[PreparedImage]:
    """The inputs of the rows `slots` of `_input_columns`' columns; `config` gives the LIQE patches' size."""
    patch_shape = None
    if "patches" in batch and config.liqe is not None:
        patch_shape = (-1, 3, config.liqe.patch_size, config.liqe.patch_size)
    return [
        PreparedImage(
            _tensor(batch["overall"][slot], (3, *batch["view_sizes"][slot][0])),
            _tensor(batch["face"][slot], (3, *batch["view_sizes"][slot][1])),
            int(batch["crop"][slot]),
            batch["crop_mode"][slot],
            None if patch_shape is None else _tensor(batch["patches"][slot], patch_shape),
        )
        for slot in slots
    ]


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.numpy().tobytes()


def _tensor(raw: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """The uint8 tensor of `_raw`'s bytes (copied: Ray hands read-only buffers)."""
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(*map(int, shape))


class Score:
    """Actor: the network scores the prepared rows of a batch.

    It loads the bundle itself, from a copy on its node (`local_bundle`): the driver passes only the bundle's URI
    and the id it checked, so no weights travel through Ray's object store and a restarted actor loads them again.
    """

    def __init__(
        self,
        bundle: str,
        bundle_id: str,
        precision: Precision = DEFAULT_PRECISION,
        threads: int = 1,
        device: str = "auto",
        compile: bool = False,
    ) -> None:
        torch.set_num_threads(threads)
        self.precision = precision
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net, info, self.bundle_id = read_bundle(local_bundle(bundle, bundle_id), bundle_id)
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
            scores, aux = predict(self.net, _prepared_images(batch, ok, self.net.config), self.precision)
            for position, slot in enumerate(ok):
                add_score(records[slot], float(scores[position]), None if aux is None else aux[position], self.scale)
        with_liqe = self.net.uses_aux
        table = pa.Table.from_pylist([r.as_row(with_liqe) for r in records], schema=record_schema(with_liqe))
        passed = [(name, values) for name, values in batch.items() if name not in INPUT_COLUMNS]
        for position, (name, values) in enumerate(passed):  # the batch's own columns first, as they came
            table = table.add_column(position, name, pa.array(values if values.ndim == 1 else list(values)))
        return table.append_column("model", pa.array([self.bundle_id] * len(records), pa.string()))


class PrepareAndScore:
    """Actor for clusters without GPUs: every step in one process, so neither the views nor the scored rows cross
    the object store. It takes a block and runs the model on `batch_size` images at a time; with `write`
    (`PartWriter`'s arguments) it writes the block's rows itself and returns the receipts."""

    def __init__(
        self, prepare: dict[str, Any], score: dict[str, Any], batch_size: int, write: dict[str, Any] | None = None
    ) -> None:
        self.prepare = Prepare(**prepare)
        self.score = Score(**score, device="cpu")
        self.batch_size = batch_size
        self.write = None if write is None else PartWriter(**write)

    def __call__(self, block: dict[str, np.ndarray]) -> pa.Table:
        rows = len(next(iter(block.values())))
        batches = (
            {name: values[start : start + self.batch_size] for name, values in block.items()}
            for start in range(0, rows, self.batch_size)
        )
        scored = pa.concat_tables([self.score(self.prepare(batch)) for batch in batches])
        return scored if self.write is None else self.write(scored)
