"""One training table from every labelled source: splits, per-dataset label normalisation, a snapshot id.

Each source keeps its own scale: labels are standardised per dataset on its training rows, so a CLIVE
MOS step and a PIQ23 JOD step weigh alike in the pairwise loss, which only ever compares images of the
same group. Group names are qualified by their dataset, so groups of different sources never mix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from training.sources import LabelledImage

SPLITS = ("train", "val", "test")
# A source with at least this many groups is split by whole groups (unseen photos/scenes); fewer: by image.
MIN_GROUPS_FOR_GROUP_SPLIT = 5


@dataclass(frozen=True)
class Example:
    """One labelled image in the training table."""

    uri: str
    label: float  # as the source gives it
    target: float  # standardised within its dataset
    target_std: float | None  # label_std on the same scale, if the source gives one
    group: str  # "<dataset>/<group>": pairs and per-group metrics never cross it
    dataset: str
    split: str  # train | val | test


def build_table(
    sources: Iterable[Sequence[LabelledImage]], test_fraction: float, val_fraction: float, seed: int
) -> list[Example]:
    """Every source's images with a split and a standardised target; sorted by uri for determinism.

    A source with an official split keeps it for test; the others lose `test_fraction` to test. Then
    `val_fraction` of each source's training part becomes the validation split (model selection).
    """
    table: list[Example] = []
    for images in sources:
        if not images:
            continue
        splits = _split(images, test_fraction, val_fraction, seed)
        table.extend(_standardise(images, splits))
    return sorted(table, key=lambda e: (e.dataset, e.uri))


def _split(images: Sequence[LabelledImage], test_fraction: float, val_fraction: float, seed: int) -> list[str]:
    by_group = len({image.group for image in images}) >= MIN_GROUPS_FOR_GROUP_SPLIT

    def unit(image: LabelledImage, purpose: str) -> float:
        key = image.group if by_group else image.uri
        digest = hashlib.sha256(f"{seed}:{purpose}:{image.dataset}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    splits = []
    for image in images:
        if image.split is not None:
            split = "test" if image.split == "test" else "train"
        else:
            split = "test" if unit(image, "test") < test_fraction else "train"
        if split == "train" and unit(image, "val") < val_fraction:
            split = "val"
        splits.append(split)
    return splits


def _standardise(images: Sequence[LabelledImage], splits: Sequence[str]) -> list[Example]:
    train_labels = np.array([i.label for i, s in zip(images, splits, strict=True) if s == "train"], dtype=float)
    reference = train_labels if train_labels.size > 1 else np.array([i.label for i in images], dtype=float)
    mean = float(reference.mean())
    scale = float(reference.std()) or 1.0
    return [
        Example(
            uri=image.uri,
            label=float(image.label),
            target=(float(image.label) - mean) / scale,
            target_std=None if image.label_std is None else float(image.label_std) / scale,
            group=f"{image.dataset}/{image.group}",
            dataset=image.dataset,
            split=split,
        )
        for image, split in zip(images, splits, strict=True)
    ]


def select(table: Sequence[Example], split: str) -> list[Example]:
    return [example for example in table if example.split == split]


def snapshot_id(table: Sequence[Example]) -> str:
    """A content hash of the table (uris, labels, groups, splits): equal ids mean the same training data."""
    digest = hashlib.sha256()
    for example in table:
        digest.update(json.dumps(asdict(example), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def counts(table: Sequence[Example]) -> dict[str, dict[str, int]]:
    """{dataset: {split: images}}, for logs and the model card."""
    result: dict[str, dict[str, int]] = {}
    for example in table:
        per_split = result.setdefault(example.dataset, dict.fromkeys(SPLITS, 0))
        per_split[example.split] += 1
    return result


def without(table: Sequence[Example], uris: set[str]) -> list[Example]:
    """The table less the given images (those whose features could not be computed)."""
    return [example for example in table if example.uri not in uris]
