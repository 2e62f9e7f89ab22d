"""Hostile inputs (issue 21): each is a row with a status (or one error row for a malformed shard), never a file
outside the output folder, an out-of-memory or a hang. The readers and the decoder are tested on their own; one
in-process `run_scoring` of a folder of them checks the rows the pipeline writes. Every input is small: a bomb is
a header that claims a huge size, a 2 GB member is a header that claims 2 GB."""

from __future__ import annotations

import io
import struct
import tarfile
import time
import warnings
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import piqa_model
from pipelines.fetch import fetch_records
from pipelines.formats.base import SourceFormat
from pipelines.readers import read_records, read_shards
from pipelines.shards import list_shards
from pipelines.storage import Storage
from piqa_model.config import ModelConfig
from piqa_model.decode import open_preview
from piqa_model.errors import ImageDecodeError, ImageTooLargeError
from piqa_model.images import open_image

STORAGE = Storage()
pytestmark = pytest.mark.timeout(120)  # the file runs in about 20 s; a hang fails instead of stalling the suite


def small_jpeg(size: tuple[int, int] = (64, 48), app1: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 60)).save(buffer, "JPEG")
    data = buffer.getvalue()
    if app1 is None:
        return data
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def tar_of(members: list[tarfile.TarInfo | tuple[str, bytes]], encoding: str = "utf-8") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def records_of(path: Path, **options) -> list[tuple[str, bytes | None, str | None]]:
    [shard] = list_shards(str(path), STORAGE)
    return [(r.key, r.data, r.error) for r in read_records(shard, STORAGE, **options)]


# Tars


def test_tar_members_named_outside_the_archive_keep_their_names_and_touch_no_disk(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "t.tar").write_bytes(tar_of([("../up.jpg", b"a"), ("/abs/root.jpg", b"b"), ("in.jpg", b"c")]))
    assert records_of(tmp_path / "in" / "t.tar") == [
        ("../up", b"a", None),
        ("/abs/root", b"b", None),
        ("in", b"c", None),
    ]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "t.tar"]  # read in memory, never extracted
    assert not Path("/abs").exists()


