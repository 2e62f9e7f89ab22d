"""LIQE patch cutting: only the 15 selected patches are materialised, whatever the image size."""

import subprocess
import sys
import textwrap

import pytest
import torch

import piqa_model
from piqa_model.liqe import cut_patches, patch_origins

CONFIG = piqa_model.LiqeConfig()  # patch 224, stride 32, 15 patches


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def test_12_megapixel_photo_gives_the_15_selected_patches():
    height, width = 3000, 4000
    image = random_image(height, width)
    patches = cut_patches(image, CONFIG)
    assert patches.shape == (15, 3, 224, 224)
    assert patches.dtype == torch.uint8
    origins = patch_origins(height, width, CONFIG)
    rows, cols = (height - 224) // 32 + 1, (width - 224) // 32 + 1
    step = rows * cols // 15
    assert [r * cols + c for r, c in origins] == [i * step for i in range(15)]
    for patch, (r, c) in zip(patches, origins, strict=True):
        top, left = r * 32, c * 32
        assert top + 224 <= height and left + 224 <= width
        assert torch.equal(patch, image[:, top : top + 224, left : left + 224])
    # The selection spreads over the image (rows 0 .. near the bottom), not just its first row.
    assert origins[0] == (0, 0)
    assert origins[-1][0] >= rows * 14 // 15 - 1
    # A batched [1, 3, H, W] input gives the same patches; more than one image is refused.
    assert torch.equal(cut_patches(image[None], CONFIG), patches)
    with pytest.raises(ValueError):
        cut_patches(torch.zeros(2, 3, 256, 256, dtype=torch.uint8), CONFIG)


def test_cutting_patches_of_a_12_megapixel_photo_stays_small():
    """All 10353 patches of a 4000x3000 photo would take 1.5 GB; the 15 selected ones take 2.3 MB."""
    script = textwrap.dedent(
        """
        import resource, torch
        import piqa_model
        from piqa_model.liqe import cut_patches
        image = torch.randint(0, 256, (3, 3000, 4000), dtype=torch.uint8)
        image.add_(1)  # touch every page before measuring
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        patches = cut_patches(image, piqa_model.LiqeConfig())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert patches.shape == (15, 3, 224, 224), patches.shape
        print((after - before) // 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    grown_mib = int(result.stdout.strip().splitlines()[-1])
    assert grown_mib < 100, f"peak memory grew by {grown_mib} MiB while cutting 15 patches"


@pytest.mark.parametrize(("height", "width"), [(100, 300), (300, 100), (10, 10), (224, 223)])
def test_image_smaller_than_a_patch_is_upscaled(height, width):
    image = random_image(height, width, seed=1)
    patches = cut_patches(image, CONFIG)
    assert patches.shape == (15, 3, 224, 224)
    assert patches.dtype == torch.uint8


def test_upscaled_patches_keep_the_image_content():
    # A flat colour stays that colour; a left/right split stays split along the long side.
    flat = torch.tensor([10, 128, 250], dtype=torch.uint8).view(3, 1, 1).expand(3, 50, 120).contiguous()
    patches = cut_patches(flat, CONFIG)
    assert torch.equal(patches, flat[:, :1, :1].expand(15, 3, 224, 224))

    split = torch.zeros(3, 100, 400, dtype=torch.uint8)
    split[:, :, 200:] = 255
    patches = cut_patches(split, CONFIG)  # upscaled to 224 x 896: 22 patch columns, 1 row, step 1
    assert patches.shape == (15, 3, 224, 224)
    assert int(patches[0].max()) == 0  # leftmost patch: all black
    assert int(patches[14, :, :, -1].min()) == 255  # patch 14 covers x in [448, 672): right half
