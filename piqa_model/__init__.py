"""DN-PIQA portrait quality model: a PyTorch port that loads the authors' released weights.

Knows nothing of Ray; the pipelines and jobs build on this public API.
"""

from piqa_model.bundle import BundleInfo, UntrainedModelWarning, read_bundle, save_bundle
from piqa_model.checkpoints import import_dnpiqa
from piqa_model.config import PRESETS, LiqeConfig, ModelConfig, SwinConfig, preset
from piqa_model.crops import PreparedImage, prepare
from piqa_model.errors import (
    ConfigError,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    PiqaError,
    UnsupportedImageError,
    WeightsError,
    WeightsUnavailableError,
)
from piqa_model.faces import FaceDetection, FaceDetector
from piqa_model.images import open_image
from piqa_model.network import DualBranchNet
from piqa_model.scorer import Scorer, load_bundle, predict

__all__ = [
    "PRESETS",
    "BundleInfo",
    "ConfigError",
    "DualBranchNet",
    "FaceDetection",
    "FaceDetector",
    "ImageDecodeError",
    "ImageError",
    "ImageTooLargeError",
    "LiqeConfig",
    "ModelConfig",
    "PiqaError",
    "PreparedImage",
    "Scorer",
    "SwinConfig",
    "UnsupportedImageError",
    "UntrainedModelWarning",
    "WeightsError",
    "WeightsUnavailableError",
    "import_dnpiqa",
    "load_bundle",
    "open_image",
    "predict",
    "prepare",
    "preset",
    "read_bundle",
    "save_bundle",
]
