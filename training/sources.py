"""Labelled images for retraining: PIQ23 in its official layout, and generic manifests (Parquet or CSV).

Every source yields `LabelledImage` records. Labels compare only within a `group`: a PIQ23 scene (JOD is a
per-scene scale), or the whole set for a global-scale set such as CLIVE. Training draws pairs within a group
and evaluation aggregates per-group metrics, so the group is as much a part of a label as its value.

Paths work on local disks and object stores alike, through `pipelines.storage.Storage`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines.storage import Storage
from piqa_model.errors import ConfigError, PiqaError

PIQ23_ATTRIBUTES = ("Overall", "Details", "Exposure")
PIQ23_SPLITS = ("device", "scene", "none")
SPLITS = ("train", "test")
# Split summaries, in the order they are looked for under a PIQ23 root: this project's copy (`splits/`), the
# official GitHub repository's `Test split/` folder, then beside the images.
_SPLIT_FILES = {
    "device": ("splits/device_split.csv", "Test split/Device Split.csv", "device_split.csv", "Device Split.csv"),
    "scene": ("splits/scene_split.csv", "Test split/Scene Split.csv", "scene_split.csv", "Scene Split.csv"),
}
_SPLIT_KEYS = {"device": "IMAGE", "scene": "SCENE"}
MANIFEST_COLUMNS = ("uri", "label", "group")
CLIVE_COLUMNS = ("image", "mos")
# Manifest file names that say nothing about their data: such a manifest is named after its folder.
_GENERIC_STEMS = frozenset({"manifest", "mos", "labels", "scores", "data"})


class DataSourceError(PiqaError):
    """A labelled data source cannot be read."""


class SourceNotFoundError(DataSourceError, FileNotFoundError):
    """A score file, split file, manifest or folder is not where it should be."""


class SourceFormatError(DataSourceError, ValueError):
    """A source file lacks columns, or a row has a missing or invalid value."""


class MissingImagesError(DataSourceError):
    """Images named by a source's labels are not on storage."""


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image. `uri`: an absolute local path or a full URI (s3://...); `split`: "train"/"test" where
    the source defines an official split, else None."""

    uri: str
    label: float
    group: str
    dataset: str
    label_std: float | None = None
    split: str | None = None


def load_piq23(
    root: str,
    attribute: str = "Overall",
    split: str = "device",
    storage: Storage | None = None,
    *,
    require_images: bool = True,
) -> list[LabelledImage]:
    """PIQ23 images of one attribute with their JOD labels, grouped by scene, in score-file order.

    `root` holds the attribute folders (`Overall/`, `Details/`, `Exposure/`); the score files
    `Scores_{attribute}.csv` sit at the root or in `scores/` or `Scores/`. `split`: "device" or "scene" tags
    each image with the official split ("train"/"test"); "none" leaves it None. With `require_images`, every
    image must exist (each attribute folder is listed once).
    """
    attribute = _piq23_attribute(attribute)
    if split not in PIQ23_SPLITS:
        raise ConfigError(f"unknown PIQ23 split {split!r}: choose one of {', '.join(PIQ23_SPLITS)}")
    storage = storage or Storage.from_environment()
    fs, base = storage.filesystem(root)
    name = f"Scores_{attribute}.csv"
    scores_path = _find(fs, base, root, (name, f"scores/{name}", f"Scores/{name}"), f"PIQ23 {attribute} scores")
    scores_uri = storage.uri(fs, scores_path)
    _, rows = _read_csv(fs, scores_path, scores_uri, ("IMAGE PATH", "JOD", "JOD STD", "SCENE"))
    relative = [row["IMAGE PATH"].strip().replace("\\", "/") for row in rows]  # `Overall\66_Indoor_Scene_0.jpg`
    if require_images:
        _check_images(fs, base, root, relative)
    splits = _piq23_splits(fs, base, root, split, rows, relative, storage) if split != "none" else [None] * len(rows)
    return [
        LabelledImage(
            uri=storage.uri(fs, posixpath.join(base, path)),
            label=_number(row["JOD"], scores_uri, number, "JOD"),
            group=row["SCENE"].strip(),
            dataset=f"piq23-{attribute.lower()}",
            label_std=_number(row["JOD STD"], scores_uri, number, "JOD STD"),
            split=split_name,
        )
        for number, (row, path, split_name) in enumerate(zip(rows, relative, splits, strict=True), start=1)
    ]


def load_manifest(uri: str, dataset: str | None = None, storage: Storage | None = None) -> list[LabelledImage]:
    """The labelled images of a manifest, in file order.

    Two forms are read, from Parquet or CSV:
    - `uri, label, group[, label_std][, split]`: relative uris are resolved against the manifest's folder;
    - CLIVE-style `image, mos[, mos_std]` (one global scale): images are looked up in `images/` beside the
      manifest when that folder exists, else beside it; the whole set is one group, named after the dataset.
    `dataset` defaults to the file's stem, or its folder's name for a generic name (`manifest.parquet`, `mos.csv`).
    """
    storage = storage or Storage.from_environment()
    fs, path = storage.filesystem(uri)
    columns, rows = _read_table(fs, path, uri)
    whole = _whole_manifest(path)
    folder = posixpath.dirname(whole)
    dataset = dataset or _dataset_name(whole)
    if set(MANIFEST_COLUMNS) <= set(columns):
        return [_manifest_record(row, number, uri, folder, dataset, fs, storage) for number, row in enumerate(rows, 1)]
    if set(CLIVE_COLUMNS) <= set(columns):
        images = posixpath.join(folder, "images")
        folder = images if fs.isdir(images) else folder
        return [
            LabelledImage(
                uri=_resolve(_text(row, "image", uri, number), folder, fs, storage),
                label=_number(row["mos"], uri, number, "mos"),
                group=dataset,
                dataset=dataset,
                label_std=_optional_number(row.get("mos_std"), uri, number, "mos_std"),
            )
            for number, row in enumerate(rows, 1)
        ]
    raise SourceFormatError(
        f"{uri} has neither the manifest columns {', '.join(MANIFEST_COLUMNS)} (optional label_std, split) nor the"
        f" CLIVE-style columns {', '.join(CLIVE_COLUMNS)} (optional mos_std); it has: {', '.join(columns) or 'none'}"
    )


def list_manifests(prefix: str, storage: Storage | None = None) -> list[str]:
    """URIs of every `*.parquet` and `*.csv` under `prefix` (recursively, or `prefix` itself when it is one),
    sorted. Hidden and underscore-prefixed names (temporaries, notebook checkpoints) are skipped."""
    storage = storage or Storage.from_environment()
    fs, root = storage.filesystem(prefix)
    paths = [root] if fs.isfile(root) else fs.find(root)
    manifests = sorted(
        path
        for path in paths
        if path.lower().endswith((".parquet", ".csv"))
        and not any(part.startswith((".", "_")) for part in posixpath.relpath(path, root).split("/") if part != ".")
    )
    if not manifests:
        raise SourceNotFoundError(f"no .parquet or .csv manifests under {prefix}")
    return [storage.uri(fs, path) for path in manifests]


def manifest_fingerprint(uris: Iterable[str], storage: Storage | None = None) -> str:
    """A data-snapshot id: a SHA-256 over each manifest's URI and content hash, independent of their order.

    Manifests are small, so hashing their bytes is cheap and, unlike ETags or mtimes, the same on every store.
    """
    storage = storage or Storage.from_environment()
    digest = hashlib.sha256()
    for uri in sorted(set(uris)):
        fs, path = storage.filesystem(uri)
        digest.update(f"{uri}\t{hashlib.sha256(_read_bytes(fs, path, uri)).hexdigest()}\n".encode())
    return digest.hexdigest()


def _piq23_attribute(attribute: str) -> str:
    for known in PIQ23_ATTRIBUTES:
        if attribute.lower() == known.lower():
            return known
    raise ConfigError(f"unknown PIQ23 attribute {attribute!r}: choose one of {', '.join(PIQ23_ATTRIBUTES)}")


def _find(fs: AbstractFileSystem, base: str, root: str, candidates: Iterable[str], what: str) -> str:
    """The first of `candidates` (paths relative to `base`) that is a file."""
    tried = []
    for candidate in candidates:
        path = posixpath.join(base, candidate)
        if fs.isfile(path):
            return path
        tried.append(candidate)
    raise SourceNotFoundError(f"{what} not found under {root}; looked for: {', '.join(tried)}")


def _check_images(fs: AbstractFileSystem, base: str, root: str, relative: list[str]) -> None:
    present: set[str] = set()
    for folder in sorted({posixpath.dirname(path) for path in relative}):
        try:
            listing = fs.ls(posixpath.join(base, folder), detail=False, refresh=True)
        except FileNotFoundError:
            continue
        present.update(posixpath.join(folder, posixpath.basename(entry.rstrip("/"))) for entry in listing)
    missing = [path for path in relative if path not in present]
    if missing:
        raise MissingImagesError(
            f"{len(missing)} of the {len(relative)} images named by the PIQ23 scores are missing under {root}, "
            f"e.g. {missing[0]} (pass require_images=False to load the labels alone)"
        )


def _piq23_splits(
    fs: AbstractFileSystem,
    base: str,
    root: str,
    split: str,
    rows: list[dict[str, str]],
    relative: list[str],
    storage: Storage,
) -> list[str | None]:
    """The official split of each score row: by image name (device split) or by scene (scene split)."""
    path = _find(fs, base, root, _SPLIT_FILES[split], f"PIQ23 {split} split")
    uri = storage.uri(fs, path)
    key = _SPLIT_KEYS[split]
    assigned = {
        row[key].strip(): _split_value(row["SPLIT"], uri, number)
        for number, row in enumerate(_read_csv(fs, path, uri, (key, "SPLIT"))[1], 1)
    }
    keys = [
        posixpath.basename(image) if split == "device" else row["SCENE"].strip()
        for row, image in zip(rows, relative, strict=True)
    ]
    unassigned = [k for k in keys if k not in assigned]
    if unassigned:
        raise SourceFormatError(f"{uri} gives no split for {len(unassigned)} scored images, e.g. {unassigned[0]}")
    return [assigned[k] for k in keys]


def _read_bytes(fs: AbstractFileSystem, path: str, uri: str) -> bytes:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise SourceNotFoundError(f"{uri} does not exist") from None


def _read_csv(
    fs: AbstractFileSystem, path: str, uri: str, required: Iterable[str] = ()
) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows) of a CSV file (UTF-8, optional BOM, any line ending); names are stripped of spaces."""
    reader = csv.DictReader(io.StringIO(_read_bytes(fs, path, uri).decode("utf-8-sig"), newline=""))
    columns = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = columns
    missing = [name for name in required if name not in columns]
    if missing:
        raise SourceFormatError(f"{uri} lacks column(s) {', '.join(missing)}; it has: {', '.join(columns) or 'none'}")
    return columns, list(reader)


def _read_table(fs: AbstractFileSystem, path: str, uri: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of a Parquet or CSV manifest, with column names lower-cased."""
    if path.lower().endswith(".parquet"):
        data = _read_bytes(fs, path, uri)
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:
            raise SourceFormatError(f"{uri} is not a readable parquet file: {exc}") from None
        columns, rows = table.column_names, table.to_pylist()
    elif path.lower().endswith(".csv"):
        columns, rows = _read_csv(fs, path, uri)
    else:
        raise SourceFormatError(f"{uri}: a manifest must be a .parquet or .csv file")
    lower = {name: name.strip().lower() for name in columns}
    return list(lower.values()), [{lower[name]: row[name] for name in columns} for row in rows]


def _manifest_record(
    row: dict[str, Any], number: int, uri: str, folder: str, dataset: str, fs: AbstractFileSystem, storage: Storage
) -> LabelledImage:
    split = row.get("split")
    return LabelledImage(
        uri=_resolve(_text(row, "uri", uri, number), folder, fs, storage),
        label=_number(row["label"], uri, number, "label"),
        group=_text(row, "group", uri, number),
        dataset=dataset,
        label_std=_optional_number(row.get("label_std"), uri, number, "label_std"),
        split=_split_value(split, uri, number) if split not in (None, "") else None,
    )


def _resolve(reference: str, folder: str, fs: AbstractFileSystem, storage: Storage) -> str:
    """`reference` as given when it is a full URI or an absolute path, else relative to the manifest's folder."""
    if "://" in reference or reference.startswith("/"):
        return reference
    return storage.uri(fs, posixpath.normpath(posixpath.join(folder, reference)))


def _whole_manifest(path: str) -> str:
    """The manifest a file belongs to: itself, or for a part (`labels.parquet/part-000000.parquet`, the form
    `piqa filter` writes big manifests in) its folder, which names the dataset and anchors relative uris."""
    folder = posixpath.dirname(path)
    return folder if folder.lower().endswith(".parquet") else path


def _dataset_name(path: str) -> str:
    stem = posixpath.basename(path).rsplit(".", 1)[0]
    folder = posixpath.basename(posixpath.dirname(path))
    return folder if stem.lower() in _GENERIC_STEMS and folder else stem


def _text(row: dict[str, Any], column: str, uri: str, number: int) -> str:
    value = row.get(column)
    text = "" if value is None else str(value).strip()
    if not text:
        raise SourceFormatError(f"{uri}: data row {number} has no {column}")
    return text


def _number(value: Any, uri: str, number: int, column: str) -> float:
    result = _optional_number(value, uri, number, column)
    if result is None:
        raise SourceFormatError(f"{uri}: data row {number} has no {column} (missing or NaN)")
    return result


def _optional_number(value: Any, uri: str, number: int, column: str) -> float | None:
    """The value as a float; None when missing, empty or NaN."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SourceFormatError(f"{uri}: data row {number} has a {column} that is not a number: {value!r}") from None
    return None if math.isnan(result) else result


def _split_value(value: Any, uri: str, number: int) -> str:
    split = str(value).strip().lower()
    if split not in SPLITS:
        raise SourceFormatError(f"{uri}: data row {number} has split {value!r}; expected one of {', '.join(SPLITS)}")
    return split
