"""Labelled data sources: PIQ23 in its official layout (a synthetic tree holding the real CSV rows), local and on
S3 (a real moto server), CLIVE's real MOS file, and generic Parquet/CSV manifests."""

from __future__ import annotations

import csv
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from piq23_tree import ATTRIBUTES, make_piq23_tree

from pipelines.storage import Storage
from piqa_model.errors import ConfigError, PiqaError
from training.sources import (
    LabelledImage,
    MissingImagesError,
    SourceFormatError,
    SourceNotFoundError,
    list_manifests,
    load_manifest,
    load_piq23,
    manifest_fingerprint,
)


@pytest.fixture(scope="module")
def piq23_tree(shared_dir: Path, tmp_path_factory) -> Path:
    return make_piq23_tree(tmp_path_factory.mktemp("piq23") / "PIQ23", shared_dir / "data" / "piq23")


@pytest.fixture
def piq23_copy(piq23_tree: Path, tmp_path: Path) -> Path:
    """A copy of the tree a test may change."""
    return Path(shutil.copytree(piq23_tree, tmp_path / "PIQ23"))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def relative(records: list[LabelledImage], root: str) -> list[LabelledImage]:
    """The records with uris relative to `root`, to compare a tree's local and S3 copies."""
    return [replace(record, uri=record.uri.removeprefix(root.rstrip("/") + "/")) for record in records]


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_piq23_labels_and_groups_are_the_score_rows(piq23_tree, attribute):
    scores = csv_rows(piq23_tree / "scores" / f"Scores_{attribute}.csv")
    records = load_piq23(str(piq23_tree), attribute, split="none")

    assert len(records) == len(scores) == 18
    for record, row in zip(records, scores, strict=True):
        assert record.uri == str(piq23_tree / attribute / row["IMAGE"])
        assert Path(record.uri).is_file()
        assert (record.label, record.label_std) == (float(row["JOD"]), float(row["JOD STD"]))
        assert record.group == row["SCENE"]
        assert record.dataset == f"piq23-{attribute.lower()}"
        assert record.split is None
    assert {Path(r.uri).suffix for r in records} >= {".jpg", ".JPG", ".jpeg", ".tif", ".tiff"}


@pytest.mark.parametrize("attribute", ATTRIBUTES)
@pytest.mark.parametrize("kind", ["device", "scene"])
def test_piq23_official_splits_are_reproduced(piq23_tree, attribute, kind):
    records = {Path(r.uri).name: r for r in load_piq23(str(piq23_tree), attribute, split=kind)}

    for split in ("Train", "Test"):
        official = csv_rows(piq23_tree / "splits" / kind / f"{kind.title()}Split_{split}_Scores_{attribute}.csv")
        assert official, "the tree must hold both splits of both kinds"
        assert {name for name, r in records.items() if r.split == split.lower()} == {row["IMAGE"] for row in official}
        for row in official:  # the split files repeat the scores, up to the last bit of a float
            record = records[row["IMAGE"]]
            assert record.label == pytest.approx(float(row["JOD"]), abs=1e-12)
            assert record.label_std == pytest.approx(float(row["JOD STD"]), abs=1e-12)
            assert record.group == row["SCENE"]
    if kind == "scene":
        by_scene = {}
        for record in records.values():
            by_scene.setdefault(record.group, set()).add(record.split)
        assert all(len(splits) == 1 for splits in by_scene.values())


def test_piq23_official_repository_layout(piq23_copy):
    """Scores at the root (the DXOMARK download) and splits in `Test split/` (the GitHub repository)."""
    expected = {kind: load_piq23(str(piq23_copy), "Details", split=kind) for kind in ("device", "scene")}
    for scores in (piq23_copy / "scores").iterdir():
        scores.rename(piq23_copy / scores.name)
    (piq23_copy / "Test split").mkdir()
    (piq23_copy / "splits" / "device_split.csv").rename(piq23_copy / "Test split" / "Device Split.csv")
    (piq23_copy / "splits" / "scene_split.csv").rename(piq23_copy / "Test split" / "Scene Split.csv")

    for kind, records in expected.items():
        assert load_piq23(str(piq23_copy), "details", split=kind) == records


def test_piq23_missing_files_say_where_they_were_looked_for(piq23_copy):
    (piq23_copy / "splits" / "scene_split.csv").unlink()
    with pytest.raises(SourceNotFoundError, match=r"scene split not found .* Test split/Scene Split.csv"):
        load_piq23(str(piq23_copy), split="scene")
    (piq23_copy / "scores" / "Scores_Exposure.csv").unlink()
    with pytest.raises(SourceNotFoundError, match=r"Exposure scores not found .*: Scores_Exposure.csv, scores/"):
        load_piq23(str(piq23_copy), "Exposure")


