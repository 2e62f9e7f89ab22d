"""DN-PIQA portrait quality model: a PyTorch port that loads the authors' released weights.

Knows nothing of Ray; the pipelines and jobs build on this public API.
"""

import importlib
from typing import Any

# Imported on first use: `piqa_model.errors` and `piqa_model.options` must stay cheap to import (Ray Data's read
# tasks raise `StorageError`, a `PiqaError`, and must not load torch).
_EXPORTS = {
    "piqa_model.bundle": ("BundleInfo", "UntrainedModelWarning", "read_bundle", "save_bundle"),
    "piqa_model.checkpoints": ("import_dnpiqa",),
    "piqa_model.config": ("PRESETS", "LiqeConfig", "ModelConfig", "SwinConfig", "preset"),
    "piqa_model.crops": ("PreparedImage", "prepare"),
    "piqa_model.errors": (
        "ConfigError",
        "ImageDecodeError",
        "ImageError",
        "ImageTooLargeError",
        "PiqaError",
        "UnsupportedImageError",
        "WeightsError",
        "WeightsUnavailableError",
    ),
    "piqa_model.faces": ("FaceDetection", "FaceDetector"),
    "piqa_model.images": ("open_image",),
    "piqa_model.network": ("DualBranchNet",),
    "piqa_model.scorer": ("Scorer", "load_bundle", "predict"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'piqa_model' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