def test_links_and_devices_in_a_tar_are_error_rows_that_name_them(tmp_path):
    (tmp_path / "t.tar").write_bytes(
        tar_of(
            [
                ("real.jpg", b"bytes"),
                special("soft.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                special("hard.jpg", tarfile.LNKTYPE, "real.jpg"),
                special("dev.jpg", tarfile.CHRTYPE),
                special("folder.jpg", tarfile.DIRTYPE),  # a directory is no sample: skipped
                special("notes.txt", tarfile.SYMTYPE, "x"),  # not an image name: skipped, as any other member
            ]
        )
    )
    assert records_of(tmp_path / "t.tar") == [
        ("real", b"bytes", None),
        ("soft", None, "tar member 'soft.jpg' is a symbolic link to '/etc/passwd'; links are not followed"),
        ("hard", None, "tar member 'hard.jpg' is a hard link to 'real.jpg'; links are not followed"),
        ("dev", None, "tar member 'dev.jpg' is not a regular file (a device or FIFO)"),
    ]


def test_a_tar_member_name_that_is_not_utf8_still_makes_a_row(tmp_path):
    (tmp_path / "t.tar").write_bytes(tar_of([("caf\xe9.jpg", b"x")], encoding="latin-1"))
    [shard] = list_shards(str(tmp_path / "t.tar"), STORAGE)
    batch = dict(shard_id=[shard.shard_id], kind=["tar"], source=[shard.source], files=[[]], first=[0], total=[-1])
    [table] = read_shards(batch, storage=STORAGE, image_column="jpg", key_column="key", chunk_size=10)
    assert table.column("key").to_pylist() == ["caf\ufffd"]  # a surrogate would have failed the Arrow block


def test_a_tar_member_claiming_2_gb_is_an_error_row_without_reading_it(tmp_path):
    size, limit = 2 * 1024**3, 256 * 1024**2  # the claim, and the default limit
    claim = tarfile.TarInfo("huge.jpg")
    claim.size = size
    header = claim.tobuf(tarfile.GNU_FORMAT)
    (tmp_path / "t.tar").write_bytes(tar_of([("a.jpg", b"ok")])[:1024] + header + b"\0" * 1024)
    assert records_of(tmp_path / "t.tar") == [
        ("a", b"ok", None),
        ("huge", None, f"image is {size} bytes, above the limit of {limit} (max_image_bytes); not read"),
        (f"t.tar@{1024 + 512 + size}", None, "corrupt tar: unexpected end of data"),  # the tar ends inside it
    ]


# Duplicate keys


def test_a_repeated_key_in_one_shard_is_scored_once_the_repeat_is_an_error_row(tmp_path):
    """Every position still makes a row (nothing is lost), but a key must name one image: fetch, reshard and
    report find a row's bytes again by its key, so only the first of a key is scored."""
    (tmp_path / "t.tar").write_bytes(tar_of([("k.jpg", b"first"), ("k.png", b"second"), ("j.jpg", b"other")]))
    table = pa.table({"key": ["k", "j", "k"], "jpg": pa.array([b"first", b"other", b"third"], pa.binary())})
    pq.write_table(table, tmp_path / "p.parquet")
    repeat = "duplicate key 'k' in this shard (first at position 0); only the first is scored"
    assert records_of(tmp_path / "t.tar") == [("k", b"first", None), ("k", None, repeat), ("j", b"other", None)]
    assert records_of(tmp_path / "p.parquet") == [("k", b"first", None), ("j", b"other", None), ("k", None, repeat)]
    assert fetch_records(str(tmp_path / "t.tar"), ["k"], STORAGE, SourceFormat())["k"].data == b"first"


# Parquet


def test_a_parquet_cell_above_max_image_bytes_is_an_error_row_and_other_formats_agree(tmp_path):
    limit = 1000
    table = pa.table(
        {"key": ["fits", "over", "none"], "jpg": pa.array([b"x" * limit, b"y" * (limit + 1), None], pa.binary())}
    )
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=2)
    over = f"image is {limit + 1} bytes, above the limit of {limit} (max_image_bytes); not read"
    assert records_of(tmp_path / "p.parquet", max_image_bytes=limit) == [
        ("fits", b"x" * limit, None),
        ("over", None, over),
        ("none", None, "no image bytes in this row"),
    ]
    (tmp_path / "t.tar").write_bytes(tar_of([("over.jpg", b"y" * (limit + 1))]))
    assert records_of(tmp_path / "t.tar", max_image_bytes=limit) == [("over", None, over)]
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "over.jpg").write_bytes(b"y" * (limit + 1))
    assert records_of(tmp_path / "files", max_image_bytes=limit) == [("over.jpg", None, over)]


def test_a_parquet_image_column_is_any_binary_type_and_another_type_is_one_error_row(tmp_path):
    for kind in (pa.large_binary(), pa.binary_view()):
        pq.write_table(pa.table({"key": ["a"], "jpg": pa.array([b"x"], kind)}), tmp_path / "v.parquet")
        assert records_of(tmp_path / "v.parquet", max_image_bytes=1) == [("a", b"x", None)]
    pq.write_table(pa.table({"key": ["a"], "jpg": [12345]}), tmp_path / "p.parquet")
    assert records_of(tmp_path / "p.parquet") == [
        ("p.parquet", None, "image column 'jpg' holds int64, not image bytes; set --image-column")
    ]


def test_a_60000_row_parquet_shard_reads_to_60000_records(tmp_path):
    rows, image = 60_000, small_jpeg((8, 8))
    table = pa.table({"key": [f"{n:05d}" for n in range(rows)], "jpg": pa.array([image] * rows, pa.binary())})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=8192)
    [shard] = list_shards(str(tmp_path / "big.parquet"), STORAGE)
    started = time.perf_counter()
    records = read_records(shard, STORAGE)
    assert time.perf_counter() - started < 30  # about 0.2 s here
    assert len(records) == rows and len({r.key for r in records}) == rows
    assert records[-1].key == "59999" and all(r.data == image and r.error is None for r in records)


