"""The `swin` backbone family: Swin Transformers (timm), and reading their shape off a checkpoint.

The authors trained with timm 0.6.7, whose Swin layout differs from timm >= 0.9: each `downsample`
sits at the end of a stage instead of the start of the next, and two buffers are stored. timm's own
`checkpoint_filter_fn` converts that layout; this module only infers the architecture from the
tensor shapes so that any Swin size imports without being told what it is.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from piqa_model.backbones.registry import Family, load_weights_strictly, register_family
from piqa_model.errors import ConfigError, WeightsError, WeightsUnavailableError


@dataclass(frozen=True)
class SwinConfig:
    """One Swin Transformer backbone (timm layout, classifier head removed)."""

    img_size: int = 384
    patch_size: int = 4
    window_size: int = 12
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    timm_name: str = "swin_base_patch4_window12_384"
    family: Literal["swin"] = "swin"

    @property
    def feature_width(self) -> int:
        """Width of the average-pooled final-stage feature (1024 for Swin-B)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwinConfig:
        try:
            data["depths"] = tuple(data["depths"])
            data["num_heads"] = tuple(data["num_heads"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a valid Swin configuration: {exc}") from None


def build_swin(config: SwinConfig, pretrained: bool = False) -> nn.Module:
    """A headless Swin whose forward returns the average-pooled final feature [N, C].

    `pretrained=True` fetches timm's ImageNet weights from the hub (needs network access).
    """
    import timm

    kwargs = dict(
        num_classes=0,
        img_size=config.img_size,
        patch_size=config.patch_size,
        window_size=config.window_size,
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
    )
    try:
        model = timm.create_model(config.timm_name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"could not fetch pretrained '{config.timm_name}' weights from the hub ({type(exc).__name__}: "
            f"{exc}). Offline? Build without pretrained weights, or import released weights with "
            "`piqa weights import-dnpiqa`."
        ) from exc
    use_fused_attention(model)
    return model


def use_fused_attention(model: nn.Module, enabled: bool = True) -> None:
    """Window attention through `F.scaled_dot_product_attention` (timm leaves it off for Swin by default).

    Same numbers as the plain path (to float rounding), and faster in fp32 and bf16 on a CPU (BENCHMARKS.md,
    "Network forward on a CPU").
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled


def infer_swin_config(state_dict: dict[str, torch.Tensor], base: SwinConfig | None = None) -> SwinConfig:
    """Read embed dim, depths, heads, window, patch and (when buffers allow) image size off a Swin state dict.

    Works on timm 0.6.7 and timm >= 0.9 layouts. Fields that the tensors do not determine come from `base`.
    """
    base = base or SwinConfig()
    try:
        patch_weight = state_dict["patch_embed.proj.weight"]
    except KeyError:
        raise WeightsError("not a Swin state dict: no 'patch_embed.proj.weight'") from None
    embed_dim, patch_size = int(patch_weight.shape[0]), int(patch_weight.shape[-1])
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        raise WeightsError("not a Swin state dict: no 'layers.N.blocks.M' tensors")
    stages = range(max(blocks) + 1)
    depths = tuple(len(blocks.get(stage, ())) for stage in stages)
    tables = [state_dict[f"layers.{s}.blocks.0.attn.relative_position_bias_table"] for s in stages]
    num_heads = tuple(int(t.shape[1]) for t in tables)
    window_size = (math.isqrt(int(tables[0].shape[0])) + 1) // 2
    img_size = base.img_size
    mask = state_dict.get("layers.0.blocks.1.attn_mask")
    if mask is not None:  # timm 0.6.7 stores it: (num_windows, w*w, w*w) at stage-0 resolution
        img_size = math.isqrt(int(mask.shape[0])) * window_size * patch_size
    return dataclasses.replace(
        base,
        img_size=img_size,
        patch_size=patch_size,
        window_size=window_size,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
    )


def load_swin_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a timm 0.6.7 or current-layout Swin state dict (head-less) into `model`."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    converted = checkpoint_filter_fn(dict(state_dict), model)
    converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    load_weights_strictly(model, converted, "Swin")


register_family(Family("swin", SwinConfig, build_swin, SwinConfig.from_dict))
