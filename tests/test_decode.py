"""`piqa_model.decode`: the draft (DCT-scaled) decode gives the model what a full decode gives it.

Tolerances, all measured against `mode="full"` on the same bytes:
- face box: every coordinate within 5 % of the box's short side (MTCNN reads a preview made from other pixels;
  merely switching the full path's preview filter from bilinear to box moves boxes as much);
- model-size crops cut with the same detection: mean |difference| < 1 and max < 16 on 0..255 (what remains is
  the DCT's downscale against the bilinear one);
- image score (`small` preset, seeded random weights, end to end): within 5e-3 (scores of different photos
  differ by about 3e-2).
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import broken_inputs
from PIL import Image

import piqa_model
from piqa_model import FaceDetector, ModelConfig, predict, prepare, preset
from piqa_model.decode import DecodeMode, ModelImage, open_preview
from piqa_model.faces import FaceDetection
from piqa_model.flow import ImageFlow

SMALL = preset("small")
BOX_TOLERANCE = 0.05
CROP_MEAN, CROP_MAX = 1.0, 16
SCORE_TOLERANCE = 5e-3


def jpeg(image: Image.Image, quality: int = 92, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **params)
    return buffer.getvalue()


def upscale(path: Path, size: tuple[int, int]) -> Image.Image:
    return Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def net() -> piqa_model.DualBranchNet:
    torch.manual_seed(0)
    return piqa_model.DualBranchNet(SMALL).eval()


@pytest.fixture(scope="module")
def london(shared_dir: Path) -> list[Path]:
    return sorted((shared_dir / "data" / "portraits" / "london").glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def piq23(shared_dir: Path) -> list[Path]:
    examples = sorted((shared_dir / "data" / "piq23" / "examples").glob("*.jpg"))
    return [path for path in examples if Image.open(path).size == (1800, 1350)][:2]


@pytest.fixture(scope="module")
def twelve_mp(london: list[Path], piq23: list[Path], tmp_path_factory) -> dict[str, bytes]:
    """12 MP JPEGs (quality 92) upscaled from a London portrait (big face) and a PIQ23 example (small face)."""
    folder = tmp_path_factory.mktemp("twelve-mp")
    photos = {"london-12mp": upscale(london[0], (3464, 3464)), "piq23-12mp": upscale(piq23[0], (4000, 3000))}
    for name, image in photos.items():
        (folder / f"{name}.jpg").write_bytes(jpeg(image))
    return {name: (folder / f"{name}.jpg").read_bytes() for name in photos}


def decode_for_model(
    data: bytes, config: ModelConfig, detector: FaceDetector, mode: DecodeMode = "draft"
) -> ModelImage:
    """One good image through the flow's decode and detection."""
    [decoded] = ImageFlow(config, detector, decode=mode).decode_and_detect([data])
    assert decoded.image is not None, decoded.record.error
    return decoded.image


def both(data: bytes, detector: FaceDetector, config: ModelConfig = SMALL) -> tuple[ModelImage, ModelImage]:
    return (
        decode_for_model(data, config, detector, mode="full"),
        decode_for_model(data, config, detector, mode="draft"),
    )


def assert_boxes_close(full: FaceDetection, draft: FaceDetection) -> None:
    assert full.box is not None and draft.box is not None
    left, top, right, bottom = full.box
    tolerance = BOX_TOLERANCE * min(right - left, bottom - top)
    assert np.abs(np.subtract(full.box, draft.box)).max() <= tolerance, (full.box, draft.box)


def assert_crops_close(full: ModelImage, draft: ModelImage, config: ModelConfig = SMALL) -> None:
    """The crops of both decodes, cut with the full decode's detection: only the decode differs."""
    expected = prepare(full.image, full.detection, config)
    actual = prepare(draft.image, full.detection, config, draft.original_size)
    for name in ("overall", "face"):
        a, b = getattr(expected, name), getattr(actual, name)
        assert a.shape == b.shape
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < CROP_MEAN and diff.max() < CROP_MAX, (name, float(diff.mean()), float(diff.max()))


