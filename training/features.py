"""Per-image features computed once and cached in Parquet: the face box (and LIQE logits when the head reads them).

The authors precompute both before training; so do we, with the detector the scoring pipeline uses, as a
Ray Data actor pool. Training and evaluation then never rerun detection. The cache file's name carries a
fingerprint of everything that changes its content (detector settings, LIQE weights), and a later job
computes only the images the cache lacks. Images are identified by URI, as objects in a bucket are
immutable by convention: write changed images under new URIs, or delete the cache file.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import Storage
from piqa_model import ModelConfig
from piqa_model.errors import ImageReadError
from piqa_model.faces import FaceDetection, FaceDetector
from piqa_model.flow import ImageFlow
from piqa_model.images import to_uint8_tensor_chw
from piqa_model.options import DEFAULT_DECODE, DecodeMode

CACHE_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("error", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("num_faces", pa.int64()),
        ("face_box", pa.list_(pa.float64())),
        ("face_prob", pa.float64()),
        ("aux", pa.list_(pa.float32())),
    ]
)


@dataclass(frozen=True)
class FeatureSpec:
    """What the cached features depend on. Images go through `piqa score`'s own decode and detection
    (`piqa_model.flow`, `decode` as its default), so a training image's face box is the one scoring finds."""

    detect_size: int
    min_face_size: int
    liqe_weights: str | None  # a digest of the LIQE weights; None: the head reads no LIQE features
    model: ModelConfig = field(compare=False)  # the network trained: its input size sets the preview's decode
    decode: DecodeMode = DEFAULT_DECODE

    def fingerprint(self) -> str:
        decode = {"decode": self.decode, "resize": self.model.resize, "full": self.model.aux == "liqe"}
        made_by = {"detect_size": self.detect_size, "min_face_size": self.min_face_size, **decode}
        document = {**made_by, "liqe_weights": self.liqe_weights}
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ImageFeatures:
    face: FaceDetection
    aux: np.ndarray | None  # [495] float32


class FeatureExtractor:
    """Ray Data actor: uri batch in, cache rows out. `liqe_files` (bundle bytes) when LIQE features are needed."""

    def __init__(self, storage: Storage, spec: FeatureSpec, liqe_files: dict[str, bytes] | None) -> None:
        self.storage = storage
        self.flow = ImageFlow(spec.model, FaceDetector(spec.detect_size, spec.min_face_size), decode=spec.decode)
        self.net = None
        if liqe_files is not None:
            from piqa_model.bundle import read_bundle_files

            self.net = read_bundle_files(liqe_files)[0]
            self.net.check_self_contained()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        uris = [str(uri) for uri in batch["uri"]]
        rows = []
        for uri, item in zip(uris, self.flow.decode_and_detect([self._read(uri) for uri in uris]), strict=True):
            row = {name: getattr(item.record, name, None) for name in CACHE_SCHEMA.names} | {"uri": uri}
            if item.image is not None and self.net is not None:  # a LIQE network's flow decodes in full
                with torch.no_grad():
                    row["aux"] = self.net.aux_features(to_uint8_tensor_chw(item.image.image).unsqueeze(0))[0].tolist()
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)

    def _read(self, uri: str) -> bytes | ImageReadError:
        try:
            return self.storage.read_bytes(uri)
        except OSError as exc:
            return ImageReadError(f"{type(exc).__name__}: {exc}")


def cache_uri(cache_dir: str, spec: FeatureSpec) -> str:
    return posixpath.join(cache_dir.rstrip("/"), f"features-{spec.fingerprint()}.parquet")


def load_or_compute(
    uris: list[str],
    cache_dir: str,
    spec: FeatureSpec,
    storage: Storage,
    liqe_files: dict[str, bytes] | None = None,
    actors: int = 1,
) -> tuple[dict[str, ImageFeatures], dict[str, str]]:
    """({uri: features}, {uri: error}) for `uris`, computing (on Ray) only what the cache lacks."""
    location = cache_uri(cache_dir, spec)
    cached = _read_cache(location, storage)
    missing = sorted(set(uris) - set(cached.column("uri").to_pylist()))
    if missing:
        import ray

        from pipelines.runtime import ensure_ray

        ensure_ray()
        computed = (
            ray.data.from_items([{"uri": uri} for uri in missing])
            .map_batches(
                FeatureExtractor,
                fn_constructor_kwargs=dict(storage=storage, spec=spec, liqe_files=liqe_files),
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
                batch_size=16,
                batch_format="numpy",
                num_cpus=1,
            )
            .to_arrow_refs()
        )
        tables = [cached, *(ray.get(ref).cast(CACHE_SCHEMA) for ref in computed)]
        cached = pa.concat_tables(tables)
        sink = io.BytesIO()
        pq.write_table(cached, sink)
        storage.write_atomic(location, sink.getvalue())
    wanted = set(uris)
    features: dict[str, ImageFeatures] = {}
    errors: dict[str, str] = {}
    for row in cached.to_pylist():
        if row["uri"] not in wanted:
            continue
        if row["error"] is not None:
            errors[row["uri"]] = row["error"]
            continue
        box = None if row["face_box"] is None else tuple(row["face_box"])
        aux = None if row["aux"] is None else np.asarray(row["aux"], dtype=np.float32)
        features[row["uri"]] = ImageFeatures(FaceDetection(row["num_faces"], box, row["face_prob"]), aux)
    return features, errors


def _read_cache(location: str, storage: Storage) -> pa.Table:
    fs, path = storage.filesystem(location)
    if not fs.exists(path):
        return CACHE_SCHEMA.empty_table()
    return pq.read_table(io.BytesIO(storage.read_bytes(location))).cast(CACHE_SCHEMA)
