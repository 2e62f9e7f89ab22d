"""The benchmark scripts still run end to end (tiny sizes; their figures are for BENCHMARKS.md, not for here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_script(repo_root, *args: str) -> None:
    env = dict(os.environ, RAY_ADDRESS="local", PYTHONUNBUFFERED="1")
    finished = subprocess.run(
        [sys.executable, *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=900
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]


def test_pipeline_throughput_script_measures_every_way(repo_root, tmp_path):
    out = tmp_path / "throughput.json"
    run_script(
        repo_root,
        "bench/pipeline_throughput.py",
        *("--sets", "london", "--images", "2", "--copies", "2", "--no-ladder", "--out", str(out)),
    )
    [result] = json.loads(out.read_text())["sets"]
    assert result["naive"]["images"] == 2 and result["pipeline"]["counts"] == {"ok": 4}
    assert result["bound"]["images_per_second"] > 0
    assert result["pipeline_vs_in_process_max_abs_score_diff"] < 1e-4  # the pipeline does the in-process work


def test_gpu_throughput_script_runs_on_a_cpu(repo_root, tmp_path):
    out = tmp_path / "gpu.json"
    run_script(
        repo_root,
        "bench/gpu_throughput.py",
        *("--device", "cpu", "--preset", "small-liqe", "--seconds", "2", "--photos", "2"),
        *("--batch-size", "1", "--workers", "1", "--out", str(out)),
    )
    results = json.loads(out.read_text())["results"]
    assert all(ms > 0 for ms in results["prepare_ms_per_photo"].values())
    for mode in ("five", "center"):
        assert results[mode]["fed"]["images_per_second"] > 0
        assert 0 < results[mode]["fed"]["busy_share"] <= 1.01


def test_face_detector_script_compares_both_detectors(repo_root, tmp_path):
    out = tmp_path / "faces.json"
    run_script(repo_root, "bench/face_detector.py", *("--images", "1", "--repeats", "1", "--out", str(out)))
    results = json.loads(out.read_text())
    assert len(results) == 4
    for result in results.values():
        assert result["facenet_ms"] > 0 and result["ours_ms"] > 0
        assert result["face_count_mismatches"] == 0 and result["max_box_diff_px"] < 0.01