def score(net, item: ModelImage) -> float:
    scores, _ = predict(net, [prepare(item.image, item.detection, net.config, item.original_size)])
    return float(scores[0])


@pytest.mark.parametrize("name", ["london-12mp", "piq23-12mp"])
def test_12mp_photos(name, twelve_mp, detector, net):
    full, draft = both(twelve_mp[name], detector)
    assert full.original_size == draft.original_size == full.image.size
    assert full.detection.num_faces >= 1
    assert_boxes_close(full.detection, draft.detection)
    assert_crops_close(full, draft)
    assert abs(score(net, full) - score(net, draft)) < SCORE_TOLERANCE


def test_decode_scale_follows_the_face_size(twelve_mp, detector):
    # London: the face region is ~1200 px, so 1/2 keeps it above 448 px. PIQ23: the face region is under
    # 448 px even at full resolution, so the draft path decodes the model's image in full.
    london = decode_for_model(twelve_mp["london-12mp"], SMALL, detector)
    assert london.image.size == (1732, 1732) and london.scale == 0.5
    assert decode_for_model(twelve_mp["piq23-12mp"], SMALL, detector).scale == 1.0
    # The model's resize bounds the reduction: 256 px (small-224) lets London's face go to 1/4.
    assert decode_for_model(twelve_mp["london-12mp"], preset("small-224"), detector).scale == 0.25


def test_preview_is_decoded_small_for_detection(twelve_mp):
    preview = open_preview(twelve_mp["piq23-12mp"], SMALL, detect_size=640)
    assert preview.image.size == (1000, 750) and preview.denominator == 4  # long side still >= 640
    assert preview.original_size == (4000, 3000)


def test_without_a_face_only_the_whole_image_counts(twelve_mp, detector):
    item = open_preview(twelve_mp["piq23-12mp"], SMALL, detect_size=640).finish(FaceDetection.none())
    assert item.scale == 0.25  # short side 3000 / 4 = 750 >= 448
    assert item.detection.box is None


@pytest.mark.parametrize("source", ["london", "piq23"])
def test_real_photos_at_their_size(source, request, detector, net):
    for path in request.getfixturevalue(source):
        full, draft = both(path.read_bytes(), detector)
        assert full.original_size == draft.original_size == Image.open(path).size
        assert_boxes_close(full.detection, draft.detection)
        assert_crops_close(full, draft)
        assert abs(score(net, full) - score(net, draft)) < SCORE_TOLERANCE


# exif_transpose's operation for each orientation; storing the upright image transposed by the inverse
# operation makes a file that displays upright.
INVERSE = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90}
INVERSE[8] = Image.Transpose.ROTATE_270


@pytest.fixture(scope="module")
def landscape_portrait(london: list[Path]) -> Image.Image:
    """A non-square 9 MP photo with a big face (the London portrait's middle, upscaled): decoded at 1/2."""
    return (
        Image.open(london[0]).convert("RGB").crop((0, 175, 1350, 1175)).resize((3510, 2600), Image.Resampling.BICUBIC)
    )


@pytest.mark.parametrize("orientation", sorted(INVERSE))
def test_exif_orientation(orientation, landscape_portrait, detector):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(landscape_portrait.transpose(INVERSE[orientation]), exif=exif.tobytes())
    full, draft = both(data, detector)
    assert full.original_size == draft.original_size == (3510, 2600)
    assert draft.scale == pytest.approx(0.5, abs=1e-3)
    assert_boxes_close(full.detection, draft.detection)
    assert_crops_close(full, draft)
    upright = decode_for_model(jpeg(landscape_portrait), SMALL, detector)
    assert_boxes_close(upright.detection, draft.detection)


def test_png_is_decoded_in_full(london, detector):
    buffer = io.BytesIO()
    Image.open(london[0]).save(buffer, "PNG")
    full, draft = both(buffer.getvalue(), detector)
    assert draft.scale == 1.0
    assert draft.detection == full.detection
    assert np.array_equal(np.asarray(draft.image), np.asarray(full.image))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs(mode, london, detector):
    data = jpeg(upscale(london[0], (3464, 3464)).convert(mode))
    full, draft = both(data, detector)
    assert draft.image.mode == "RGB" and draft.scale == 0.5
    assert_boxes_close(full.detection, draft.detection)
    assert_crops_close(full, draft)