# Decompression bombs and other hostile images


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, idat: bytes, before_idat: bytes = b"") -> bytes:
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + before_idat + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    data = small_jpeg()
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def gif(width: int, height: int, frames: int = 1) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame * frames + b"\x3b"


def tiff_claiming(width: int, height: int) -> bytes:
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1)]
    tags += [(278, 4, height), (279, 4, 4)]
    entries = b"".join(
        struct.pack("<HHII" if kind == 4 else "<HHIHxx", tag, kind, 1, value) for tag, kind, value in tags
    )
    return b"II*\x00" + struct.pack("<I", 12) + b"\0" * 4 + struct.pack("<H", len(tags)) + entries + b"\0" * 4


def webp_claiming(width: int, height: int) -> bytes:
    bitstream = b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14) + b"\0" * 31  # VP8L, lossless
    chunk = b"VP8L" + struct.pack("<I", len(bitstream)) + bitstream
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


BOMBS = {
    "png": (png(100_000, 100_000, zlib.compress(b"\0" * 64)), "100000x100000"),
    "gif": (gif(65_535, 65_535), "65535x65535"),  # GIF and JPEG sizes are 16-bit: their largest
    "webp": (webp_claiming(16_383, 16_383), "16383x16383"),  # the largest WebP
    "tiff": (tiff_claiming(100_000, 100_000), "100000x100000"),
    "jpeg": (jpeg_claiming(65_535, 65_535), "65535x65535"),
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_a_decompression_bomb_is_too_large_from_its_header(kind):
    data, size = BOMBS[kind]
    assert len(data) < 1000
    started = time.perf_counter()
    for decode in (lambda: open_image(data), lambda: open_preview(data, ModelConfig(), 640)):
        with pytest.raises(ImageTooLargeError, match=f"^{size} is above the limit of 100000000 pixels$"):
            decode()
    assert time.perf_counter() - started < 5  # nothing is decoded: milliseconds, with room for a busy machine


def test_a_small_png_with_a_huge_zlib_stream_decodes_only_its_own_pixels():
    data = png(100, 100, zlib.compress(b"\0" * (64 << 20), 9))  # 64 MiB of zeros behind a 100x100 header
    started = time.perf_counter()
    assert open_image(data).size == (100, 100)
    assert time.perf_counter() - started < 10  # about 0.1 s


def test_a_png_text_chunk_bomb_is_a_decode_error():
    text = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * (64 << 20), 9))  # PIL stops at MAX_TEXT_CHUNK
    with pytest.raises(ImageDecodeError, match="MAX_TEXT_CHUNK"):
        open_image(png(10, 10, zlib.compress(b"\0" * 1100), before_idat=text))


def test_animations_with_very_many_frames_decode_their_first_frame_only():
    frames = [Image.new("RGB", (4, 4), (n, 0, 0)) for n in range(200)]
    webp = io.BytesIO()
    frames[0].save(webp, "WEBP", save_all=True, append_images=frames[1:], duration=10, lossless=True)
    started = time.perf_counter()
    assert open_image(gif(1, 1, frames=100_000)).size == (1, 1)  # 1.5 MB of frames
    assert open_image(webp.getvalue()).getpixel((0, 0)) == (0, 0, 0)
    assert time.perf_counter() - started < 10  # about 0.1 s


