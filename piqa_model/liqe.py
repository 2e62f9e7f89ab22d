"""LIQE auxiliary features: a CLIP scoring 15 image patches against 495 scene x distortion x quality prompts.

The rule (Zhang et al., CVPR 2023, as DN-PIQA uses it): take the image at its native size, scaled to
[0, 1] and CLIP-normalised, consider every 224x224 patch at stride 32 in row-major order (N of them),
encode the patches at indices i * (N // 15), and average `logit_scale.exp() * f . t` over them. We cut
only those 15 patches, so memory does not grow with the image (all N patches of a 12 MP photo would
take gigabytes). Text features of the 495 prompts are computed once and kept as a buffer, so they are
saved with the weights.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from piqa_model.config import LiqeConfig
from piqa_model.errors import WeightsError, WeightsUnavailableError

QUALITIES = ("bad", "poor", "fair", "good", "perfect")
SCENES = ("animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others")
DISTORTIONS = (
    "jpeg2000 compression",
    "jpeg compression",
    "noise",
    "blur",
    "color",
    "contrast",
    "overexposure",
    "underexposure",
    "spatial",
    "quantization",
    "other",
)
PROMPT_TEMPLATE = "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def prompts() -> list[str]:
    """The 495 prompts, quality-major: product(qualities, scenes, distortions)."""
    return [
        PROMPT_TEMPLATE.format(scene=s, distortion=d, quality=q)
        for q, s, d in itertools.product(QUALITIES, SCENES, DISTORTIONS)
    ]


def patch_origins(height: int, width: int, config: LiqeConfig) -> list[tuple[int, int]]:
    """(row, column) grid positions of the selected patches among all patches of an HxW image (row-major)."""
    size, stride, count = config.patch_size, config.patch_stride, config.num_patches
    rows = (height - size) // stride + 1
    cols = (width - size) // stride + 1
    step = (rows * cols) // count
    return [divmod(i * step, cols) for i in range(count)]


def cut_patches(image_u8: torch.Tensor, config: LiqeConfig) -> torch.Tensor:
    """The selected patches of a [3, H, W] (or [1, 3, H, W]) uint8 image as [count, 3, size, size] uint8.

    An image smaller than one patch is first upscaled (bilinear) so its short side equals the patch size;
    the original rule is undefined there.
    """
    if image_u8.dim() == 4:
        if image_u8.shape[0] != 1:
            raise ValueError("cut_patches takes one image")
        image_u8 = image_u8[0]
    size, stride = config.patch_size, config.patch_stride
    height, width = image_u8.shape[-2:]
    if min(height, width) < size:
        scale = size / min(height, width)
        new_size = (max(size, math.ceil(height * scale)), max(size, math.ceil(width * scale)))
        image_u8 = F.interpolate(image_u8[None].float(), size=new_size, mode="bilinear", align_corners=False)
        image_u8 = image_u8[0].round().clamp(0, 255).to(torch.uint8)
        height, width = new_size
    patches = [
        image_u8[:, r * stride : r * stride + size, c * stride : c * stride + size]
        for r, c in patch_origins(height, width, config)
    ]
    return torch.stack(patches)


@dataclass(frozen=True)
class LiqeSummary:
    """A readable digest of one LIQE vector: expected quality (1 bad .. 5 perfect) and the argmax labels."""

    quality: float
    scene: str
    distortion: str


def summarise(logits: torch.Tensor) -> list[LiqeSummary]:
    """Marginalise softmax(logits [N, 495]) over the three label axes, as LIQE reports them."""
    probs = logits.float().softmax(dim=-1).reshape(-1, len(QUALITIES), len(SCENES), len(DISTORTIONS))
    quality = probs.sum(dim=(2, 3)) @ torch.arange(1, len(QUALITIES) + 1, dtype=torch.float32)
    scene = probs.sum(dim=(1, 3)).argmax(dim=-1)
    distortion = probs.sum(dim=(1, 2)).argmax(dim=-1)
    return [
        LiqeSummary(float(q), SCENES[int(s)], DISTORTIONS[int(d)])
        for q, s, d in zip(quality, scene, distortion, strict=True)
    ]


class LiqeBranch(nn.Module):
    """Frozen CLIP + cached prompt features; maps uint8 patches to the 495 LIQE logits."""

    def __init__(self, config: LiqeConfig) -> None:
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # heavy; only models with LIQE need it

        super().__init__()
        self.config = config
        self.clip = CLIP(
            config.embed_dim,
            vision_cfg=CLIPVisionCfg(
                layers=config.vision_layers,
                width=config.vision_width,
                head_width=config.vision_width // config.vision_heads,
                patch_size=config.vision_patch,
                image_size=config.image_size,
            ),
            text_cfg=CLIPTextCfg(
                context_length=config.context_length,
                vocab_size=config.vocab_size,
                width=config.text_width,
                heads=config.text_heads,
                layers=config.text_layers,
            ),
            quick_gelu=True,
        )
        self.register_buffer("text_features", torch.full((len(prompts()), config.embed_dim), float("nan")))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @torch.no_grad()
    def prompt_features(self) -> torch.Tensor:
        """Unit-normalised text features [495, E]; encoded on first use, then kept (and saved)."""
        if torch.isnan(self.text_features).any():
            import open_clip

            tokens = open_clip.tokenize(prompts(), context_length=self.config.context_length)
            tokens = tokens.to(self.text_features.device)
            features = torch.cat([self.clip.encode_text(chunk) for chunk in tokens.split(128)])
            self.text_features.copy_(F.normalize(features.float(), dim=-1))
        return self.text_features

    def forget_prompt_features(self) -> None:
        """Mark the cached text features stale (after loading new text-tower weights)."""
        self.text_features.fill_(float("nan"))

    @torch.no_grad()
    def forward(self, patches_u8: torch.Tensor) -> torch.Tensor:
        """[B * count, 3, S, S] uint8 patches (count per image, consecutive) -> [B, 495] logits."""
        count = self.config.num_patches
        if patches_u8.shape[0] % count:
            raise ValueError(f"expected a multiple of {count} patches, got {patches_u8.shape[0]}")
        text = self.prompt_features()
        x = (patches_u8.to(self.mean.dtype) / 255.0 - self.mean) / self.std
        if x.shape[-1] != self.config.image_size:
            x = F.interpolate(x, size=self.config.image_size, mode="bilinear", align_corners=False)
        image = F.normalize(self.clip.encode_image(x).float(), dim=-1)
        logits = self.clip.logit_scale.exp().float() * image @ text.t()
        return logits.reshape(-1, count, logits.shape[-1]).mean(dim=1)

    def load_openai_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        sd = {k: v.float() for k, v in state_dict.items() if k not in _OPENAI_META_KEYS}
        try:
            self.clip.load_state_dict(sd)
        except RuntimeError as exc:
            raise WeightsError(f"LIQE/CLIP weights do not fit the architecture: {exc}") from None
        self.forget_prompt_features()

    @classmethod
    def from_pretrained_clip(cls, config: LiqeConfig) -> LiqeBranch:
        """CLIP initialised from OpenAI's weights via open_clip (needs the hub; not the LIQE fine-tune)."""
        import open_clip

        branch = cls(config)
        try:
            source = open_clip.create_model(config.open_clip_name, pretrained="openai")
        except Exception as exc:
            raise WeightsUnavailableError(
                f"could not fetch open_clip '{config.open_clip_name}' (pretrained='openai'): {exc}. "
                "Offline? Import LIQE.pt with `piqa weights import-dnpiqa --liqe LIQE.pt`."
            ) from exc
        branch.load_openai_state_dict(source.state_dict())
        return branch


