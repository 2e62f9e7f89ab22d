"""A few photos, as a user scores them: `piqa score` runs its stages in its own process, without starting Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.dataset as pads
import pytest

import piqa_model


def test_a_folder_of_a_few_photos_is_scored_in_the_command_s_own_process(repo_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["congress_A000014.jpg", "london_001_03.jpg", "broken_not_an_image.jpg"]
    for name in names:
        shutil.copy(repo_root / "samples" / "portraits" / name, photos / name)
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # no cluster named

    command = [sys.executable, "-m", "jobs.score", str(photos), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "(in-process)" in done.stdout and "Ray" not in done.stderr, done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["runner"] == "in-process"
    rows = {r["key"]: r for r in pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()}
    expected = piqa_model.load_bundle().score([(photos / name).read_bytes() for name in names])
    for name, reference in zip(names, expected, strict=True):
        assert rows[name]["status"] == reference["status"]
        if reference["score"] is not None:
            assert rows[name]["score"] == pytest.approx(reference["score"], abs=1e-4)
