"""Score sets for the curation tests: the real scoring pipeline run on real portraits, broken files and a
faceless image, so every filter rule has rows to keep and rows to drop."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from corpus import Corpus, folder_corpus, parquet_corpus, tar_corpus
from PIL import Image

FACELESS_KEY = "noface/gradient.png"


def faceless_png() -> bytes:
    """A smooth colour gradient: decodes fine, holds no face."""
    image = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def folder_with_faceless(shared_dir: Path, root: Path) -> Corpus:
    """`folder_corpus` (4 portraits in a/ and b/, 5 broken files) plus one faceless image.

    With `shard_size=3` the sorted files make four shards holding 3, 1, 0 and 1 ok rows.
    """
    corpus = folder_corpus(shared_dir, root, count=4)
    (root / FACELESS_KEY).parent.mkdir(parents=True, exist_ok=True)
    (root / FACELESS_KEY).write_bytes(faceless_png())
    corpus.expected[FACELESS_KEY] = "ok"
    return corpus


def containers(shared_dir: Path, root: Path) -> Corpus:
    """WebDataset tars (4, 0 and 1 ok rows) and an img2dataset Parquet (4 ok rows) in one folder."""
    tars = tar_corpus(shared_dir, root)
    parquet = parquet_corpus(shared_dir, root)
    return Corpus(root, {**tars.expected, **parquet.expected})


@dataclass(frozen=True)
class ScoredCorpus:
    corpus: Corpus
    scores: str  # the scoring output folder/prefix
