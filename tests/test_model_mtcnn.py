"""Our MTCNN cascade against facenet-pytorch's `MTCNN.detect` (same networks and weights) on real portraits."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from PIL import Image

from piqa_model.mtcnn import Mtcnn, SummedArea, _max_pool_2x2, pyramid_scales

BOX_TOLERANCE_PX = 0.01
PROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ours() -> Mtcnn:
    return Mtcnn()


@pytest.fixture(scope="module")
def reference() -> MTCNN:
    return MTCNN(keep_all=True)


def rgb(path: Path, longest: int | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if longest is not None:
        scale = longest / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(image)


def scenes(portrait_paths: dict[str, list[Path]]) -> dict[str, np.ndarray]:
    """Single portraits, three faces side by side, and a face cut by the image's left and top edges."""
    london = rgb(portrait_paths["london"][0], 640)
    heads = [rgb(path) for path in portrait_paths["congress"]]
    return {
        "london preview": london,
        "congress": heads[0],
        "group of three": np.concatenate(heads, axis=1),
        "face cut at the edges": np.ascontiguousarray(london[180:, 200:]),
    }


def reference_faces(reference: MTCNN, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes, probs = reference.detect(image[None])
    if boxes[0] is None:
        return np.zeros((0, 4)), np.zeros(0)
    return np.asarray(boxes[0], dtype=np.float64), np.asarray(probs[0], dtype=np.float64)


def test_same_faces_as_facenet_pytorch(ours, reference, portrait_paths):
    for name, image in scenes(portrait_paths).items():
        [(boxes, probs)] = ours.detect(image[None])
        expected_boxes, expected_probs = reference_faces(reference, image)
        assert len(boxes) == len(expected_boxes) >= 1, name
        np.testing.assert_allclose(boxes, expected_boxes, atol=BOX_TOLERANCE_PX, err_msg=name)
        np.testing.assert_allclose(probs, expected_probs, atol=PROB_TOLERANCE, err_msg=name)
    [(boxes, _)] = ours.detect(scenes(portrait_paths)["group of three"][None])
    assert len(boxes) == 3


def test_a_batch_equals_its_images_one_by_one(ours, portrait_paths):
    heads = np.stack([rgb(path) for path in portrait_paths["congress"]])
    batched = ours.detect(heads)
    assert len(batched) == len(heads)
    for image, (boxes, probs) in zip(heads, batched, strict=True):
        [(single_boxes, single_probs)] = ours.detect(image[None])
        np.testing.assert_allclose(boxes, single_boxes, atol=1e-3)
        np.testing.assert_allclose(probs, single_probs, atol=1e-5)


def test_no_face_and_too_small(ours):
    grey = np.full((1, 300, 400, 3), 128, np.uint8)
    [(boxes, probs)] = ours.detect(grey)
    assert boxes.shape == (0, 4) and probs.shape == (0,)
    assert pyramid_scales(10, 10, 20) == []
    [(boxes, probs)] = ours.detect(np.zeros((1, 10, 10, 3), np.uint8))
    assert boxes.shape == (0, 4) and probs.shape == (0,)


def test_pyramid_scales():
    scales = pyramid_scales(640, 480, 20)
    assert scales[0] == pytest.approx(0.6)
    assert all(b / a == pytest.approx(0.709) for a, b in zip(scales, scales[1:], strict=False))
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709


@pytest.mark.parametrize("height,width", [(8, 8), (7, 9), (383, 382), (1, 1)])
def test_max_pool_equals_torch(height, width):
    x = torch.randn(2, 10, height, width)
    assert torch.equal(_max_pool_2x2(x), F.max_pool2d(x, 2, 2, ceil_mode=True))


def test_summed_area_resampling_equals_torchs_area_mode_bit_for_bit():
    images = torch.randint(0, 256, (2, 3, 201, 157), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels, table = images.float(), SummedArea(images)
    for size in [(121, 95), (13, 12), (201, 157), (300, 250)]:  # down, far down, same, up
        assert torch.equal(table.resized(*size), F.interpolate(pixels, size=size, mode="area")), size
    boxes = torch.tensor([[1, 0, 0, 157, 201], [0, 10, 20, 110, 180], [0, 150, 190, 157, 201], [1, 40, 3, 49, 8]])
    for size in (24, 48):
        owners, left, top, right, bottom = boxes.T
        crops = table.crops(owners, left, top, right, bottom, size)
        for crop, (owner, x0, y0, x1, y1) in zip(crops, boxes.tolist(), strict=True):
            expected = F.interpolate(pixels[owner : owner + 1, :, y0:y1, x0:x1], size=(size, size), mode="area")
            assert torch.equal(crop, expected[0]), (size, x0, y0, x1, y1)
