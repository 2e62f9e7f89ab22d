"""One image's result, defined once: what `Scorer.score` returns and what every output row holds beside its ids.

A new column is one field here (and its Arrow type in `RECORD_SCHEMA`); a misspelt field is a TypeError where
the record is built, not a column of nulls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

LIQE_FIELDS = ("liqe_quality", "liqe_scene", "liqe_distortion")


@dataclass
class ScoreRecord:
    status: str  # `ok`, or why not (piqa_model.errors.STATUSES)
    error: str | None = None
    width: int | None = None  # of the upright original
    height: int | None = None
    num_faces: int | None = None
    face_box: list[float] | None = None  # (left, top, right, bottom) in original pixels
    face_prob: float | None = None
    score: float | None = None  # on the bundle's scale; None unless ok
    liqe_quality: float | None = None  # bundles with the LIQE branch only
    liqe_scene: str | None = None
    liqe_distortion: str | None = None

    def as_row(self, with_liqe: bool) -> dict[str, Any]:
        row = asdict(self)
        return row if with_liqe else {name: value for name, value in row.items() if name not in LIQE_FIELDS}


RECORD_SCHEMA = pa.schema(
    [
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_faces", pa.int32()),
        ("face_box", pa.list_(pa.float32())),  # fixed-size lists with nulls trip pyarrow readers
        ("face_prob", pa.float32()),
        ("score", pa.float32()),
        ("liqe_quality", pa.float32()),
        ("liqe_scene", pa.string()),
        ("liqe_distortion", pa.string()),
    ]
)


def record_schema(with_liqe: bool) -> pa.Schema:
    """`RECORD_SCHEMA`, without the LIQE fields for bundles without the LIQE branch."""
    return RECORD_SCHEMA if with_liqe else pa.schema([f for f in RECORD_SCHEMA if f.name not in LIQE_FIELDS])
