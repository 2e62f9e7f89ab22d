"""Backbone families behind the registry: each builds, reports its width and normalisation, and round-trips in a
bundle config; the packaged EfficientNet-Lite0 ImageNet weights map strictly into timm's layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import timm.data
import torch
from PIL import Image

import piqa_model
from piqa_model.backbones import backbone_config_from_dict, build_backbone, families
from piqa_model.backbones.efficientnet import EfficientNetLiteConfig, load_pretrained, pretrained_weights_file
from piqa_model.backbones.swin import SwinConfig
from piqa_model.backbones.timm_family import TimmConfig
from piqa_model.config import SMALL_SWIN, ModelConfig
from piqa_model.errors import ConfigError
from training.loop import freeze_parameters

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SUIT, WINDSOR_TIE, BOW_TIE = 834, 906, 457

BRANCHES = {
    "swin": (SMALL_SWIN, IMAGENET),
    "timm": (TimmConfig("resnet10t"), IMAGENET),
    "efficientnet-lite": (EfficientNetLiteConfig(), ((0.5,) * 3, (0.5,) * 3)),
}


def test_every_family_is_registered():
    assert set(families()) == set(BRANCHES)


@pytest.mark.parametrize("family", sorted(BRANCHES))
def test_a_family_builds_with_its_width_and_normalisation(family):
    config, (mean, std) = BRANCHES[family]
    model = ModelConfig(name=family, overall=config, face=config, aux="none", liqe=None)
    net = piqa_model.DualBranchNet(model)
    assert net.overall.num_features == config.feature_width
    assert net.quality[0].in_features == 2 * config.feature_width
    torch.testing.assert_close(net.overall_mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(net.face_std.flatten(), torch.tensor(std))
    crops = torch.randint(0, 256, (1, 1, 3, model.crop, model.crop), dtype=torch.uint8)
    with torch.no_grad():
        assert net.eval().score_images(crops, crops).shape == (1,)
    assert backbone_config_from_dict(dataclasses.asdict(config)) == config


def test_a_config_written_before_families_reads_as_swin():
    written = piqa_model.preset("small").to_dict()
    for branch in ("overall", "face"):
        del written[branch]["family"]
    assert ModelConfig.from_dict(written) == piqa_model.preset("small")
    assert isinstance(ModelConfig.from_dict(written).overall, SwinConfig)


def test_unknown_families_and_models_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown backbone family 'vgg'; known: efficientnet-lite, swin, timm"):
        backbone_config_from_dict({"family": "vgg", "timm_name": "vgg11"})
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        build_backbone(TimmConfig("no_such_net"))
    with pytest.raises(ConfigError, match="not an EfficientNet-Lite"):
        EfficientNetLiteConfig(timm_name="tf_efficientnet_b0")


def test_efficientnet_lite_keeps_its_batch_norms_frozen_and_runs_channels_last():
    backbone = build_backbone(EfficientNetLiteConfig())
    kinds = {type(m).__name__ for m in backbone.modules() if "BatchNorm" in type(m).__name__}
    assert kinds == {"FrozenBatchNormAct2d"}
    assert backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    before = backbone.bn1.running_mean.clone()
    backbone.train()(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(backbone.bn1.running_mean, before)  # training batches leave the statistics alone


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_packaged_imagenet_weights_load_strictly_and_recognise_a_suit(repo_root: Path, variant: str):
    assert pretrained_weights_file(variant).is_file()
    model = timm.create_model(f"tf_efficientnet_{variant}", num_classes=1000)
    random_head = model.classifier.weight.clone()
    load_pretrained(model, variant)  # raises on any missing or unexpected key
    assert not torch.equal(model.classifier.weight, random_head)
    image = Image.open(repo_root / "samples" / "portraits" / "congress_B001260.jpg").convert("RGB")
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        top = model.eval()(transform(image).unsqueeze(0)).softmax(-1).topk(3).indices[0].tolist()
    assert top[0] == SUIT and {WINDSOR_TIE, BOW_TIE} & set(top)  # a congressman's headshot: suit and tie


def test_pretrained_network_branches_carry_the_imagenet_weights():
    net = piqa_model.DualBranchNet(piqa_model.preset("lite0-352"), pretrained=True)
    reference = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_pretrained(reference, "lite0")
    torch.testing.assert_close(net.face.conv_head.weight, reference.conv_head.weight)
    torch.testing.assert_close(net.overall.bn2.running_var, reference.bn2.running_var)


def test_stage_statistics_are_the_mean_and_std_of_each_stage_from_the_first_named():
    config = EfficientNetLiteConfig(timm_name="tf_efficientnet_lite2", pool="stage-stats", first_stage=4)
    backbone = build_backbone(config, pretrained=True).eval()
    reference = timm.create_model("tf_efficientnet_lite2", num_classes=0)
    load_pretrained(reference, "lite2")
    maps = []
    for stage in reference.blocks[4:]:
        stage.register_forward_hook(lambda _module, _args, out: maps.append(out))
    pixels = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference.eval()(pixels)
        found = backbone(pixels)
    expected = torch.cat([s for m in maps for s in (m.mean((2, 3)), m.std((2, 3), correction=0))], dim=1)
    assert found.shape == (2, config.feature_width) == (2, backbone.num_features)
    assert config.feature_width == 2 * (120 + 208 + 352)  # lite2's stages 4, 5 and 6
    # Ours runs channels-last, timm's model contiguous: other kernels, other float rounding.
    torch.testing.assert_close(found, expected, rtol=1e-3, atol=1e-4)
    assert not any(name.startswith("conv_head") for name, _ in backbone.named_parameters())  # unused: dropped


def test_stage_statistics_are_a_checked_option():
    with pytest.raises(ConfigError, match="pool must be one of 'last', 'stage-stats'"):
        EfficientNetLiteConfig(pool="max")
    with pytest.raises(ConfigError, match="first_stage must be in 0..6"):
        build_backbone(EfficientNetLiteConfig(pool="stage-stats", first_stage=7))
    stats = piqa_model.preset("lite2-352").overall
    assert backbone_config_from_dict(dataclasses.asdict(stats)) == stats
    written_before = dataclasses.asdict(EfficientNetLiteConfig())
    del written_before["pool"], written_before["first_stage"]
    assert backbone_config_from_dict(written_before) == EfficientNetLiteConfig()  # the pooled last stage, as before


def test_freeze_names_parameters_by_prefix():
    net = piqa_model.DualBranchNet(piqa_model.preset("lite0-352"))
    assert freeze_parameters(net, ("overall.conv_stem", "face.blocks.0.")) == 3
    assert not net.overall.conv_stem.weight.requires_grad and net.overall.blocks[0][0].conv_dw.weight.requires_grad
    with pytest.raises(ConfigError, match="names no parameter"):
        freeze_parameters(net, ("overall.no_such_layer",))


def test_the_mixed_preset_has_two_networks_and_fits_the_bundle_limit_in_fp16(tmp_path):
    config = piqa_model.preset("lite2-lite0-448")
    net = piqa_model.DualBranchNet(config)
    assert config.overall.variant == "lite2" and config.face.variant == "lite0"
    assert config.head_input_width == config.overall.feature_width + config.face.feature_width
    assert config.overall.feature_width != config.face.feature_width
    with torch.no_grad():
        views = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        scores = net.eval().forward_crops(views[0], views[1])
    assert scores.shape[0] == 2 and torch.isfinite(scores).all()
    path = piqa_model.save_bundle(net, tmp_path / "b", piqa_model.BundleInfo("m", False), weights_dtype=torch.float16)
    assert sum(f.stat().st_size for f in Path(path).iterdir()) < 30e6  # the shipped bundle's limit
