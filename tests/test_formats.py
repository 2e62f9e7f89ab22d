"""Input formats (`pipelines.formats`): each lists and reads tiny local inputs, broken ones included, without
Ray; a format registered here is listed, read and fetched by the pipeline's own functions with no other edit."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus import tar_bytes

from pipelines import formats
from pipelines.fetch import fetch_records, source_shard
from pipelines.formats.base import ContainerFormat, Record, Shard, SourceFormat, image_extension
from pipelines.readers import read_records, read_shards, read_units
from pipelines.shards import list_shards
from pipelines.storage import Storage, StorageError

STORAGE = Storage()


def read(path) -> list[tuple[str, bytes | None, str | None]]:
    """(key, data, error) of every record of the one shard `path` lists as."""
    [shard] = list_shards(str(path), STORAGE)
    return [(r.key, r.data, r.error) for r in read_records(shard, STORAGE)]


def test_a_tar_reads_its_image_members_keyed_by_name(tmp_path):
    (tmp_path / "web-000.tar").write_bytes(
        tar_bytes([("a/000.jpg", b"one"), ("a/000.json", b"{}"), ("a/001.PNG", b"two"), ("readme.txt", b"hi")])
    )
    [shard] = list_shards(str(tmp_path / "web-000.tar"), STORAGE)
    assert (shard.shard_id, shard.kind, shard.source, shard.files) == (
        "web-000",
        "tar",
        str(tmp_path / "web-000.tar"),
        (),
    )
    assert read(tmp_path / "web-000.tar") == [("a/000", b"one", None), ("a/001", b"two", None)]


def test_a_broken_tar_yields_what_was_readable_and_one_error_row(tmp_path):
    whole = tar_bytes([("a.jpg", b"x" * 1024), ("b.jpg", b"y" * 1024)])
    (tmp_path / "cut.tar").write_bytes(whole[: 512 + 1024 + 512 + 100])  # ends inside b.jpg
    [first, second] = read(tmp_path / "cut.tar")
    assert first == ("a", b"x" * 1024, None)
    assert second[:2] == ("b", None) and second[2].startswith("corrupt tar member: ")
    long_name = tar_bytes([("a.jpg", b"x"), ("d/" + "l" * 150 + ".jpg", b"y")])
    (tmp_path / "bad-header.tar").write_bytes(long_name[:2048] + b"\x01" * 512)  # a GNU long name, then garbage
    assert read(tmp_path / "bad-header.tar") == [
        ("a", b"x", None),
        ("bad-header.tar@1024", None, "corrupt tar: invalid header"),
    ]
    (tmp_path / "noise.tar").write_bytes(b"\x01" * 700)
    [(key, data, error)] = read(tmp_path / "noise.tar")
    assert (key, data) == ("noise.tar", None) and error.startswith("not a readable tar file: ")
    (tmp_path / "notes.tar").write_bytes(tar_bytes([("readme.txt", b"hi")]))
    assert read(tmp_path / "notes.tar") == [("notes.tar", None, "no image members in this tar")]


def test_a_shard_gone_after_listing_is_one_error_row_keyed_by_its_id(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.parquet").write_bytes(b"")
    [shard] = list_shards(str(tmp_path / "in"), STORAGE)
    (tmp_path / "in" / "part.parquet").unlink()
    [record] = read_records(shard, STORAGE)
    assert (record.key, record.data) == ("part", None) and record.error.startswith(
        "cannot read shard: FileNotFoundError"
    )


def test_a_parquet_file_reads_its_image_column_keyed_by_its_key_column(tmp_path):
    table = pa.table({"key": ["k1", "k2"], "jpg": pa.array([b"one", None], pa.binary()), "img": [b"a", b"b"]})
    pq.write_table(table, tmp_path / "part.parquet")
    [shard] = list_shards(str(tmp_path / "part.parquet"), STORAGE)
    assert (shard.shard_id, shard.kind) == ("part", "parquet")
    assert read(tmp_path / "part.parquet") == [("k1", b"one", None), ("k2", None, "no image bytes in this row")]
    keyless = [(r.key, r.data) for r in read_records(shard, STORAGE, image_column="img", key_column="id")]
    assert keyless == [("0", b"a"), ("1", b"b")]
    [record] = read_records(shard, STORAGE, image_column="image")
    assert (record.key, record.error) == (
        "part.parquet",
        "no image column 'image' (columns: key, jpg, img); set --image-column",
    )


def test_a_broken_or_empty_parquet_file_is_one_error_row(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    [(key, data, error)] = read(tmp_path / "junk.parquet")
    assert (key, data) == ("junk.parquet", None) and error.startswith("not a readable parquet file: ")
    pq.write_table(
        pa.table({"key": pa.array([], pa.string()), "jpg": pa.array([], pa.binary())}), tmp_path / "e.parquet"
    )
    assert read(tmp_path / "e.parquet") == [("e.parquet", None, "no rows in this parquet file")]


def test_a_folder_of_images_is_grouped_into_virtual_shards_keyed_by_relative_path(tmp_path):
    root = tmp_path / "in"
    for name in ("b.jpg", "a/c.webp", "a/d.JPEG", "e.png", ".hidden.jpg", "notes.txt", "raw.cr2"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    shards = list_shards(str(root), STORAGE, shard_size=3)
    assert [(s.shard_id, s.kind, s.source) for s in shards] == [
        ("files-000000", "files", str(root)),
        ("files-000001", "files", str(root)),
    ]
    assert [s.files for s in shards] == [
        tuple(str(root / n) for n in ("a/c.webp", "a/d.JPEG", "b.jpg")),
        (str(root / "e.png"),),
    ]
    (root / "a" / "d.JPEG").unlink()
    records = read_records(shards[0], STORAGE)
    assert [(r.key, r.source, r.data) for r in records] == [
        ("a/c.webp", str(root / "a/c.webp"), b"a/c.webp"),
        ("a/d.JPEG", str(root / "a/d.JPEG"), None),
        ("b.jpg", str(root / "b.jpg"), b"b.jpg"),
    ]
    assert records[1].error.startswith("FileNotFoundError: ")
    with pytest.raises(ValueError, match="shard_size must be at least 1"):
        list_shards(str(root), STORAGE, shard_size=0)


def test_containers_win_over_loose_images_and_keep_path_order_across_formats(tmp_path):
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / "preview.jpg").write_bytes(b"not an input beside containers")
    (root / "a.tar").write_bytes(tar_bytes([]))
    (root / "b" / "c d.parquet").write_bytes(b"")
    (root / "c.tar").write_bytes(tar_bytes([]))
    shards = list_shards(str(root), STORAGE, shard_size=0)  # no files shards: shard_size is not used
    assert [(s.shard_id, s.kind) for s in shards] == [("a", "tar"), ("b__c_d", "parquet"), ("c", "tar")]


def test_a_container_named_like_a_hidden_file_gets_a_visible_shard_id(tmp_path):
    # An output named `_part0.parquet` would be skipped as a temporary: its rows lost, rescored on every run.
    root = tmp_path / "in"
    root.mkdir()
    (root / "_part0.tar").write_bytes(tar_bytes([]))
    (root / ".x.tar").write_bytes(tar_bytes([]))
    assert sorted(s.shard_id for s in list_shards(str(root), STORAGE)) == ["part0", "x"]


def test_inputs_with_nothing_to_score_are_refused_with_what_is_read(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        list_shards(str(tmp_path / "absent"), STORAGE)
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(StorageError, match=r"photo.jpg is neither a \.tar nor a \.parquet file$"):
        list_shards(str(tmp_path / "photo.jpg"), STORAGE)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(StorageError, match=r"empty holds no \.tar, \.parquet or image files$"):
        list_shards(str(tmp_path / "empty"), STORAGE)


def test_a_score_rows_source_finds_its_format_again():
    assert source_shard("s3://b/in/web-000.tar") == Shard("web-000.tar", "tar", "s3://b/in/web-000.tar")
    assert source_shard("/in/part.parquet").kind == "parquet"
    assert source_shard("/in/a/b.jpg") == Shard("b.jpg", "files", "/in/a", ("/in/a/b.jpg",))
    assert source_shard("/in/a/no-extension").kind == "files"


def test_the_registry_refuses_a_second_format_of_one_name_and_names_the_known_ones():
    with pytest.raises(ValueError, match="'tar' is already registered"):
        formats.register(formats.get("tar"))
    with pytest.raises(KeyError, match="no input format 'zip'; registered: tar, parquet, files"):
        formats.get("zip")


class ZipFormat(ContainerFormat):
    """A toy format: image members of a zip, keyed by name without extension."""

    name, suffix, empty = "zip", ".zip", "no image members in this zip"

    def records(self, payload: bytes, source: str, options: SourceFormat) -> Iterator[Record]:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            for member in archive.namelist():
                if image_extension(member):
                    yield Record(member.rsplit(".", 1)[0], source, archive.read(member))


@pytest.fixture
def zip_format(monkeypatch):
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))
    return formats.register(ZipFormat())


def write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_a_registered_format_is_listed_read_and_fetched_with_no_other_edit(tmp_path, zip_format):
    root = tmp_path / "in"
    root.mkdir()
    write_zip(root / "a.zip", {"x.jpg": b"one", "y.txt": b"-", "z.png": b"two"})
    write_zip(root / "b.zip", {"notes.txt": b"-"})
    (root / "loose.jpg").write_bytes(b"beside containers: not an input")
    shards = list_shards(str(root), STORAGE)
    assert [(s.shard_id, s.kind, s.source) for s in shards] == [
        ("a", "zip", str(root / "a.zip")),
        ("b", "zip", str(root / "b.zip")),
    ]
    assert [(r.key, r.data, r.error) for r in read_records(shards[0], STORAGE)] == [
        ("x", b"one", None),
        ("z", b"two", None),
    ]
    assert [(r.key, r.error) for r in read_records(shards[1], STORAGE)] == [("b.zip", "no image members in this zip")]
    rows = []
    for unit in read_units(shards, files_per_unit=4):
        batch = {name: np.array([value], dtype=object) for name, value in unit.items()}
        for table in read_shards(batch, storage=STORAGE, image_column="jpg", key_column="key", chunk_size=1):
            rows.extend(table.select(["key", "shard", "index", "shard_total"]).to_pylist())
    assert [tuple(row.values()) for row in rows] == [("x", "a", 0, 2), ("z", "a", 1, 2), ("b.zip", "b", 0, 1)]
    found = fetch_records(str(root / "a.zip"), ["z", "gone"], STORAGE, SourceFormat())
    assert {key: record.data for key, record in found.items()} == {"z": b"two"}
    (tmp_path / "void").mkdir()
    with pytest.raises(StorageError, match=r"holds no \.tar, \.parquet, image or \.zip files$"):
        list_shards(str(tmp_path / "void"), STORAGE)