def test_liqe_models_read_the_full_image(twelve_mp, detector):
    draft = decode_for_model(twelve_mp["london-12mp"], preset("small-liqe"), detector, mode="draft")
    assert draft.scale == 1.0
    with pytest.raises(ValueError, match="LIQE"):
        prepare(draft.image.reduce(2), draft.detection, preset("small-liqe"), draft.original_size)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header claims width x height pixels."""
    data = jpeg(Image.new("RGB", (64, 64), (90, 120, 150)))
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9 :]


def test_broken_inputs_keep_their_status(twelve_mp, london):
    real = london[0].read_bytes()
    cases = {name: (data, status) for name, (data, status) in broken_inputs(real).items()}
    cases["truncated-12mp.jpg"] = (twelve_mp["piq23-12mp"][: len(twelve_mp["piq23-12mp"]) // 2], "decode_error")
    cases["bomb.jpg"] = (jpeg_claiming(20_000, 20_000), "too_large")
    for name, (data, status) in cases.items():
        for mode in ("full", "draft"):
            with pytest.raises(piqa_model.ImageError) as caught:
                open_preview(data, SMALL, detect_size=640, mode=mode)
            assert caught.value.status == status, (name, mode, caught.value)


def test_scorer_rows_agree_between_modes(twelve_mp, london, net):
    info = piqa_model.BundleInfo(name="test", trained=True)
    inputs = [twelve_mp["london-12mp"], london[0].read_bytes(), twelve_mp["piq23-12mp"][:100_000], b""]
    rows = {mode: piqa_model.Scorer(net, info, "test", decode=mode).score(inputs) for mode in ("full", "draft")}
    assert (
        [r["status"] for r in rows["draft"]] == [r["status"] for r in rows["full"]] == ["ok"] * 2 + ["decode_error"] * 2
    )
    for full, draft in zip(rows["full"][:2], rows["draft"][:2], strict=True):
        assert (draft["width"], draft["height"]) == (full["width"], full["height"])
        assert_boxes_close(
            FaceDetection(1, tuple(full["face_box"]), None), FaceDetection(1, tuple(draft["face_box"]), None)
        )
        assert abs(draft["score"] - full["score"]) < SCORE_TOLERANCE


def test_prepare_stage_and_cli_pass_the_mode(twelve_mp):
    from jobs.cli import build_parser
    from jobs.score import score_config_from_args
    from pipelines.stages import Prepare, _prepared_images

    args = build_parser().parse_args(["score", "in", "--out", "out", "--decode", "full"])
    assert score_config_from_args(args).decode == "full"
    assert score_config_from_args(build_parser().parse_args(["score", "in", "--out", "out"])).decode == "draft"

    batch = {
        "key": np.array(["a", "b"], dtype=object),
        "source": np.array(["s", "s"], dtype=object),
        "shard": np.array(["x", "x"], dtype=object),
        "index": np.array([0, 1]),
        "shard_total": np.array([2, 2]),
        "data": np.array([twelve_mp["london-12mp"], b"not an image"], dtype=object),
        "read_error": np.array([None, None], dtype=object),
    }
    outputs = {
        mode: Prepare(SMALL, detect_size=640, min_face_size=20, max_pixels=10**8, decode=mode)(batch)
        for mode in ("full", "draft")
    }
    metas = {mode: [json.loads(m) for m in out["record"]] for mode, out in outputs.items()}
    assert [m["status"] for m in metas["draft"]] == [m["status"] for m in metas["full"]] == ["ok", "decode_error"]
    assert metas["draft"][0]["width"] == metas["full"][0]["width"] == 3464
    # The face crops of the good row, as Score cuts them from the face view Prepare ships.
    draft, full = (_prepared_images(outputs[mode], [0], SMALL)[0].face.float() for mode in ("draft", "full"))
    diff = (draft - full).abs()
    assert diff.mean() < 2 * CROP_MEAN
