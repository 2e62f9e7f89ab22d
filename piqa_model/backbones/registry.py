"""The family registry: a family's name -> its config type and builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from piqa_model.errors import ConfigError, WeightsError


class BackboneConfig(Protocol):
    """What every family's config offers: its family name and the width of the feature its backbone returns."""

    family: str

    @property
    def feature_width(self) -> int: ...


@dataclass(frozen=True)
class Family:
    """A backbone family: `build(config, pretrained)` returns a headless model whose forward gives [N, C]
    features (C = `config.feature_width`), with timm's `pretrained_cfg` (mean, std) set."""

    name: str
    config_type: type
    build: Callable[[Any, bool], nn.Module]
    from_dict: Callable[[dict[str, Any]], Any]


_FAMILIES: dict[str, Family] = {}

DEFAULT_FAMILY = "swin"
"""Configs written before families existed name none: they are Swin branches."""


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ConfigError(f"backbone family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[str, ...]:
    return tuple(sorted(_FAMILIES))


def _family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone family {name!r}; known: {', '.join(families())}") from None


def backbone_config_from_dict(data: dict[str, Any]) -> Any:
    """A branch's config from its JSON form (`family` picks the type; none: a Swin, as written before families)."""
    return _family(str(data.get("family", DEFAULT_FAMILY))).from_dict(dict(data))


def load_weights_strictly(model: nn.Module, weights: dict[str, Any], what: str) -> None:
    """`model.load_state_dict(weights)` with every key accounted for, or a WeightsError naming a few that are not."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{what} weights do not fit the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def build_backbone(config: BackboneConfig, pretrained: bool = False) -> nn.Module:
    return _family(config.family).build(config, pretrained)
