"""What a `piqa` command that runs Ray prints: its own lines and Ray's warnings; Ray's INFO logs with --verbose."""

from __future__ import annotations

import shutil

import pytest
from processes import RAY_INFO_LINE

from jobs.cli import run


@pytest.mark.usefixtures("ray_local")
def test_ray_info_logs_only_with_verbose(repo_root, tmp_path, capfd, caplog):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("congress_A000014.jpg", "london_001_03.jpg"):
        shutil.copy(repo_root / "samples" / "portraits" / name, images / name)

    assert run(["score", str(images), "--out", str(tmp_path / "loud"), "--verbose"]) == 0
    loud = capfd.readouterr()
    # In one test process Ray's console handler may still hold the stream of an earlier test's capture: its
    # INFO records then reach pytest's log capture instead. A real command has one console.
    loud_logs = caplog.text
    assert run(["score", str(images), "--out", str(tmp_path / "quiet")]) == 0
    quiet = capfd.readouterr()

    assert RAY_INFO_LINE.search(loud.out + loud.err) or "INFO" in loud_logs, loud.err[-2000:]
    assert not RAY_INFO_LINE.search(quiet.out + quiet.err), quiet.err[-2000:]
    assert quiet.out.startswith("scored 2 images (2 ok, 0 errors)")
    assert "INFO" not in caplog.text[len(loud_logs) :], caplog.text[-2000:]
