"""`open_image` on the awkward files real photo collections contain."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import piqa_model
from piqa_model import open_image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, idat: bytes, bit_depth: int = 1) -> bytes:
    """A greyscale PNG written by hand, so that a huge header costs nothing to build."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def black_1bit_idat(width: int, height: int) -> bytes:
    """zlib stream of `height` all-zero 1-bit scanlines (filter byte 0), compressed row by row."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    return b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()


def test_rgb_passes_through_unchanged():
    image = Image.new("RGB", (30, 20), (12, 34, 56))
    out = open_image(encode(image, "PNG"))
    assert out.size == (30, 20)
    assert (pixels(out) == (12, 34, 56)).all()
    same = open_image(image)
    assert same.size == image.size and (pixels(same) == (12, 34, 56)).all()


def test_exif_orientation_6_is_rotated_upright():
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))  # stored: left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (64, 32)
    out = open_image(data)
    assert out.size == (32, 64)  # width and height swapped
    upright = pixels(out)
    # Clockwise: the stored left (red) becomes the top, the stored right (blue) the bottom.
    assert np.abs(upright[4:28, 4:28] - (255, 0, 0)).max() < 40
    assert np.abs(upright[36:60, 4:28] - (0, 0, 255)).max() < 40


def test_palette_png_with_transparency_becomes_rgb_on_white():
    image = Image.new("P", (8, 4), 0)
    image.putpalette([0, 0, 0, 200, 10, 20] + [0] * (256 * 3 - 6))
    image.paste(1, (4, 0, 8, 4))
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = pixels(open_image(data))
    assert (out[:, :4] == 255).all()  # transparent (palette index 0 is black) -> white
    assert (out[:, 4:] == (200, 10, 20)).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_image_without_transparency_keeps_colours(fmt):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([7, 8, 9] + [0] * 765)
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert (pixels(open_image(data)) == (7, 8, 9)).all()


def test_rgba_is_composited_over_white():
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    array[:, 0] = (0, 0, 0, 0)  # transparent black
    array[:, 1] = (10, 200, 30, 255)  # opaque colour
    array[:, 2] = (0, 0, 0, 128)  # half-transparent black
    out = pixels(open_image(encode(Image.fromarray(array, "RGBA"), "PNG")))
    assert (out[:, 0] == 255).all()
    assert (out[:, 1] == (10, 200, 30)).all()
    assert (np.abs(out[:, 2] - 127) <= 1).all()


def test_la_is_composited_over_white():
    array = np.array([[[0, 0], [100, 255]]], dtype=np.uint8)
    data = encode(Image.fromarray(array, "LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    out = pixels(open_image(data))
    assert (out[0, 0] == 255).all()
    assert (out[0, 1] == 100).all()


def test_cmyk_jpeg_becomes_rgb():
    image = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    image.paste((0, 255, 255, 0), (16, 0, 32, 16))  # red
    data = encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = pixels(open_image(data))
    assert out.shape == (16, 32, 3)
    assert np.abs(out[2:14, 2:12] - 255).max() < 20
    assert np.abs(out[2:14, 20:30] - (255, 0, 0)).max() < 30


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt):
    array = np.array([[65535, 32896, 0, 257], [200, 1000, 65535, 0]], dtype=np.uint16)
    data = encode(Image.fromarray(array), fmt)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = pixels(open_image(data))
    expected = np.array([[255, 128, 0, 1], [1, 4, 255, 0]])
    assert (out == expected[..., None]).all()


def test_dark_16_bit_image_stays_dark():
    # All values <= 255 in 16 bits: nearly black, not an 8-bit image.
    data = encode(Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)), "PNG")
    assert (pixels(open_image(data)) == 1).all()


def test_greyscale_l_becomes_rgb():
    array = np.array([[0, 77, 255]], dtype=np.uint8)
    out = pixels(open_image(encode(Image.fromarray(array, "L"), "JPEG", quality=100)))
    assert out.shape == (1, 3, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (np.abs(out[0, :, 0] - (0, 77, 255)) <= 3).all()


def test_one_bit_becomes_black_and_white_rgb():
    image = Image.new("1", (16, 2), 0)
    image.paste(1, (8, 0, 16, 2))
    out = pixels(open_image(encode(image, "PNG")))
    assert (out[:, :8] == 0).all()
    assert (out[:, 8:] == 255).all()


def test_pil_image_inputs_are_converted_too():
    image = Image.fromarray(np.array([[0, 0], [100, 255]], dtype=np.uint8).reshape(1, 2, 2), "LA")
    out = open_image(image)
    assert (pixels(out)[0] == [[255, 255, 255], [100, 100, 100]]).all()


@pytest.fixture(scope="module")
def real_jpeg(shared_dir: Path) -> bytes:
    return sorted((shared_dir / "data" / "portraits" / "congress").glob("*.jpg"))[0].read_bytes()


def test_real_jpeg_decodes(real_jpeg):
    out = open_image(real_jpeg)
    assert out.mode == "RGB" and out.size == (225, 275)


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "header-only", "random"])
def test_undecodable_bytes_raise_decode_error(case, real_jpeg):
    data = {
        "empty": b"",
        "text": b"not an image, just some text\n" * 10,
        "truncated": real_jpeg[: len(real_jpeg) // 2],
        "header-only": real_jpeg[:200],
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }[case]
    with pytest.raises(piqa_model.ImageDecodeError) as caught:
        open_image(data)
    assert caught.value.status == "decode_error"
    assert isinstance(caught.value, piqa_model.ImageError)


def test_huge_header_is_refused_before_decoding():
    side = 20000
    data = png_bytes(side, side, black_1bit_idat(side, side))
    assert len(data) < 200_000  # 400 megapixels in a few kB
    with pytest.raises(piqa_model.ImageTooLargeError) as caught:
        open_image(data, max_pixels=10_000_000)
    assert caught.value.status == "too_large"
    assert "20000x20000" in str(caught.value)
    # The default limit (100 MP) refuses it as well.
    with pytest.raises(piqa_model.ImageTooLargeError):
        open_image(data)


def test_size_limit_is_checked_from_the_header():
    # A 2000x2000 header over corrupt pixel data: refused as too large without touching the pixels,
    # and a decode error only when the limit lets it through to decoding.
    data = png_bytes(2000, 2000, b"\x78\x9c this is not a deflate stream", bit_depth=8)
    with pytest.raises(piqa_model.ImageTooLargeError):
        open_image(data, max_pixels=1_000_000)
    with pytest.raises(piqa_model.ImageDecodeError):
        open_image(data, max_pixels=4_000_000)


def test_small_valid_hand_made_png_decodes():
    # Checks the hand-made PNG writer itself, so the tests above fail for the right reason.
    out = pixels(open_image(png_bytes(64, 8, black_1bit_idat(64, 8))))
    assert out.shape == (8, 64, 3)
    assert (out == 0).all()
