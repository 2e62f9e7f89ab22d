"""Speed options keep the scores: fused window attention and oneDNN linears (always on), bf16 autocast (opt-in)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from timm.layers import Mlp

import piqa_model
from piqa_model.backbones.swin import use_fused_attention
from piqa_model.onednn import OneDnnLinear, OneDnnMlp, onednn_available, use_onednn_linear


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 5, 3, 384, 384), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def net() -> piqa_model.DualBranchNet:
    torch.manual_seed(0)
    return piqa_model.DualBranchNet(piqa_model.preset("small")).eval()


def test_fused_window_attention_gives_the_plain_scores(net, crops):
    plain = copy.deepcopy(net)
    use_fused_attention(plain, enabled=False)
    with torch.inference_mode():
        torch.testing.assert_close(net.score_images(crops, crops), plain.score_images(crops, crops), atol=1e-5, rtol=0)


def test_bf16_scores_stay_within_a_stated_tolerance_of_fp32(portrait_paths, tmp_path):
    net = piqa_model.DualBranchNet(piqa_model.preset("small"))
    bundle = piqa_model.save_bundle(net, tmp_path / "b", piqa_model.BundleInfo("t", trained=True))
    images = [p.read_bytes() for p in portrait_paths["congress"][:2] + portrait_paths["london"][:1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = piqa_model.load_bundle(bundle).score(images)
        bf16 = piqa_model.load_bundle(bundle, precision="bf16").score(images)
    for full, half in zip(fp32, bf16, strict=True):
        assert half["score"] == pytest.approx(full["score"], abs=2e-2)
        assert half["face_box"] == full["face_box"]


def test_onednn_linears_give_the_plain_scores_and_switch_back(net, crops):
    plain = copy.deepcopy(net)
    use_onednn_linear(plain, enabled=False)
    kinds = {type(m) for m in plain.modules()}
    assert OneDnnLinear not in kinds and OneDnnMlp not in kinds
    if onednn_available():  # the CI machine's x86-64 CPU: the switch must have taken effect
        assert {OneDnnLinear, OneDnnMlp} <= {type(m) for m in net.modules()}
    assert list(plain.state_dict()) == list(net.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(net.score_images(crops, crops), plain.score_images(crops, crops), atol=1e-5, rtol=0)


def test_onednn_linears_leave_training_to_pytorch(net, crops):
    """With gradients on, the layers run PyTorch's own linears: same outputs, same gradients."""
    switched, plain = copy.deepcopy(net).eval(), copy.deepcopy(net).eval()
    use_onednn_linear(plain, enabled=False)
    grads = []
    for model in (switched, plain):
        model.score_images(crops[:1], crops[:1]).sum().backward()
        grads.append(model.overall.layers[0].blocks[0].mlp.fc1.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)


@pytest.mark.skipif(not onednn_available(), reason="oneDNN's fused linear is x86-64 only")
def test_onednn_layers_match_pytorch_on_strided_inputs_and_without_bias():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False), Mlp(64, 256))
    switched = copy.deepcopy(plain)
    use_onednn_linear(switched)
    assert [type(m) for m in switched] == [OneDnnLinear, OneDnnMlp]
    x = torch.randn(3, 16, 5, 32).permute(0, 2, 1, 3)  # not contiguous, as tokens often are
    with torch.inference_mode():
        torch.testing.assert_close(switched(x), plain(x), atol=1e-5, rtol=1e-5)
