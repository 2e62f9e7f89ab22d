"""The one per-image flow and the one record: every caller gets the same statuses, fields and inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from corpus import broken_inputs, portraits
from PIL import Image

from piqa_model import BundleInfo, DualBranchNet, FaceDetector, Scorer, preset
from piqa_model.errors import STATUSES, ImageReadError
from piqa_model.flow import ImageFlow
from piqa_model.record import RECORD_SCHEMA, ScoreRecord

SMALL = preset("small")


class DecoderBug(Image.Image):
    """An image whose decoding raises what no image fault should: the flow must still give it a row."""

    @property
    def size(self) -> tuple[int, int]:
        raise RuntimeError("a decoder bug")


@pytest.fixture(scope="module")
def flow() -> ImageFlow:
    return ImageFlow(SMALL, FaceDetector())


def test_the_record_schema_follows_the_record_and_a_misspelt_field_is_an_error():
    assert RECORD_SCHEMA.names == [field.name for field in dataclasses.fields(ScoreRecord)]
    with pytest.raises(TypeError):
        ScoreRecord(**{"status": "ok", "scroe": 1.0})


def test_every_failure_becomes_its_status_and_nothing_raises(flow, shared_dir):
    good = portraits(shared_dir, 1)[0].read_bytes()
    broken = broken_inputs(good)
    inputs = [good, *(data for data, _ in broken.values()), ImageReadError("gone"), DecoderBug()]
    decoded = flow.decode_and_detect(inputs)

    statuses = [item.record.status for item in decoded]
    assert statuses == ["ok", *(status for _, status in broken.values()), "read_error", "decode_error"]
    assert set(statuses) <= set(STATUSES)
    assert decoded[-1].record.error == "RuntimeError: a decoder bug" and decoded[-2].record.error == "gone"
    ok = decoded[0]
    assert ok.image is not None and ok.record.num_faces == ok.image.detection.num_faces >= 1
    assert (ok.record.width, ok.record.height) == ok.image.original_size
    for item in decoded[1:]:
        assert item.image is None and item.record.error and item.record.width is None


def test_the_scorer_returns_the_flow_records_with_scores(flow, shared_dir):
    torch.manual_seed(0)
    scorer = Scorer(DualBranchNet(SMALL), BundleInfo("test", trained=True), "test-bundle", batch_size=2)
    photos = [path.read_bytes() for path in portraits(shared_dir, 2)] + [b"not an image"]
    rows = scorer.score(photos)
    records = [item.record for item in flow.decode_and_detect(photos)]
    for row, record in zip(rows, records, strict=True):
        assert {k: v for k, v in row.items() if k != "score"} == {
            k: v for k, v in record.as_row(with_liqe=False).items() if k != "score"
        }
        assert (row["score"] is None) == (record.status != "ok")
