"""Import of the authors' released checkpoints: `PIQ_model.pth` (whole network) and `LIQE.pt` (CLIP).

`PIQ_model.pth` key layout (timm 0.6.7 Swin inside the authors' wrappers):
  feature_extraction.feature_extraction.<swin>                        whole-image branch
  feature_extraction_face.feature_extraction.feature_extraction.<swin> face branch
  quality.{0,3}.{weight,bias}                                          the MLP head
The architecture is read off the tensors, so Swin-B and any smaller variant import alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from piqa_model.backbones.swin import infer_swin_config, load_swin_weights
from piqa_model.config import ModelConfig
from piqa_model.errors import WeightsError
from piqa_model.liqe import infer_liqe_config, unwrap_clip_state_dict
from piqa_model.network import DualBranchNet

OVERALL_PREFIX = "feature_extraction.feature_extraction."
FACE_PREFIX = "feature_extraction_face.feature_extraction.feature_extraction."
HEAD_PREFIX = "quality."


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor dict from a torch checkpoint, loaded safely (`weights_only=True`), wrappers removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read {path} as a torch checkpoint of tensors: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise WeightsError(f"{path} holds a {type(data).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _section(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    section = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not section:
        raise WeightsError(f"not a DN-PIQA checkpoint: no tensors under '{prefix}'")
    return section


def import_dnpiqa(checkpoint: str | Path, liqe: str | Path | None = None) -> DualBranchNet:
    """Build a `DualBranchNet` (eval mode) from the authors' `PIQ_model.pth` and, optionally, `LIQE.pt`.

    Without `liqe`, a network whose head reads LIQE features needs `aux` passed to `forward_crops`.
    """
    state_dict = load_checkpoint_file(checkpoint)
    overall_sd = _section(state_dict, OVERALL_PREFIX)
    face_sd = _section(state_dict, FACE_PREFIX)
    head_sd = _section(state_dict, HEAD_PREFIX)
    overall_cfg, face_cfg = infer_swin_config(overall_sd), infer_swin_config(face_sd)
    try:
        hidden, head_in = head_sd["0.weight"].shape
    except KeyError:
        raise WeightsError("not a DN-PIQA checkpoint: no 'quality.0.weight'") from None
    aux_width = int(head_in) - overall_cfg.feature_width - face_cfg.feature_width
    if aux_width < 0:
        raise WeightsError(f"head input {head_in} is narrower than the two Swin features")

    clip_sd = unwrap_clip_state_dict(load_checkpoint_file(liqe)) if liqe is not None else None
    config = ModelConfig(
        name="dn-piqa-imported",
        overall=overall_cfg,
        face=face_cfg,
        aux="liqe" if aux_width else "none",
        liqe=infer_liqe_config(clip_sd) if clip_sd is not None else None,
        aux_width=aux_width or ModelConfig.aux_width,
        head_hidden=int(hidden),
    )
    if clip_sd is not None and not aux_width:
        raise WeightsError("LIQE weights given, but this checkpoint's head reads no auxiliary features")

    net = DualBranchNet(config)
    load_swin_weights(net.overall, overall_sd)
    load_swin_weights(net.face, face_sd)
    net.quality.load_state_dict({k: head_sd[k] for k in ("0.weight", "0.bias", "3.weight", "3.bias")})
    if clip_sd is not None and net.liqe is not None:
        net.liqe.load_openai_state_dict(clip_sd)
    return net.eval()
