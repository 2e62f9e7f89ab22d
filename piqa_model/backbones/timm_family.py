"""The `timm` backbone family: any timm model by name, with its `create_model` options, classifier removed."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from piqa_model.backbones.registry import Family, register_family
from piqa_model.errors import ConfigError, WeightsUnavailableError


@dataclass(frozen=True)
class TimmConfig:
    """A timm backbone: `timm_name` and extra `timm.create_model` keyword options (as sorted pairs, so that the
    config stays hashable; JSON holds them as a mapping)."""

    timm_name: str
    options: tuple[tuple[str, Any], ...] = ()
    family: str = "timm"

    @property
    def feature_width(self) -> int:
        """The backbone's `num_features`, read off a weightless (meta-device) build."""
        return _num_features(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimmConfig:
        try:
            data["options"] = tuple(sorted(dict(data.get("options") or {}).items()))
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"not a valid {cls.__name__}: {exc}") from None


@functools.cache
def _num_features(config: TimmConfig) -> int:
    with torch.device("meta"):
        return int(create_headless(config, pretrained=False).num_features)


def create_headless(config: TimmConfig, pretrained: bool) -> nn.Module:
    """`timm.create_model(name, num_classes=0, **options)`: forward returns the pooled feature [N, num_features]."""
    import timm

    try:
        return timm.create_model(config.timm_name, pretrained=pretrained, num_classes=0, **dict(config.options))
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"timm has no model {config.timm_name!r}") from None
        raise


def build_timm(config: TimmConfig, pretrained: bool = False) -> nn.Module:
    """`pretrained=True` fetches the model's weights from timm's hub (needs network access)."""
    try:
        return create_headless(config, pretrained)
    except ConfigError:
        raise
    except Exception as exc:
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"could not fetch pretrained '{config.timm_name}' weights from the hub ({type(exc).__name__}: {exc}). "
            "Offline? Build without pretrained weights, or start from a bundle."
        ) from exc


register_family(Family("timm", TimmConfig, build_timm, TimmConfig.from_dict))
