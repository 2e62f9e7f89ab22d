"""A rerun resumes the same job and refuses another one: every way the rows' makings can differ."""

from __future__ import annotations

import json

import pytest

from pipelines.config import ScoreConfig
from pipelines.resume import JOB_RECORD, JobRecord, OutputMismatchError, continue_job
from pipelines.shards import list_shards
from pipelines.storage import Storage
from piqa_model import preset

MODEL_CONFIG = preset("small")


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        (root / name).write_bytes(b"not really a jpeg")
    return root


def record(photos, model: str = "starter-1", model_config=MODEL_CONFIG, **options) -> JobRecord:
    config = ScoreConfig(input=str(photos), output="unused", **{"shard_size": 2, **options})
    return JobRecord.describe(config, list_shards(config.input, Storage(), config.shard_size), model, model_config)


def first_run(tmp_path, photos) -> tuple[str, JobRecord]:
    out = tmp_path / "out"
    job = record(photos)
    continue_job(str(out), Storage(), job, set())
    return str(out), job


def refusal(out: str, job: JobRecord, written: set[str]) -> str:
    with pytest.raises(OutputMismatchError) as caught:
        continue_job(out, Storage(), job, written)
    message = str(caught.value)
    assert "\n" not in message and "--overwrite" in message and "--out" in message
    return message


def test_the_same_job_resumes_and_the_record_is_written_once(tmp_path, photos):
    out, job = first_run(tmp_path, photos)
    written = set(list(job.shards)[:2])
    stamp = (tmp_path / "out" / JOB_RECORD).stat().st_mtime_ns
    continue_job(out, Storage(), record(photos, batch_size=7, score_actors=(2, 2), compile=True), written)
    assert (tmp_path / "out" / JOB_RECORD).stat().st_mtime_ns == stamp  # speed settings do not change a row
    assert json.loads((tmp_path / "out" / JOB_RECORD).read_text())["model"] == "starter-1"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(model="dn-piqa-2"), "model starter-1 -> dn-piqa-2"),
        (dict(shard_size=3), "shard_size 2 -> 3"),
        (dict(detect_size=320), "detect_size 640 -> 320"),
        (dict(min_face_size=40), "min_face_size 20 -> 40"),
        (dict(decode="full"), "decode draft -> full"),
        (dict(precision="bf16"), "precision fp32 -> bf16"),
        (dict(max_pixels=1000), "max_pixels 100000000 -> 1000"),
        (dict(max_image_bytes=1000), "max_image_bytes 268435456 -> 1000"),
        (dict(model_config=MODEL_CONFIG.with_crop_mode("center")), "crop_mode five -> center"),
    ],
)
def test_a_rerun_with_other_settings_is_refused(tmp_path, photos, change, expected):
    out, job = first_run(tmp_path, photos)
    message = refusal(out, record(photos, **change), {next(iter(job.shards))})
    assert expected in message


def test_a_record_from_before_a_newer_setting_resumes(tmp_path, photos):
    out, job = first_run(tmp_path, photos)
    older = json.loads((tmp_path / "out" / JOB_RECORD).read_text())
    del older["settings"]["max_image_bytes"]
    (tmp_path / "out" / JOB_RECORD).write_text(json.dumps(older))
    continue_job(out, Storage(), job, {next(iter(job.shards))})
    assert json.loads((tmp_path / "out" / JOB_RECORD).read_text())["settings"]["max_image_bytes"] == 268435456


def test_another_input_is_refused(tmp_path, photos):
    out, job = first_run(tmp_path, photos)
    other = tmp_path / "other"
    photos.rename(other)
    assert "input" in refusal(out, record(other), {next(iter(job.shards))})


def test_files_added_to_a_folder_that_would_move_images_between_shards_are_refused(tmp_path, photos):
    out, job = first_run(tmp_path, photos)
    (photos / "a0.jpg").write_bytes(b"a new photo sorted into the first shard")
    message = refusal(out, record(photos), set(job.shards))
    assert "the input's files changed" in message and sorted(job.shards)[0] in message


def test_a_written_shard_that_left_the_input_is_refused(tmp_path, photos):
    out, job = first_run(tmp_path, photos)
    (photos / "e.jpg").unlink()  # the last shard, e.jpg alone, is gone
    last = sorted(job.shards)[-1]
    assert f"shard {last} is no longer in the input" in refusal(out, record(photos), {last})


def test_an_unwritten_shard_may_change(tmp_path, photos):
    out, job = first_run(tmp_path, photos)
    (photos / "f.jpg").write_bytes(b"joins the last shard, which has no rows yet")
    continue_job(out, Storage(), record(photos), set(sorted(job.shards)[:2]))
    assert json.loads((tmp_path / "out" / JOB_RECORD).read_text())["shards"] == record(photos).shards


def test_scores_without_a_record_are_refused(tmp_path, photos):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000000.parquet").write_bytes(b"rows from an older version")
    assert "no _job.json" in refusal(str(out), record(photos), {"shard-000000"})


def test_an_output_without_rows_takes_the_new_job(tmp_path, photos):
    out, _ = first_run(tmp_path, photos)  # stopped before its first shard was committed
    continue_job(out, Storage(), record(photos, model="fixed-bundle", shard_size=3), set())
    assert json.loads((tmp_path / "out" / JOB_RECORD).read_text())["model"] == "fixed-bundle"
