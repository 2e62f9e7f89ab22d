"""Face detection on real portraits, the face-crop policy and the model's crops."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import piqa_model
from piqa_model.crops import prepare, resize_short_side
from piqa_model.faces import FaceDetection, face_region
from piqa_model.images import to_uint8_tensor_chw


@pytest.fixture(scope="module")
def detector() -> piqa_model.FaceDetector:
    return piqa_model.FaceDetector()


@pytest.fixture(scope="module")
def portraits(portrait_paths: dict[str, list[Path]]) -> list[Image.Image]:
    paths = portrait_paths["london"] + portrait_paths["congress"]
    assert len(paths) == 6
    return [piqa_model.open_image(path.read_bytes()) for path in paths]


@pytest.fixture(scope="module")
def batch_detections(detector, portraits) -> list[FaceDetection]:
    return detector.detect(portraits)


def test_portrait_sizes(portraits):
    assert [image.size for image in portraits] == [(1350, 1350)] * 3 + [(225, 275)] * 3


def test_one_confident_central_face_per_portrait(portraits, batch_detections):
    assert len(batch_detections) == len(portraits)
    for image, detection in zip(portraits, batch_detections, strict=True):
        assert detection.num_faces >= 1
        assert detection.prob is not None and detection.prob > 0.9
        left, top, right, bottom = detection.box
        assert all(isinstance(v, float) for v in detection.box)
        assert 0 <= left < right <= image.width
        assert 0 <= top < bottom <= image.height
        centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
        assert image.width / 4 <= centre_x <= image.width * 3 / 4
        assert image.height / 4 <= centre_y <= image.height * 3 / 4
        assert 0.15 * image.width <= right - left <= 0.9 * image.width


def test_batched_and_single_detection_agree(detector, portraits, batch_detections):
    for image, batched in zip(portraits, batch_detections, strict=True):
        (single,) = detector.detect([image])
        assert single.num_faces == batched.num_faces
        np.testing.assert_allclose(single.box, batched.box, atol=1.0)
        assert abs(single.prob - batched.prob) < 1e-3


def test_boxes_are_in_original_pixels(detector, portraits, batch_detections):
    # A 1350 px portrait is detected on a 640 px preview; boxes are mapped back to full size.
    big = portraits[0]
    half = big.resize((675, 675), Image.Resampling.BILINEAR)
    (small,) = detector.detect([half])
    np.testing.assert_allclose(np.array(small.box) * 2, batch_detections[0].box, atol=12)


def test_no_face_images(detector):
    grey = Image.new("RGB", (400, 300), (128, 128, 128))
    ramp = np.tile(np.linspace(0, 255, 500), (400, 1)).astype(np.uint8)
    gradient = Image.fromarray(np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 90)], axis=-1))
    assert detector.detect([grey, gradient]) == [FaceDetection(0, None, None)] * 2
    assert FaceDetection.none() == FaceDetection(0, None, None)
    assert detector.detect([]) == []


def test_tiny_image_has_no_face(detector):
    assert detector.detect([Image.new("RGB", (10, 10), (128, 100, 90))]) == [FaceDetection.none()]


def test_face_region_grows_by_the_margin():
    assert face_region((100.0, 120.0, 200.0, 260.0), 1000, 800, 20) == (80, 100, 220, 280)
    # Fractional boxes round outwards.
    assert face_region((10.5, 20.2, 50.7, 60.1), 1000, 800, 0) == (10, 20, 51, 61)


def test_face_region_clips_at_the_borders():
    assert face_region((5.0, 10.0, 990.0, 795.0), 1000, 800, 20) == (0, 0, 1000, 800)
    assert face_region((-3.0, 700.0, 50.0, 810.0), 1000, 800, 20) == (0, 680, 70, 800)


def test_face_region_whole_image_when_no_face_or_outside():
    assert face_region(None, 640, 480, 20) == (0, 0, 640, 480)
    assert face_region((2000.0, 2000.0, 2100.0, 2100.0), 640, 480, 20) == (0, 0, 640, 480)


SMALL = piqa_model.preset("small")


def test_prepare_five_crops(portraits, batch_detections):
    for image, detection in ((portraits[0], batch_detections[0]), (portraits[3], batch_detections[3])):
        prepared = prepare(image, detection, SMALL)
        assert prepared.overall.shape == (5, 3, 384, 384)
        assert prepared.face.shape == (5, 3, 384, 384)
        assert prepared.overall.dtype == prepared.face.dtype == torch.uint8
        assert prepared.liqe_patches is None
        assert not torch.equal(prepared.face, prepared.overall)


def test_five_crops_are_corners_and_centre_of_the_resized_image(portraits, batch_detections):
    image = portraits[3]  # 225x275: short side to 448 -> 448x548
    resized = np.asarray(image.resize((448, round(275 * 448 / 225)), Image.Resampling.BILINEAR))
    height, width = resized.shape[:2]
    assert (width, height) == (448, 548)
    top, left = (height - 384) // 2, (width - 384) // 2
    expected = [
        resized[:384, :384],
        resized[:384, -384:],
        resized[-384:, :384],
        resized[-384:, -384:],
        resized[top : top + 384, left : left + 384],
    ]
    overall = prepare(image, batch_detections[3], SMALL).overall.permute(0, 2, 3, 1).numpy()
    for got, want in zip(overall, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_face_crops_come_from_the_grown_face_box(portraits, batch_detections):
    image, detection = portraits[3], batch_detections[3]
    region = face_region(detection.box, image.width, image.height, SMALL.face_margin)
    face = image.crop(region)
    prepared = prepare(image, detection, SMALL.replace(crop_mode="center"))
    expected = piqa_model.crops.crop_views(face, SMALL.replace(crop_mode="center"))
    assert torch.equal(prepared.face, expected)


def test_prepare_centre_crop(portraits, batch_detections):
    prepared = prepare(portraits[0], batch_detections[0], SMALL.replace(crop_mode="center"))
    assert prepared.overall.shape == (1, 3, 384, 384)
    assert prepared.face.shape == (1, 3, 384, 384)
    five = prepare(portraits[0], batch_detections[0], SMALL)
    assert torch.equal(prepared.overall[0], five.overall[4])
    assert torch.equal(prepared.face[0], five.face[4])


def corners_and_centre(view: np.ndarray, size: int) -> np.ndarray:
    """The five crops of a [3, H, W] view, by plain numpy slicing."""
    height, width = view.shape[1:]
    top, left = (height - size) // 2, (width - size) // 2
    corners = [view[:, :size, :size], view[:, :size, -size:], view[:, -size:, :size], view[:, -size:, -size:]]
    return np.stack([*corners, view[:, top : top + size, left : left + size]])


@pytest.mark.parametrize(("index", "reduce"), [(0, 1), (0, 2), (3, 1)])
def test_crops_cut_from_the_views_are_the_crops_of_the_whole_resized_views(portraits, batch_detections, index, reduce):
    """A PreparedImage ships views cut down to what its crops read; the crops cut from them are the same, for a
    full decode and a reduced one (`reduce`: as a draft decode gives)."""
    original = portraits[index]
    image = original.reduce(reduce)
    five = prepare(image, batch_detections[index], SMALL, original.size)
    centre = prepare(image, batch_detections[index], SMALL.replace(crop_mode="center"), original.size)
    whole = resize_short_side(image, SMALL.resize, extent=original.size)
    assert torch.equal(five.overall_view, to_uint8_tensor_chw(whole))  # five crops read the whole view
    for name in ("overall", "face"):
        view = getattr(five, f"{name}_view")
        assert min(view.shape[1:]) == SMALL.resize
        np.testing.assert_array_equal(getattr(five, name).numpy(), corners_and_centre(view.numpy(), SMALL.crop))
        assert getattr(centre, f"{name}_view").shape == (3, SMALL.crop, SMALL.crop)
        assert torch.equal(getattr(centre, name), getattr(five, name)[4:])


def test_prepare_without_face_uses_the_whole_image(portraits):
    prepared = prepare(portraits[4], FaceDetection.none(), SMALL)
    assert prepared.face.shape == (5, 3, 384, 384)
    assert torch.equal(prepared.face, prepared.overall)


def test_prepare_with_liqe_cuts_the_patches(portraits, batch_detections):
    config = piqa_model.preset("small-liqe")
    prepared = prepare(portraits[3], batch_detections[3], config)
    assert prepared.liqe_patches is not None
    assert prepared.liqe_patches.shape == (15, 3, 224, 224)
    assert prepared.liqe_patches.dtype == torch.uint8
    # The first patch is the top-left 224 square of the native-size image.
    native = torch.from_numpy(np.asarray(portraits[3]).copy()).permute(2, 0, 1)
    assert torch.equal(prepared.liqe_patches[0], native[:, :224, :224])
