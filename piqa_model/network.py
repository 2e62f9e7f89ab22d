"""DN-PIQA: whole-image backbone + face backbone (+ LIQE logits) -> MLP head, one score per crop."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from piqa_model.backbones import build_backbone
from piqa_model.config import ModelConfig
from piqa_model.errors import ConfigError
from piqa_model.liqe import LiqeBranch, cut_patches
from piqa_model.onednn import use_onednn_linear

Branch = Literal["overall", "face"]


class Standardise(nn.Module):
    """`(x - shift) / scale` with fixed per-feature statistics, fitted once on training images (`fit`), so that the
    head reads every feature on one scale (per-stage means and stds sit at offsets and spreads of their own), as a
    ridge regression on standardised features does."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.shift) / self.scale

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Set the statistics from head inputs [N, width] of training images."""
        self.shift.copy_(features.mean(0))
        self.scale.copy_(features.std(0).clamp_min(1e-6))


class DualBranchNet(nn.Module):
    """The DN-PIQA network.

    `aux == "liqe"` means the head reads the 495 LIQE logits. `liqe` (the CLIP that computes them) may be
    absent, e.g. after importing only `PIQ_model.pth`; then the caller passes `aux` to `forward_crops`.
    Its linears run on oneDNN at inference on x86-64 CPUs (`piqa_model.onednn`).
    """

    def __init__(self, config: ModelConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        self.overall = build_backbone(config.overall, pretrained=pretrained)
        self.face = build_backbone(config.face, pretrained=pretrained)
        self.liqe: LiqeBranch | None = None
        if config.aux == "liqe" and config.liqe is not None:
            self.liqe = LiqeBranch.from_pretrained_clip(config.liqe) if pretrained else LiqeBranch(config.liqe)
        self.standardise = Standardise(config.head_input_width) if config.standardise_features else None
        self.quality = nn.Sequential(
            nn.Linear(config.head_input_width, config.head_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, 1),
        )
        for branch in ("overall", "face"):
            backbone = getattr(self, branch)
            width = getattr(config, branch).feature_width
            if backbone.num_features != width:
                raise ConfigError(f"{branch} backbone gives {backbone.num_features} features, its config says {width}")
            # Each backbone's own input normalisation (ImageNet's for Swin, 0.5/0.5 for EfficientNet-Lite).
            mean, std = backbone.pretrained_cfg["mean"], backbone.pretrained_cfg["std"]
            self.register_buffer(f"{branch}_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"{branch}_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        use_onednn_linear(self)

    def compile_backbones(self) -> None:
        """`torch.compile` the Swin backbones and the LIQE CLIP in place (state-dict keys unchanged): their
        forwards are nearly all of the FLOPs. Each new batch shape pays a compile on its first call (tens of
        seconds), so it pays off on long jobs; scores equal eager ones to float rounding."""
        for module in (self.overall, self.face, self.liqe):
            if module is not None:
                module.compile()

    @property
    def uses_aux(self) -> bool:
        return self.config.aux == "liqe"

    def check_self_contained(self) -> None:
        """Raise ConfigError unless the network can score images on its own (LIQE weights present if used)."""
        if self.uses_aux:
            self._liqe()

    @property
    def device(self) -> torch.device:
        return self.overall_mean.device

    def normalise(self, crops_u8: torch.Tensor, branch: Branch = "overall") -> torch.Tensor:
        """uint8 crops [N, 3, H, W] -> float crops normalised as `branch`'s backbone expects (the paper's two Swin
        branches normalise alike, so code written for them may leave `branch` out)."""
        mean, std = getattr(self, f"{branch}_mean"), getattr(self, f"{branch}_std")
        return (crops_u8.to(mean.dtype) / 255.0 - mean) / std

    def forward_crops(self, overall: torch.Tensor, face: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [N, 1] of N crop pairs (normalised float [N, 3, S, S]) and their aux vectors [N, 495]."""
        features = self.head_inputs(overall, face, aux)
        if self.standardise is not None:
            features = self.standardise(features)
        return self.quality(features)

    def head_inputs(self, overall: torch.Tensor, face: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """What the head reads, before any standardisation: both branches' features and aux, [N, head_input_width]."""
        if self.uses_aux and aux is None:
            raise ConfigError("this network reads LIQE features: pass aux [N, 495]")
        if not self.uses_aux and aux is not None:
            raise ConfigError("this network has no auxiliary branch: aux must be None")
        features = [self.overall(overall), self.face(face)]
        if aux is not None:
            features.append(aux.to(features[0].dtype))
        return torch.cat(features, dim=1)

    def forward(self, overall: torch.Tensor, face: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """`forward_crops`, as the module's call: DistributedDataParallel synchronises gradients only through it."""
        return self.forward_crops(overall, face, aux)

    def aux_features(self, image_u8: torch.Tensor) -> torch.Tensor:
        """LIQE logits [1, 495] of one native-size uint8 image [1, 3, H, W]."""
        return self.aux_from_patches(cut_patches(image_u8, self._liqe().config))

    def aux_from_patches(self, patches_u8: torch.Tensor) -> torch.Tensor:
        """LIQE logits [B, 495] from the selected patches of B images ([B * 15, 3, 224, 224] uint8)."""
        return self._liqe()(patches_u8.to(self.device))

    def _liqe(self) -> LiqeBranch:
        if self.liqe is None:
            raise ConfigError(
                "this network has no LIQE weights; import them with "
                "`piqa weights import-dnpiqa --checkpoint PIQ_model.pth --liqe LIQE.pt`"
            )
        return self.liqe

    def score_images(
        self, overall_u8: torch.Tensor, face_u8: torch.Tensor, aux: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image scores [B] from uint8 crops [B, K, 3, S, S] (K crops per image) and aux [B, 495].

        All B*K crops go through one forward; the image score is the mean of its K crop scores.
        """
        batch, crops = overall_u8.shape[:2]
        flat_aux = None if aux is None else aux.repeat_interleave(crops, dim=0)
        scores = self.forward_crops(
            self.normalise(overall_u8.flatten(0, 1), "overall"), self.normalise(face_u8.flatten(0, 1), "face"), flat_aux
        )
        return scores.view(batch, crops).mean(dim=1)