def test_piq23_missing_images(piq23_copy):
    (piq23_copy / "Overall" / "81_Indoor_Scene_1.tif").unlink()
    (piq23_copy / "Overall" / "0_Indoor_Scene_0.jpg").unlink()
    with pytest.raises(MissingImagesError, match=r"2 of the 18 images .* e\.g\. Overall/") as error:
        load_piq23(str(piq23_copy))
    assert "require_images=False" in str(error.value)
    assert len(load_piq23(str(piq23_copy), require_images=False)) == 18

    shutil.rmtree(piq23_copy / "Details")
    with pytest.raises(MissingImagesError, match="18 of the 18"):
        load_piq23(str(piq23_copy), "Details")


def test_piq23_unknown_options(piq23_tree):
    with pytest.raises(ConfigError, match="unknown PIQ23 attribute 'Color': choose one of Overall, Details, Exposure"):
        load_piq23(str(piq23_tree), "Color")
    with pytest.raises(ConfigError, match="unknown PIQ23 split 'random'"):
        load_piq23(str(piq23_tree), split="random")


def test_piq23_and_manifests_on_s3(piq23_tree, s3_endpoint, tmp_path):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("labels")
    fs.put(str(piq23_tree), "labels/PIQ23", recursive=True)
    storage = Storage(s3_endpoint)

    for attribute in ATTRIBUTES:
        for kind in ("device", "scene", "none"):
            local = load_piq23(str(piq23_tree), attribute, split=kind)
            remote = load_piq23("s3://labels/PIQ23", attribute, split=kind, storage=storage)
            assert relative(remote, "s3://labels/PIQ23") == relative(local, str(piq23_tree))
            assert all(record.uri.startswith("s3://labels/PIQ23/") for record in remote)

    fs.rm_file("labels/PIQ23/Exposure/8_Indoor_Scene_0.tiff")
    with pytest.raises(MissingImagesError, match="Exposure/8_Indoor_Scene_0.tiff"):
        load_piq23("s3://labels/PIQ23", "Exposure", storage=storage)

    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"uri": ["img/a.jpg", "../b.jpg"], "label": [1.0, 2.0], "group": ["g", "g"]}), manifest)
    fs.put_file(str(manifest), "labels/new/batch-1/manifest.parquet")
    records = load_manifest("s3://labels/new/batch-1/manifest.parquet", storage=storage)
    assert [r.uri for r in records] == ["s3://labels/new/batch-1/img/a.jpg", "s3://labels/new/b.jpg"]
    assert {r.dataset for r in records} == {"batch-1"}
    assert list_manifests("s3://labels/new", storage) == ["s3://labels/new/batch-1/manifest.parquet"]
    assert len(manifest_fingerprint(["s3://labels/new/batch-1/manifest.parquet"], storage)) == 64


def test_clive_mos_file(shared_dir):
    mos = shared_dir / "data" / "clive" / "mos.csv"
    records = load_manifest(str(mos))

    assert len(records) == 627
    assert {r.group for r in records} == {r.dataset for r in records} == {"clive"}
    assert all(r.split is None and r.label_std is not None for r in records)
    assert all(os.path.isfile(r.uri) for r in records)
    first = csv_rows(mos)[0]
    assert records[0] == LabelledImage(
        uri=str(shared_dir / "data" / "clive" / "images" / first["image"]),
        label=float(first["mos"]),
        group="clive",
        dataset="clive",
        label_std=float(first["mos_std"]),
    )
    assert load_manifest(str(mos), dataset="livec")[0].group == "livec"


def test_clive_style_csv_without_images_folder(tmp_path):
    (tmp_path / "koniq.csv").write_text("Image,MOS\nx.jpg,3.5\n")
    assert load_manifest(str(tmp_path / "koniq.csv")) == [
        LabelledImage(uri=str(tmp_path / "x.jpg"), label=3.5, group="koniq", dataset="koniq")
    ]


def test_parquet_manifest_with_relative_uris(tmp_path):
    folder = tmp_path / "vendor-a"
    folder.mkdir()
    table = pa.table(
        {
            "uri": ["images/a.jpg", "/data/b.jpg", "s3://bucket/c.jpg"],
            "label": [0.5, 1.5, 2.5],
            "group": [7, 7, 8],
            "label_std": [0.1, None, float("nan")],
            "split": ["Train", None, "test"],
        }
    )
    pq.write_table(table, folder / "manifest.parquet")

    records = load_manifest(str(folder / "manifest.parquet"))

    assert records == [
        LabelledImage(str(folder / "images" / "a.jpg"), 0.5, "7", "vendor-a", label_std=0.1, split="train"),
        LabelledImage("/data/b.jpg", 1.5, "7", "vendor-a"),
        LabelledImage("s3://bucket/c.jpg", 2.5, "8", "vendor-a", split="test"),
    ]