_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


def unwrap_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Find the OpenAI-layout CLIP tensors in a checkpoint (plain, DDP- or wrapper-prefixed)."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    anchor = "visual.conv1.weight"
    for key in state_dict:
        if key.endswith(anchor):
            prefix = key[: -len(anchor)]
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    raise WeightsError("not an OpenAI-layout CLIP ViT checkpoint: no 'visual.conv1.weight' tensor")


def infer_liqe_config(state_dict: dict[str, torch.Tensor]) -> LiqeConfig:
    """Architecture of an OpenAI-layout CLIP ViT from its tensors (heads = width / 64, as OpenAI's)."""
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(state_dict["visual.positional_embedding"].shape[0]) - 1)
    text_width = int(state_dict["ln_final.weight"].shape[0])

    def count_layers(prefix: str) -> int:
        pattern = re.compile(rf"^{re.escape(prefix)}resblocks\.(\d+)\.")
        return len({m.group(1) for k in state_dict if (m := pattern.match(k))})

    return LiqeConfig(
        embed_dim=int(state_dict["text_projection"].shape[1]),
        image_size=grid * patch,
        vision_width=vision_width,
        vision_layers=count_layers("visual.transformer."),
        vision_heads=max(1, vision_width // 64),
        vision_patch=patch,
        text_width=text_width,
        text_layers=count_layers("transformer."),
        text_heads=max(1, text_width // 64),
        vocab_size=int(state_dict["token_embedding.weight"].shape[0]),
        context_length=int(state_dict["positional_embedding"].shape[0]),
    )
