"""MTCNN face detection (Zhang et al., 2016: a three-network cascade), arranged for throughput.

The networks and weights are facenet-pytorch's (`PNet`, `RNet`, `ONet`, weights shipped in that package); the
arithmetic is the cascade facenet-pytorch runs (the same pyramid scales, "area" resampling from the full image,
crops clipped to the image, thresholds 0.6 / 0.7 / 0.7 and NMS overlaps 0.5 / 0.7 / 0.7 "min"), so the boxes
agree with its `MTCNN.detect` (tests/test_model_mtcnn.py). What differs is where the time went: the pyramid
levels and the RNet/ONet crops are read from one summed-area table (`SummedArea`, bit-identical to the "area"
resampling, which re-read the pixels each time), PNet's 2x2 max-pool is two maxima of strided views (cheaper
than torch's kernel), and RNet and ONet run in channels-last memory (faster on CPU). BENCHMARKS.md, "Face
detection", has the CPU time per image against facenet-pytorch's and what each change bought
(`bench/face_detector.py`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

PROPOSAL_THRESHOLD, REFINE_THRESHOLD, OUTPUT_THRESHOLD = 0.6, 0.7, 0.7
PYRAMID_FACTOR = 0.709
PNET_WINDOW, PNET_STRIDE = 12, 2


class SummedArea:
    """Integer-valued images (N, C, H, W) behind a summed-area table, resampled with `F.interpolate`'s "area"
    mode (adaptive average pooling's windows): whole, for the pyramid, or a box at a time, for the crops.

    `F.interpolate` re-reads the pixels for every pyramid level and crop (a large share of detection); here each
    level or crop costs a few gathers from one table. The results are bit-identical: both sum integers exactly
    (float32 is exact for windows under 65,000 pixels) and divide by the window's height, then its width.
    """

    def __init__(self, images: torch.Tensor) -> None:
        count, channels, self.height, self.width = images.shape
        dtype = torch.int32 if (self.height * self.width + 1) * 255 < 2**31 else torch.int64
        table = torch.empty((count, channels, self.height + 1, self.width + 1), dtype=dtype, device=images.device)
        table[:, :, 0, :] = 0
        table[:, :, 1:, 0] = 0
        table[:, :, 1:, 1:] = images
        torch.cumsum(table, 2, out=table)
        torch.cumsum(table, 3, out=table)
        self.table = table

    def resized(self, height: int, width: int) -> torch.Tensor:
        """Every image resampled to (height, width), float32."""
        zero = torch.zeros(1, dtype=torch.long, device=self.table.device)
        top, bottom = _window_bounds(height, zero, zero + self.height)
        left, right = _window_bounds(width, zero, zero + self.width)
        strips = self.table.index_select(2, bottom[0]) - self.table.index_select(2, top[0])
        shape = (*strips.shape[:3], width)
        sums = strips.gather(3, right.expand(shape)) - strips.gather(3, left.expand(shape))
        return _window_means(sums, (bottom - top).view(-1, 1), (right - left).view(-1))

    def crops(
        self,
        owners: torch.Tensor,
        left: torch.Tensor,
        top: torch.Tensor,
        right: torch.Tensor,
        bottom: torch.Tensor,
        size: int,
    ) -> torch.Tensor:
        """Box k (rows [top, bottom), columns [left, right) of image owners[k]) resampled: (k, C, size, size)."""
        row_starts, row_ends = _window_bounds(size, top, bottom - top)
        col_starts, col_ends = _window_bounds(size, left, right - left)
        table = self.table.permute(0, 2, 3, 1)
        image = owners.view(-1, 1, 1)

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return table[image, rows[:, :, None], cols[:, None, :]]

        sums = corner(row_ends, col_ends) - corner(row_starts, col_ends) - corner(row_ends, col_starts)
        sums = (sums + corner(row_starts, col_starts)).permute(0, 3, 1, 2)
        heights, widths = row_ends - row_starts, col_ends - col_starts
        return _window_means(sums, heights[:, None, :, None], widths[:, None, None, :]).contiguous()


def _window_bounds(size: int, start: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Table rows (or columns) bounding `size` area windows over [start, start + length): (n, size) each."""
    step = torch.arange(size, device=start.device)
    start, length = start.view(-1, 1), length.view(-1, 1)
    return start + step * length // size, start + ((step + 1) * length + size - 1) // size


def _window_means(sums: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    return sums.float().div_(heights.float()).div_(widths.float())


def pyramid_scales(height: int, width: int, min_face_size: int) -> list[float]:
    """Scales at which PNet's 12-px window covers faces from `min_face_size` px up to the image's short side."""
    scale = PNET_WINDOW / min_face_size
    short_side = min(height, width) * scale
    scales = []
    while short_side >= PNET_WINDOW:
        scales.append(scale)
        scale *= PYRAMID_FACTOR
        short_side *= PYRAMID_FACTOR
    return scales


class Mtcnn(nn.Module):
    """`detect(images)`: boxes (x1, y1, x2, y2) and probabilities of the faces in a batch of equal-size images."""

    def __init__(self, min_face_size: int = 20) -> None:
        super().__init__()
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.min_face_size = min_face_size
        self.pnet, self.rnet, self.onet = PNet().eval(), RNet().eval(), ONet().eval()

    @torch.no_grad()
    def detect(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """`images`: (N, H, W, 3) uint8 RGB. Per image: boxes (k, 4) in its pixels, largest first, and probs (k,)."""
        device = next(self.pnet.parameters()).device
        pixels = SummedArea(torch.from_numpy(np.array(images)).to(device).permute(0, 3, 1, 2))
        boxes, owners = self._propose(pixels)
        if len(boxes):
            boxes, owners = self._refine(pixels, boxes, owners)
        if len(boxes):
            boxes, owners = self._output(pixels, boxes, owners)
        boxes, owners = boxes.cpu().numpy(), owners.cpu().numpy()
        results = []
        for index in range(len(images)):
            mine = boxes[owners == index]
            mine = mine[np.argsort((mine[:, 2] - mine[:, 0]) * (mine[:, 3] - mine[:, 1]))[::-1]]
            results.append((mine[:, :4], mine[:, 4]))
        return results

    def _propose(self, pixels: SummedArea) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: PNet over the pyramid; candidate squares (x1, y1, x2, y2, score) and their image indices."""
        height, width = pixels.height, pixels.width
        found, owners = [], []
        for scale in pyramid_scales(height, width, self.min_face_size):
            level = pixels.resized(int(height * scale + 1), int(width * scale + 1))
            offsets, probs = self._pnet(_normalise(level))
            boxes, index = _windows(offsets, probs[:, 1], scale)
            keep = batched_nms(boxes[:, :4], boxes[:, 4], index, 0.5)
            found.append(boxes[keep])
            owners.append(index[keep])
        if not found:  # an image smaller than the smallest face
            device = pixels.table.device
            return torch.zeros((0, 5), device=device), torch.zeros(0, dtype=torch.long, device=device)
        boxes, index = torch.cat(found), torch.cat(owners)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], index, 0.7)
        boxes, index = boxes[keep], index[keep]
        size = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
        corners = boxes[:, :4] + boxes[:, 5:9] * size
        return _squared(torch.cat([corners, boxes[:, 4:5]], dim=1)), index

    def _pnet(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """facenet-pytorch's PNet forward with a cheaper (identical) 2x2 max-pool than torch's (BENCHMARKS.md)."""
        net = self.pnet
        x = _max_pool_2x2(net.prelu1(net.conv1(pixels)))
        x = net.prelu3(net.conv3(net.prelu2(net.conv2(x))))
        return net.conv4_2(x), net.softmax4_1(net.conv4_1(x))

    def _refine(
        self, pixels: SummedArea, boxes: torch.Tensor, owners: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: RNet on 24-px crops rejects most candidates and nudges the rest."""
        boxes, owners, crops = _crops(pixels, boxes, owners, 24)
        offsets, probs = self.rnet(_normalise(crops).contiguous(memory_format=torch.channels_last))
        passed = probs[:, 1] > REFINE_THRESHOLD
        boxes = torch.cat([boxes[passed, :4], probs[passed, 1:2]], dim=1)
        owners, offsets = owners[passed], offsets[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owners, 0.7)
        return _squared(_shifted(boxes[keep], offsets[keep])), owners[keep]

    def _output(
        self, pixels: SummedArea, boxes: torch.Tensor, owners: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3: ONet on 48-px crops gives the final probability and box."""
        boxes, owners, crops = _crops(pixels, boxes, owners, 48)
        offsets, _landmarks, probs = self.onet(_normalise(crops).contiguous(memory_format=torch.channels_last))
        passed = probs[:, 1] > OUTPUT_THRESHOLD
        boxes = _shifted(torch.cat([boxes[passed, :4], probs[passed, 1:2]], dim=1), offsets[passed])
        owners = owners[passed]
        keep = _nms_over_smaller(boxes, owners, 0.7)
        return boxes[keep], owners[keep]


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _windows(offsets: torch.Tensor, probs: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PNet's output cells above the threshold as boxes in image pixels: (x1, y1, x2, y2, score, 4 offsets)."""
    hits = (probs >= PROPOSAL_THRESHOLD).nonzero()
    index, rows, cols = hits[:, 0], hits[:, 1], hits[:, 2]
    cell = torch.stack([cols, rows], dim=1).to(offsets.dtype)
    top_left = ((PNET_STRIDE * cell + 1) / scale).floor()
    bottom_right = ((PNET_STRIDE * cell + PNET_WINDOW) / scale).floor()
    cell_offsets = offsets.permute(0, 2, 3, 1)[index, rows, cols]
    score = probs[index, rows, cols].unsqueeze(1)
    return torch.cat([top_left, bottom_right, score, cell_offsets], dim=1), index


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown along its short side into a square about the same centre."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(dim=1, keepdim=True).values
    top_left = boxes[:, 0:2] + size * 0.5 - side * 0.5
    return torch.cat([top_left, top_left + side, boxes[:, 4:]], dim=1)


def _shifted(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The boxes moved by a network's regression offsets (fractions of the box's inclusive size)."""
    size = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    return torch.cat([boxes[:, :4] + offsets * size, boxes[:, 4:]], dim=1)


def _crops(
    pixels: SummedArea, boxes: torch.Tensor, owners: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each box's pixels (corners truncated, clipped to its image, as 1-based inclusive indices) resampled to
    `size` squared; boxes wholly outside their image are dropped with their crops."""
    corners = boxes[:, :4].trunc().long()
    left, top = corners[:, 0].clamp(min=1) - 1, corners[:, 1].clamp(min=1) - 1
    right, bottom = corners[:, 2].clamp(max=pixels.width), corners[:, 3].clamp(max=pixels.height)
    inside = (right > left) & (bottom > top)
    crops = pixels.crops(owners[inside], left[inside], top[inside], right[inside], bottom[inside], size)
    return boxes[inside], owners[inside], crops


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`max_pool2d(x, 2, 2, ceil_mode=True)` as two elementwise maxima of strided views (exactly equal)."""
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2), value=float("-inf"))
    x = torch.maximum(x[..., ::2, :], x[..., 1::2, :])
    return torch.maximum(x[..., ::2], x[..., 1::2])


def _nms_over_smaller(boxes: torch.Tensor, owners: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS per image where overlap is intersection over the smaller box (nested boxes suppress too)."""
    keep = []
    coords, scores, images = boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), owners.cpu().numpy()
    for image in np.unique(images):
        members = np.flatnonzero(images == image)
        x1, y1, x2, y2 = coords[members].T
        area = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = np.argsort(scores[members])
        while order.size:
            best, rest = order[-1], order[:-1]
            keep.append(members[best])
            width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
            height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
            overlap = width * height / np.minimum(area[best], area[rest])
            order = rest[overlap <= threshold]
    return torch.as_tensor(np.array(keep, dtype=np.int64), device=boxes.device)