def test_csv_manifest(tmp_path):
    path = tmp_path / "portraits_2024.csv"
    path.write_bytes(
        b"\xef\xbb\xbfuri,label,group,label_std,split\r\nsub/a.jpg,4,scene-1,,\r\nb.jpg,-1.25,scene-1,0.5,test\r\n"
    )

    records = load_manifest(str(path))

    assert records == [
        LabelledImage(str(tmp_path / "sub" / "a.jpg"), 4.0, "scene-1", "portraits_2024"),
        LabelledImage(str(tmp_path / "b.jpg"), -1.25, "scene-1", "portraits_2024", label_std=0.5, split="test"),
    ]


def test_manifest_errors(tmp_path):
    missing_columns = tmp_path / "bad.csv"
    missing_columns.write_text("path,score\na.jpg,1\n")
    with pytest.raises(SourceFormatError, match=r"it has: path, score") as error:
        load_manifest(str(missing_columns))
    assert "uri, label, group" in str(error.value) and "image, mos" in str(error.value)

    empty_label = tmp_path / "empty.csv"
    empty_label.write_text("uri,label,group\na.jpg,1,g\nb.jpg,,g\n")
    with pytest.raises(SourceFormatError, match="data row 2 has no label"):
        load_manifest(str(empty_label))

    nan_label = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"uri": ["a", "b", "c"], "label": [1.0, 2.0, math.nan], "group": ["g"] * 3}), nan_label)
    with pytest.raises(SourceFormatError, match="data row 3 has no label"):
        load_manifest(str(nan_label))

    bad_split = tmp_path / "split.csv"
    bad_split.write_text("uri,label,group,split\na.jpg,1,g,validation\n")
    with pytest.raises(SourceFormatError, match="data row 1 has split 'validation'"):
        load_manifest(str(bad_split))

    with pytest.raises(SourceNotFoundError, match="does not exist"):
        load_manifest(str(tmp_path / "absent.parquet"))
    assert issubclass(SourceFormatError, PiqaError) and issubclass(SourceNotFoundError, FileNotFoundError)


def test_list_manifests_and_fingerprint(tmp_path):
    for name in ("b/two.parquet", "a/one.csv", "a/nested/three.CSV", "a/_tmp.csv", ".hidden/x.csv", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("uri,label,group\n")

    found = list_manifests(str(tmp_path))

    assert found == [str(tmp_path / name) for name in ("a/nested/three.CSV", "a/one.csv", "b/two.parquet")]
    assert list_manifests(str(tmp_path / "a" / "one.csv")) == [str(tmp_path / "a" / "one.csv")]
    fingerprint = manifest_fingerprint(found)
    assert fingerprint == manifest_fingerprint(reversed(found))
    assert fingerprint != manifest_fingerprint(found[:2])
    (tmp_path / "a" / "one.csv").write_text("uri,label,group\nx.jpg,1,g\n")
    assert manifest_fingerprint(found) != fingerprint
    with pytest.raises(SourceNotFoundError, match="no .parquet or .csv manifests under"):
        list_manifests(str(tmp_path / "empty"))


def test_a_manifest_in_parts_is_one_dataset_with_uris_relative_to_its_folder(tmp_path):
    parts = tmp_path / "new" / "portraits.parquet"
    parts.mkdir(parents=True)
    for number, names in enumerate([["a.jpg", "b.jpg"], ["c.jpg"]]):
        rows = pa.table({"uri": [f"img/{n}" for n in names], "label": [1.0] * len(names), "group": ["g"] * len(names)})
        pq.write_table(rows, parts / f"part-{number:06d}.parquet")
    (parts / "_parts.json").write_text('{"parts": ["part-000000.parquet", "part-000001.parquet"]}')

    found = list_manifests(str(tmp_path / "new"))
    records = [record for uri in found for record in load_manifest(uri)]

    assert [Path(uri).name for uri in found] == ["part-000000.parquet", "part-000001.parquet"]
    assert {record.dataset for record in records} == {"portraits"}
    assert [record.uri for record in records] == [
        str(tmp_path / "new" / "img" / n) for n in ("a.jpg", "b.jpg", "c.jpg")
    ]
