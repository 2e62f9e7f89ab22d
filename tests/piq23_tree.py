"""A synthetic PIQ23 tree laid out like the real one, for loader tests.

The 5116 PIQ23 images are not public, but its score and split files are (in ../shared/data/piq23). The tree
keeps the real CSV rows, byte for byte (CRLF endings, backslashed `IMAGE PATH`), for a few scenes, and puts a
small deterministic image at every path they name, in the format its extension says (JPEG or TIFF):

    Overall/ Details/ Exposure/                   images, e.g. Overall/81_Indoor_Scene_1.tif
    scores/Scores_{Overall,Details,Exposure}.csv
    splits/device_split.csv  splits/scene_split.csv
    splits/device/DeviceSplit_{Train,Test}_Scores_{attribute}.csv
    splits/scene/SceneSplit_{Train,Test}_Scores_{attribute}.csv
    image_metadata.csv
"""

from __future__ import annotations

import csv
import io
import itertools
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ATTRIBUTES = ("Overall", "Details", "Exposure")
IMAGE_SIZE = (64, 48)


def make_piq23_tree(root: Path, shared_piq23: Path, scenes: int = 3, images_per_scene: int | None = 6) -> Path:
    """Write the tree under `root` and return `root`.

    Scenes alternate between the official scene split's Train and Test scenes (lowest scene index first); in
    each scene, images are taken round-robin over (device split, file extension), so both splits of both kinds
    and the rarer extensions appear. `images_per_scene=None` keeps every image of the chosen scenes.
    """
    scene_split = _rows(shared_piq23 / "splits" / "scene_split.csv")
    chosen_scenes = _chosen_scenes(scene_split, scenes)
    device_split = _rows(shared_piq23 / "splits" / "device_split.csv")
    images = _chosen_images(device_split, chosen_scenes, images_per_scene)

    def keep_image(row: dict[str, str]) -> bool:
        return row["IMAGE"] in images

    for attribute in ATTRIBUTES:
        for folder, prefix in (
            ("scores", ""),
            ("splits/device", "DeviceSplit_Train_"),
            ("splits/device", "DeviceSplit_Test_"),
            ("splits/scene", "SceneSplit_Train_"),
            ("splits/scene", "SceneSplit_Test_"),
        ):
            name = f"{folder}/{prefix}Scores_{attribute}.csv"
            _copy_rows(shared_piq23 / name, root / name, keep_image)
        for row in _rows(shared_piq23 / "scores" / f"Scores_{attribute}.csv"):
            if keep_image(row):
                _write_image(root / row["IMAGE PATH"].replace("\\", "/"))
    _copy_rows(shared_piq23 / "splits" / "device_split.csv", root / "splits" / "device_split.csv", keep_image)
    _copy_rows(
        shared_piq23 / "splits" / "scene_split.csv",
        root / "splits" / "scene_split.csv",
        lambda r: r["SCENE"] in chosen_scenes,
    )
    _copy_rows(shared_piq23 / "image_metadata.csv", root / "image_metadata.csv", lambda r: r["Image"] in images)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _chosen_scenes(scene_split: list[dict[str, str]], count: int) -> set[str]:
    def by_index(split: str) -> list[str]:
        names = [row["SCENE"] for row in scene_split if row["SPLIT"] == split]
        return sorted(names, key=lambda name: int(name.rsplit("_", 1)[1]))

    alternating = [s for pair in itertools.zip_longest(by_index("Train"), by_index("Test")) for s in pair if s]
    return set(alternating[:count])


def _chosen_images(device_split: list[dict[str, str]], scenes: set[str], per_scene: int | None) -> set[str]:
    chosen: set[str] = set()
    for scene in scenes:
        buckets: dict[tuple[str, str], list[str]] = {}
        for row in device_split:
            stem, extension = row["IMAGE"].rsplit(".", 1)
            if stem.split("_", 1)[1] == scene:
                buckets.setdefault((row["SPLIT"], extension), []).append(row["IMAGE"])
        round_robin = [name for names in itertools.zip_longest(*buckets.values()) for name in names if name]
        chosen.update(round_robin[:per_scene])
    return chosen


def _copy_rows(source: Path, target: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Copy the header and the kept lines of a CSV verbatim (the PIQ23 files have no quoted line breaks)."""
    lines = source.read_bytes().decode("utf-8").splitlines(keepends=True)
    header = next(csv.reader([lines[0]]))
    kept = [line for line in lines[1:] if keep(dict(zip(header, next(csv.reader(io.StringIO(line))), strict=True)))]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes("".join([lines[0], *kept]).encode("utf-8"))


def _write_image(path: Path) -> None:
    """A gradient plus noise seeded by the file name: deterministic, and different for every image."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    width, height = IMAGE_SIZE
    gradient = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
    pixels = np.clip(gradient + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_format = "TIFF" if path.suffix.lower() in (".tif", ".tiff") else "JPEG"
    Image.fromarray(pixels).save(path, format=image_format)
