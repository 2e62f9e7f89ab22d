"""Test inputs for the scoring pipeline: real portraits mixed with every kind of broken input, laid out
as a folder of files, as WebDataset tars and as Parquet, each with the status every key must get."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def broken_inputs(real_jpeg: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected status)."""
    return {
        "empty.jpg": (b"", "decode_error"),
        "text_named.jpg": (b"this is a text file, not a JPEG\n", "decode_error"),
        "truncated.jpg": (real_jpeg[: len(real_jpeg) // 3], "decode_error"),
        "bomb.png": (png_bomb(), "too_large"),
        "phone.heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "unsupported"),
    }


@dataclass
class Corpus:
    """An input location and the status each key must end with."""

    root: Path
    expected: dict[str, str] = field(default_factory=dict)


def portraits(shared_dir: Path, count: int) -> list[Path]:
    return sorted((shared_dir / "data" / "portraits" / "congress").glob("*.jpg"))[:count]


def folder_corpus(shared_dir: Path, root: Path, count: int = 4) -> Corpus:
    """Images in nested folders; keys are paths relative to `root`."""
    corpus = Corpus(root)
    for number, path in enumerate(portraits(shared_dir, count)):
        key = f"{'ab'[number % 2]}/{path.name}"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(path.read_bytes())
        corpus.expected[key] = "ok"
    real = portraits(shared_dir, 1)[0].read_bytes()
    for name, (data, status) in broken_inputs(real).items():
        (root / "broken").mkdir(exist_ok=True)
        (root / "broken" / name).write_bytes(data)
        corpus.expected[f"broken/{name}"] = status
    (root / "notes.txt").write_text("not an image extension: ignored\n")
    return corpus


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of regular files (GNU format: long names are fine)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_corpus(shared_dir: Path, root: Path, count: int = 4) -> Corpus:
    """Two WebDataset shards (images + JSON sidecars + broken members) and a shard cut off mid-member."""
    corpus = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    real = portraits(shared_dir, count)
    members = []
    for number, path in enumerate(real):
        members += [(f"{number:06d}.jpg", path.read_bytes()), (f"{number:06d}.json", b'{"caption": "x"}')]
        corpus.expected[f"{number:06d}"] = "ok"
    (root / "shard-000.tar").write_bytes(tar_bytes(members))
    broken = [(name, data) for name, (data, _) in broken_inputs(real[0].read_bytes()).items()]
    (root / "shard-001.tar").write_bytes(tar_bytes(broken))
    for name, (_, status) in broken_inputs(real[0].read_bytes()).items():
        corpus.expected[name.rsplit(".", 1)[0]] = status
    cut = tar_bytes([("cut/000.jpg", real[0].read_bytes()), ("cut/001.jpg", real[1].read_bytes())])
    (root / "shard-002.tar").write_bytes(cut[: 512 + len(real[0].read_bytes()) + 512 + 1000])
    corpus.expected.update({"cut/000": "ok", "cut/001": "read_error"})
    return corpus


def parquet_corpus(shared_dir: Path, root: Path, count: int = 4) -> Corpus:
    """An img2dataset-style Parquet (key, jpg) with a null-bytes row and broken images."""
    corpus = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    real = portraits(shared_dir, count)
    keys, blobs = [], []
    for number, path in enumerate(real):
        keys.append(f"p{number:04d}")
        blobs.append(path.read_bytes())
        corpus.expected[keys[-1]] = "ok"
    for name, (data, status) in broken_inputs(real[0].read_bytes()).items():
        keys.append(name)
        blobs.append(data)
        corpus.expected[name] = status
    keys.append("null-bytes")
    blobs.append(None)
    corpus.expected["null-bytes"] = "read_error"
    table = pa.table({"key": keys, "jpg": pa.array(blobs, pa.binary()), "caption": ["x"] * len(keys)})
    pq.write_table(table, root / "part-00000.parquet")
    return corpus
