"""The port reproduces the recorded DN-PIQA reference fixture (authors' checkpoint layouts, timm 0.6.7)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import piqa_model
from piqa_model import liqe as liqe_module

CHECKPOINT = "dnpiqa_small_timm067.pth"
CLIP = "clip_tiny_openai_layout.pt"
TOL = 1e-4


@pytest.fixture(scope="module")
def io(reference_dir: Path) -> dict:
    return torch.load(reference_dir / "dnpiqa_small_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def liqe_io(reference_dir: Path) -> dict:
    return torch.load(reference_dir / "liqe_tiny_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def net(reference_dir: Path) -> piqa_model.DualBranchNet:
    return piqa_model.import_dnpiqa(reference_dir / CHECKPOINT, reference_dir / CLIP)


@torch.no_grad()
def crop_scores(net, io, count=5, aux=True):
    overall = net.normalise(io["overall_crops_u8"][:count])
    face = net.normalise(io["face_crops_u8"][:count])
    return net.forward_crops(overall, face, io["aux"][:count] if aux else None)


def test_imported_network_reproduces_per_crop_scores_and_image_score(net, io):
    assert not net.training
    scores = crop_scores(net, io)
    assert scores.shape == (5, 1)
    torch.testing.assert_close(scores, io["per_crop_scores"], atol=TOL, rtol=0)
    assert abs(float(scores.mean()) - float(io["score"])) < TOL


def test_score_images_is_the_mean_of_the_five_crops(net, io):
    with torch.no_grad():
        image_scores = net.score_images(io["overall_crops_u8"][None], io["face_crops_u8"][None], io["aux"][:1])
    assert image_scores.shape == (1,)
    assert abs(float(image_scores[0]) - float(io["score"])) < TOL


def test_aux_features_reproduce_liqe_vector(net, liqe_io):
    aux = net.aux_features(liqe_io["image_u8"])
    assert aux.shape == (1, 495)
    torch.testing.assert_close(aux, liqe_io["aux"], atol=TOL, rtol=0)


def test_patch_origins_select_the_recorded_patches(net, liqe_io):
    config = net.liqe.config
    height, width = liqe_io["image_u8"].shape[-2:]
    size, stride = config.patch_size, config.patch_stride
    rows, cols = (height - size) // stride + 1, (width - size) // stride + 1
    assert rows * cols == liqe_io["num_patches_total"]
    origins = liqe_module.patch_origins(height, width, config)
    assert len(origins) == 15
    assert all(0 <= r < rows and 0 <= c < cols for r, c in origins)
    assert [r * cols + c for r, c in origins] == liqe_io["selected"].tolist()


def test_inferred_config_matches_manifest(net, manifest):
    swin = manifest["swin"]
    for branch in (net.config.overall, net.config.face):
        assert branch.embed_dim == swin["embed_dim"] == 16
        assert branch.depths == tuple(swin["depths"]) == (2, 2, 2, 2)
        assert branch.num_heads == tuple(swin["num_heads"]) == (1, 2, 4, 8)
        assert branch.window_size == swin["window_size"] == 12
        assert branch.img_size == swin["img_size"] == 384
        assert branch.patch_size == swin["patch_size"]
        assert branch.feature_width == manifest["feature_width"]
    assert net.config.aux == "liqe"
    assert net.config.aux_width == manifest["aux_width"]
    assert net.config.head_input_width == 2 * manifest["feature_width"] + manifest["aux_width"]
    patch = manifest["liqe_patch"]
    assert (net.liqe.config.patch_size, net.liqe.config.patch_stride) == (patch["size"], patch["stride"])
    assert net.liqe.config.num_patches == patch["count"]
    # The tiny CLIP's shape, read off its tensors (README: width 64, 2 layers, patch 32, embed 32).
    clip = net.liqe.config
    assert (clip.vision_width, clip.vision_layers, clip.vision_patch, clip.image_size) == (64, 2, 32, 224)
    assert (clip.text_width, clip.text_layers, clip.embed_dim, clip.context_length) == (64, 2, 32, 77)


def test_prompts_follow_manifest_order(manifest):
    assert list(liqe_module.QUALITIES) == manifest["qualities"]
    assert list(liqe_module.SCENES) == manifest["scenes"]
    assert list(liqe_module.DISTORTIONS) == manifest["distortions"]
    assert manifest["prompt_template"] == liqe_module.PROMPT_TEMPLATE
    prompts = liqe_module.prompts()
    assert len(prompts) == 495 == manifest["aux_width"]
    template = manifest["prompt_template"]
    assert prompts[0] == template.format(scene="animal", distortion="jpeg2000 compression", quality="bad")
    # Quality-major, then scene, then distortion.
    assert prompts[1] == template.format(scene="animal", distortion="jpeg compression", quality="bad")
    assert prompts[11] == template.format(scene="cityscape", distortion="jpeg2000 compression", quality="bad")
    assert prompts[99] == template.format(scene="animal", distortion="jpeg2000 compression", quality="poor")
    assert prompts[-1] == template.format(scene="others", distortion="other", quality="perfect")


def test_import_without_liqe_scores_with_given_aux(reference_dir, io):
    net_no_liqe = piqa_model.import_dnpiqa(reference_dir / CHECKPOINT)
    assert net_no_liqe.liqe is None
    assert net_no_liqe.uses_aux
    scores = crop_scores(net_no_liqe, io, count=2)
    torch.testing.assert_close(scores, io["per_crop_scores"][:2], atol=TOL, rtol=0)
    with pytest.raises(piqa_model.ConfigError, match="LIQE"):
        net_no_liqe.aux_features(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_forward_crops_without_aux_on_aux_network_raises(net, io):
    with pytest.raises(piqa_model.ConfigError, match="aux"):
        crop_scores(net, io, count=1, aux=False)


def test_forward_crops_with_aux_on_plain_network_raises(io):
    torch.manual_seed(0)
    plain = piqa_model.DualBranchNet(piqa_model.preset("small")).eval()
    with pytest.raises(piqa_model.ConfigError, match="aux"):
        crop_scores(plain, io, count=1, aux=True)
    assert crop_scores(plain, io, count=1, aux=False).shape == (1, 1)


def test_aux_features_without_liqe_raises(liqe_io):
    plain = piqa_model.DualBranchNet(piqa_model.preset("small"))
    assert plain.liqe is None
    with pytest.raises(piqa_model.ConfigError, match="LIQE"):
        plain.aux_features(liqe_io["image_u8"])


def test_bundle_round_trip_reproduces_scores_and_aux(net, io, liqe_io, tmp_path):
    info = piqa_model.BundleInfo(name="x", trained=True)
    path = piqa_model.save_bundle(net, tmp_path / "b", info)
    assert sorted(p.name for p in path.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left behind

    loaded, loaded_info, bundle_id = piqa_model.read_bundle(path)
    assert loaded_info == info
    assert bundle_id.startswith("x-") and len(bundle_id) == len("x-") + 12
    assert loaded.config == net.config
    assert not loaded.training
    # Prompt features come from the bundle, not from re-encoding: present before any use.
    assert loaded.liqe is not None
    assert not torch.isnan(loaded.liqe.text_features).any()
    torch.testing.assert_close(loaded.liqe.text_features, net.liqe.prompt_features(), atol=0, rtol=0)

    torch.testing.assert_close(crop_scores(loaded, io), io["per_crop_scores"], atol=TOL, rtol=0)
    torch.testing.assert_close(loaded.aux_features(liqe_io["image_u8"]), liqe_io["aux"], atol=TOL, rtol=0)

    # Same weights, same id; different weights, different id.
    assert piqa_model.read_bundle(path)[2] == bundle_id
    with torch.no_grad():
        loaded.quality[3].bias.add_(1.0)
    other = piqa_model.save_bundle(loaded, tmp_path / "c", info)
    assert piqa_model.read_bundle(other)[2] != bundle_id


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = piqa_model.DualBranchNet(piqa_model.preset("small"))
    return piqa_model.save_bundle(net, tmp_path_factory.mktemp("small") / "bundle", piqa_model.BundleInfo("s", False))


def test_small_bundle_reads(small_bundle):
    net, info, _ = piqa_model.read_bundle(small_bundle)
    assert net.config == piqa_model.preset("small")
    assert info.trained is False


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param(b"not safetensors at all", id="garbage-bytes"),
        pytest.param({"foo": torch.zeros(3)}, id="foreign-tensors"),
        pytest.param({"quality.0.weight": torch.zeros(2, 2)}, id="wrong-shape"),
        pytest.param(None, id="missing-file"),
    ],
)
def test_bundle_with_wrong_weights_raises(small_bundle, tmp_path, weights):
    path = tmp_path / "bundle"
    path.mkdir()
    (path / "config.json").write_bytes((small_bundle / "config.json").read_bytes())
    if isinstance(weights, bytes):
        (path / "model.safetensors").write_bytes(weights)
    elif isinstance(weights, dict):
        save_file(weights, str(path / "model.safetensors"))
    with pytest.raises(piqa_model.WeightsError):
        piqa_model.read_bundle(path)


def test_bundle_with_bad_config_raises(small_bundle, tmp_path):
    path = tmp_path / "bundle"
    path.mkdir()
    (path / "model.safetensors").write_bytes((small_bundle / "model.safetensors").read_bytes())
    (path / "config.json").write_text('{"model": {"name": "x"}, "bundle": {"name": "x", "trained": true}}')
    with pytest.raises(piqa_model.WeightsError):
        piqa_model.read_bundle(path)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(piqa_model.WeightsError, match="not found"):
        piqa_model.import_dnpiqa(tmp_path / "PIQ_model.pth")


def test_non_dnpiqa_state_dict_raises(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)).state_dict(), path)
    with pytest.raises(piqa_model.WeightsError, match="DN-PIQA"):
        piqa_model.import_dnpiqa(path)


def test_non_checkpoint_file_raises(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x00\x01 definitely not a torch file")
    with pytest.raises(piqa_model.WeightsError):
        piqa_model.import_dnpiqa(path)


def test_wrong_liqe_file_raises(reference_dir):
    with pytest.raises(piqa_model.WeightsError, match="CLIP"):
        piqa_model.import_dnpiqa(reference_dir / CHECKPOINT, reference_dir / CHECKPOINT)
