"""Score sets for the curation tests: the real scoring pipeline run on real portraits, broken files and a
faceless image, so every filter rule has rows to keep and rows to drop."""

from __future__ import annotations

import io
import re
import tarfile
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


WEBDATASET_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's `base_plus_ext`: key up to the first dot


def webdataset_samples(payload: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """The samples of a tar as the `webdataset` library groups them: consecutive members with the same key
    (the name up to the first dot of its last part) make one sample of {extension: bytes}."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
        for member in archive:
            match = WEBDATASET_NAME.match(member.name)
            assert match, f"{member.name}: webdataset would skip a member without an extension"
            key, extension = match.groups()
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            assert extension not in samples[-1][1], f"{member.name}: webdataset refuses a repeated member"
            handle = archive.extractfile(member)
            samples[-1][1][extension] = handle.read() if handle else b""
    return samples
