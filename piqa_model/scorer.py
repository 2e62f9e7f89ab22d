"""Scoring images end to end in one process: `piqa_model.flow` (decode, detect faces, crops), then `predict`.

A distributed pipeline runs the same two steps where each fits (the flow on CPU actors, prediction beside a
GPU) and gets the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from piqa_model import options
from piqa_model.bundle import BundleInfo, default_bundle_path, read_bundle, warn_if_untrained
from piqa_model.config import ModelConfig
from piqa_model.crops import PreparedImage
from piqa_model.faces import FaceDetector
from piqa_model.flow import ImageFlow, add_score
from piqa_model.network import DualBranchNet
from piqa_model.options import DecodeMode, Precision


@torch.inference_mode()
def predict(
    net: DualBranchNet, batch: Sequence[PreparedImage], precision: Precision = options.DEFAULT_PRECISION
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image scores [B] and LIQE logits [B, 495] (None without the aux branch), on the CPU.

    `precision="bf16"` runs the network under bfloat16 autocast (GPUs, and CPUs with AVX512-BF16/AMX):
    faster, with scores close to fp32's (BENCHMARKS.md, "Scoring throughput").
    """
    device = net.device
    # Each view travels to the device as it is (smaller than its crops) and is cut there.
    overall = torch.stack([item.crops(_to_device(item.overall_view, device)) for item in batch])
    face = torch.stack([item.crops(_to_device(item.face_view, device)) for item in batch])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        aux = None
        if net.uses_aux:
            aux = net.aux_from_patches(_to_device(torch.cat([item.liqe_patches for item in batch]), device)).float()
        scores = net.score_images(overall, face, aux).float().cpu()
    return scores, None if aux is None else aux.cpu()


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pinned host memory lets the copy to a GPU run asynchronously with the forward before it."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


class Scorer:
    """A loaded model ready to score images; see `load_bundle`.

    `decode="draft"` decodes JPEGs only as finely as face detection and the model need (`piqa_model.decode`);
    `"full"` always decodes every pixel.
    """

    def __init__(
        self,
        net: DualBranchNet,
        info: BundleInfo,
        bundle_id: str,
        *,
        batch_size: int = 8,
        detect_size: int = options.DEFAULT_DETECT_SIZE,
        max_pixels: int = options.DEFAULT_MAX_PIXELS,
        min_face_size: int = options.DEFAULT_MIN_FACE_SIZE,
        precision: Precision = options.DEFAULT_PRECISION,
        decode: DecodeMode = options.DEFAULT_DECODE,
    ) -> None:
        net.check_self_contained()
        self.net = net.eval()
        self.info = info
        self.bundle_id = bundle_id
        self.batch_size = batch_size
        self.precision = precision
        detector = FaceDetector(detect_size, min_face_size, device=net.device)
        self.flow = ImageFlow(net.config, detector, max_pixels, decode)

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def trained(self) -> bool:
        return self.info.trained

    def score(self, images: Sequence[Image.Image | bytes]) -> list[dict[str, Any]]:
        """One dict per input, in order: `status` ('ok' or why not), `error`, `width`, `height`,
        `num_faces`, `face_box` (left, top, right, bottom in original pixels), `face_prob`, `score`
        (None unless ok) and, with the LIQE branch, `liqe_quality`, `liqe_scene`, `liqe_distortion`."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self._score_batch(images[start : start + self.batch_size]))
        return results

    def _score_batch(self, images: Sequence[Image.Image | bytes]) -> list[dict[str, Any]]:
        prepared = self.flow.prepare(images)
        ready = [(record, inputs) for record, inputs in prepared if inputs is not None]
        if ready:
            scores, aux = predict(self.net, [inputs for _, inputs in ready], self.precision)
            for slot, (record, _) in enumerate(ready):
                add_score(record, scores[slot], None if aux is None else aux[slot], self.info.scale)
        return [record.as_row(self.net.uses_aux) for record, _ in prepared]


def load_bundle(path: str | Path | None = None, device: str | torch.device = "cpu", **options: Any) -> Scorer:
    """A `Scorer` for the bundle at `path` (None: the default bundle). `options` go to `Scorer`."""
    net, info, bundle_id = read_bundle(path if path is not None else default_bundle_path())
    warn_if_untrained(info)
    return Scorer(net.to(device), info, bundle_id, **options)