def exif(entries: list[tuple[int, int, bytes]], count: int = 1) -> bytes:
    """An APP1 EXIF payload: one IFD of (tag, type, 4-byte value) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, count) + v for t, k, v in entries)
    return b"Exif\0\0II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 4


ORIENTATION = 0x112
ABSURD_EXIF = {
    "orientation 99": exif([(ORIENTATION, 3, struct.pack("<HH", 99, 0))]),
    "orientation 2**32-1": exif([(ORIENTATION, 4, struct.pack("<I", 2**32 - 1))]),
    "orientation -1": exif([(ORIENTATION, 8, struct.pack("<hh", -1, 0))]),
    "a 2 GB string": exif([(0x10F, 2, struct.pack("<I", 100))], count=2**31 - 1),
    "an IFD past the end": b"Exif\0\0II*\x00" + struct.pack("<I", 2**32 - 256),
    "an IFD that points at itself": exif([(0x8769, 4, struct.pack("<I", 8))]),
    "garbage": b"Exif\0\0" + b"\xde\xad\xbe\xef" * 16,
}


@pytest.mark.parametrize("name", list(ABSURD_EXIF))
def test_absurd_exif_leaves_the_image_as_it_is(name):
    data = small_jpeg((64, 48), app1=ABSURD_EXIF[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns of the corrupt EXIF it skips
        assert open_image(data).size == (64, 48)
        assert open_preview(data, ModelConfig(), 640).image.size == (64, 48)


def test_a_valid_exif_orientation_still_turns_the_image():
    rotated = small_jpeg((64, 48), app1=exif([(ORIENTATION, 3, struct.pack("<HH", 6, 0))]))
    assert open_image(rotated).size == (48, 64)  # the test's EXIF writer is one the decoder reads


# The pipeline, end to end


def test_a_folder_of_hostile_files_is_one_row_per_input_and_nothing_outside_the_output(shared_dir, tmp_path):
    from pipeline_helpers import read_scores, score

    portrait = sorted((shared_dir / "data" / "portraits" / "congress").glob("*.jpg"))[0].read_bytes()
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "hostile.tar").write_bytes(
        tar_of(
            [
                ("face.jpg", portrait),
                ("../escape.jpg", portrait),
                ("/abs/rooted.jpg", portrait),
                special("soft.jpg", tarfile.SYMTYPE, "../../etc/passwd"),
                special("hard.jpg", tarfile.LNKTYPE, "face.jpg"),
                ("face.png", portrait),
                ("bomb.png", BOMBS["png"][0]),
                ("odd-exif.jpg", small_jpeg((64, 48), app1=ABSURD_EXIF["orientation 99"])),
            ]
        )
    )
    cells = [b"\x01" * (len(portrait) + 1), BOMBS["webp"][0], portrait]
    table = pa.table({"key": ["over", "bomb", "fine"], "jpg": pa.array(cells, pa.binary())})
    pq.write_table(table, inputs / "cells.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", piqa_model.UntrainedModelWarning)
        summary = score(inputs, tmp_path / "out", runner="in-process", max_image_bytes=len(portrait))
    assert summary.runner == "in-process"
    rows = sorted((r["shard"], r["key"], r["status"]) for r in read_scores(tmp_path / "out").to_pylist())
    assert rows == sorted(
        [
            ("hostile", "face", "ok"),
            ("hostile", "../escape", "ok"),
            ("hostile", "/abs/rooted", "ok"),
            ("hostile", "soft", "read_error"),
            ("hostile", "hard", "read_error"),
            ("hostile", "face", "read_error"),  # face.png repeats the key of face.jpg
            ("hostile", "bomb", "too_large"),
            ("hostile", "odd-exif", "ok"),
            ("cells", "over", "read_error"),
            ("cells", "bomb", "too_large"),
            ("cells", "fine", "ok"),
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert sorted(p.name for p in inputs.iterdir()) == ["cells.parquet", "hostile.tar"]
    assert not list(tmp_path.parent.glob("**/escape*")) and not Path("/abs").exists()
    assert {p.name for p in (tmp_path / "out").iterdir()} <= {
        "cells.parquet",
        "hostile.parquet",
        "_manifest.json",
        "_job.json",
        "_parts",
    }
