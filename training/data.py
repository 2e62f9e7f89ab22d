"""What the network sees during training and evaluation, and which images share a batch.

Training views are one random `crop` from the short-side `resize` (plus a random flip) of the whole image
and of its cached face region; evaluation views are the inference views (`crop_mode`, five crops by
default), so test metrics are what `piqa score` would give.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipelines.storage import Storage
from piqa_model import ModelConfig, open_image
from piqa_model.crops import crop_views, resize_short_side
from piqa_model.faces import face_region
from piqa_model.images import to_uint8_tensor_chw
from training.features import ImageFeatures
from training.table import Example


@dataclass(frozen=True)
class Batch:
    overall: torch.Tensor  # uint8 [B, K, 3, S, S]
    face: torch.Tensor  # uint8 [B, K, 3, S, S]
    aux: torch.Tensor | None  # [B, 495]
    target: torch.Tensor  # [B]
    target_std: torch.Tensor | None  # [B], when every image of the batch has one
    groups: list[str]


class ExampleDataset(Dataset):
    """Examples -> (overall views, face views, aux, target). `train=True`: one random view per image."""

    def __init__(
        self,
        examples: Sequence[Example],
        features: dict[str, ImageFeatures],
        config: ModelConfig,
        storage: Storage,
        train: bool,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        self.examples = list(examples)
        self.features = features
        self.config = config
        self.storage = storage
        self.train = train
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None, Example]:
        example = self.examples[index]
        image = open_image(self.storage.read_bytes(example.uri))
        feature = self.features[example.uri]
        face = image.crop(face_region(feature.face.box, image.width, image.height, self.config.face_margin))
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            flip = self.flip and bool(rng.integers(2))
            views = _random_view(image, self.config, rng, flip), _random_view(face, self.config, rng, flip)
        else:
            views = crop_views(image, self.config), crop_views(face, self.config)
        return views[0], views[1], feature.aux, example


def _random_view(image: Image.Image, config: ModelConfig, rng: np.random.Generator, flip: bool) -> torch.Tensor:
    pixels = to_uint8_tensor_chw(resize_short_side(image, config.resize))
    height, width = pixels.shape[-2:]
    top = int(rng.integers(height - config.crop + 1))
    left = int(rng.integers(width - config.crop + 1))
    view = pixels[:, top : top + config.crop, left : left + config.crop]
    return (view.flip(-1) if flip else view).unsqueeze(0).contiguous()


def collate(items: list[tuple[torch.Tensor, torch.Tensor, np.ndarray | None, Example]]) -> Batch:
    overall, face, aux, examples = zip(*items, strict=True)
    stds = [e.target_std for e in examples]
    return Batch(
        overall=torch.stack(overall),
        face=torch.stack(face),
        aux=None if aux[0] is None else torch.from_numpy(np.stack(aux)),
        target=torch.tensor([e.target for e in examples], dtype=torch.float32),
        target_std=None if None in stds else torch.tensor(stds, dtype=torch.float32),
        groups=[e.group for e in examples],
    )


def group_batches(
    examples: Sequence[Example],
    batch_size: int,
    chunk: int,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    weights: Mapping[str, float] | None = None,
) -> list[list[int]]:
    """This worker's batches for one epoch: index lists in which every image has a same-group partner.

    Each group's images are shuffled and cut into chunks of `chunk` (a last single image joins the
    chunk before it); chunks are shuffled and packed into batches of about `batch_size`. A dataset's
    weight (passes per epoch, 1 by default) repeats that for whole passes, each shuffled anew, and keeps
    each chunk of a last, partial pass with the fractional part's probability. All workers compute the
    same list and take every `world`-th batch, truncated to equal counts (DDP steps in lockstep).
    """
    rng = np.random.default_rng([seed, epoch])
    weights = weights or {}
    by_group: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_group.setdefault(example.group, []).append(index)
    chunks: list[list[int]] = []
    for group in sorted(by_group):
        indices = by_group[group]
        if len(indices) < 2:
            continue
        passes = weights.get(examples[indices[0]].dataset, 1.0)
        for number in range(math.ceil(passes)):
            kept = min(passes - number, 1.0)
            members = [int(i) for i in rng.permutation(indices)]
            pieces = [members[start : start + chunk] for start in range(0, len(members), chunk)]
            if len(pieces[-1]) == 1:
                pieces[-2].extend(pieces.pop())
            chunks.extend(piece for piece in pieces if kept == 1.0 or rng.random() < kept)
    order = rng.permutation(len(chunks))
    batches: list[list[int]] = []
    current: list[int] = []
    for position in order:
        current.extend(chunks[position])
        if len(current) >= batch_size:
            batches.append(current)
            current = []
    if len(current) >= 2:
        batches.append(current)
    per_worker = len(batches) // world
    return batches[rank : per_worker * world : world]


def eval_batches(count: int, batch_size: int, rank: int, world: int) -> Iterator[list[int]]:
    """This worker's share of an evaluation set, in batches."""
    mine = list(range(rank, count, world))
    for start in range(0, len(mine), batch_size):
        yield mine[start : start + batch_size]
