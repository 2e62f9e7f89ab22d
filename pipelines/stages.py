"""The pipeline's model steps as Ray Data callables: prepare and score (actor pools); reading is in `readers`.

Each step is a thin shell around `piqa_model`: the numbers come from the same functions `Scorer` uses.
Per-image results travel as a small JSON column (`meta`) so that error rows and nulls need no
sentinels; crops travel as uint8 tensor columns between `Prepare` and `Score`.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import numpy as np
import torch

from piqa_model import ImageError, ModelConfig, PreparedImage, predict, prepare
from piqa_model.bundle import read_bundle_files
from piqa_model.decode import DecodeMode, Preview, open_preview
from piqa_model.faces import FaceDetection, FaceDetector
from piqa_model.scorer import result_fields

ID_COLUMNS = ("key", "source", "shard", "index", "shard_total")


class Prepare:
    """Actor: decode, detect faces (MTCNN held once per actor), cut crops and LIQE patches."""

    def __init__(
        self,
        config: ModelConfig,
        detect_size: int,
        min_face_size: int,
        max_pixels: int,
        device: str = "cpu",
        decode: DecodeMode = "draft",
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        self.config, self.max_pixels, self.decode = config, max_pixels, decode
        self.detector = FaceDetector(detect_size, min_face_size, device=device)
        _freeze_what_lives_as_long_as_the_actor()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        metas: list[dict[str, Any]] = []
        previews: list[tuple[int, Preview]] = []
        for slot, (data, read_error) in enumerate(zip(batch["data"], batch["read_error"], strict=True)):
            if read_error is not None or data is None:
                metas.append({"status": "read_error", "error": read_error or "no bytes"})
                continue
            try:
                preview = open_preview(
                    bytes(data), self.config, self.detector.detect_size, self.max_pixels, self.decode
                )
            except Exception as exc:
                metas.append(_failure(exc))
                continue
            width, height = preview.original_size
            metas.append({"status": "ok", "error": None, "width": width, "height": height})
            previews.append((slot, preview))
        detections = self.detector.detect([preview.image for _, preview in previews]) if previews else []
        prepared: dict[int, PreparedImage] = {}
        for (slot, preview), detection in zip(previews, detections, strict=True):
            try:
                item = preview.finish(detection)
            except Exception as exc:
                metas[slot] = _failure(exc)
                continue
            prepared[slot] = prepare(item.image, item.detection, self.config, item.original_size)
            metas[slot]["detection"] = [item.detection.num_faces, item.detection.box, item.detection.prob]
        out = {name: batch[name] for name in ID_COLUMNS}
        out["meta"] = np.array([json.dumps(m) for m in metas], dtype=object)
        out.update(_stack_inputs(prepared, len(metas), self.config))
        return out


def _freeze_what_lives_as_long_as_the_actor() -> None:
    """Take the modules and the model, loaded once per actor, out of the garbage collector's view (`gc.freeze`).

    They live until the actor exits, and Python's last collection at exit walked all of them (half a million
    objects): about 1.5 s of CPU per actor after a job's last row, taken from whatever runs next on the node
    (the next dataset of the same driver, another job). Frozen, the actor exits in about 0.3 s. The collection
    first frees what loading left behind, so that no garbage is frozen with it.
    """
    gc.collect()
    gc.freeze()


def _failure(exc: Exception) -> dict[str, Any]:
    """The meta of an image that could not be decoded; a decoder bug must not stop the job either."""
    if isinstance(exc, ImageError):
        return {"status": exc.status, "error": str(exc)}
    return {"status": "decode_error", "error": f"{type(exc).__name__}: {exc}"}


def _stack_inputs(prepared: dict[int, PreparedImage], size: int, config: ModelConfig) -> dict[str, np.ndarray]:
    """Uniform uint8 tensor columns; rows without an image carry zeros (they are never scored)."""
    shape = (size, config.crops_per_image, 3, config.crop, config.crop)
    columns = {"overall": np.zeros(shape, np.uint8), "face": np.zeros(shape, np.uint8)}
    if config.aux == "liqe" and config.liqe is not None:
        liqe = config.liqe
        columns["patches"] = np.zeros((size, liqe.num_patches, 3, liqe.patch_size, liqe.patch_size), np.uint8)
    for slot, item in prepared.items():
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
        precision: str = "fp32",
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        metas = [json.loads(m) for m in batch["meta"]]
        ok = [slot for slot, meta in enumerate(metas) if meta["status"] == "ok"]
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
                num_faces, box, prob = metas[slot].pop("detection")
                detection = FaceDetection(num_faces, tuple(box) if box else None, prob)
                aux_row = None if aux is None else aux[position]
                metas[slot].update(result_fields(detection, float(scores[position]), aux_row, self.scale))
        out = {name: batch[name] for name in ID_COLUMNS}
        out["meta"] = np.array([json.dumps(m) for m in metas], dtype=object)
        out["model"] = np.array([self.bundle_id] * len(metas), dtype=object)
        return out


class PrepareAndScore:
    """Actor for clusters without GPUs: both steps in one process, so crops never cross the object store."""

    def __init__(self, prepare: dict[str, Any], score: dict[str, Any]) -> None:
        self.prepare = Prepare(**prepare)
        self.score = Score(**score, device="cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.score(self.prepare(batch))
