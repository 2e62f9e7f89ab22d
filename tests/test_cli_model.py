"""The model commands of `piqa`: import the authors' checkpoints into a bundle, predict, offline hub init."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import piqa_model
from piqa_model.backbones.swin import build_swin
from piqa_model.config import SMALL_SWIN, TINY_LIQE
from piqa_model.liqe import LiqeBranch


def piqa(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIQA_CACHE_DIR=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_import_dnpiqa_command_then_load_bundle_reproduces_the_fixture(reference_dir, tmp_path):
    result = piqa(
        "weights", "import-dnpiqa",
        "--checkpoint", str(reference_dir / "dnpiqa_small_timm067.pth"),
        "--liqe", str(reference_dir / "clip_tiny_openai_layout.pt"),
        "--out", str(tmp_path / "bundle"),
        cache=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    scorer = piqa_model.load_bundle(tmp_path / "bundle")
    assert scorer.trained and scorer.info.name == "dn-piqa"
    io = torch.load(reference_dir / "dnpiqa_small_io.pt", weights_only=True)
    liqe_io = torch.load(reference_dir / "liqe_tiny_io.pt", weights_only=True)
    net = scorer.net
    with torch.no_grad():
        scores = net.forward_crops(net.normalise(io["overall_crops_u8"]), net.normalise(io["face_crops_u8"]), io["aux"])
        aux = net.aux_features(liqe_io["image_u8"])
    torch.testing.assert_close(scores, io["per_crop_scores"], atol=1e-4, rtol=0)
    torch.testing.assert_close(aux, liqe_io["aux"], atol=1e-4, rtol=0)
    bundle = tmp_path / "bundle"
    assert {p.name for p in bundle.iterdir()} == {"MODEL_CARD.md", "config.json", "model.safetensors"}
    # World-readable like every bundle: a model directory is for sharing (the importer's own umask aside).
    assert {p.name: p.stat().st_mode & 0o777 for p in (bundle, *bundle.iterdir())} == {
        "bundle": 0o755, "MODEL_CARD.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644,
    }  # fmt: skip
    # The card names what was imported, by digest, and claims no provenance it cannot know.
    card = (bundle / "MODEL_CARD.md").read_text()
    digest = hashlib.sha256((reference_dir / "dnpiqa_small_timm067.pth").read_bytes()).hexdigest()
    assert f"checkpoint dnpiqa_small_timm067.pth (sha256 {digest})" in card and "LIQE clip_tiny_openai_layout" in card
    assert "released by the authors" not in card and "if it is their PIQ_model.pth" in card


def test_import_of_a_missing_checkpoint_is_one_line_and_nonzero(tmp_path):
    result = piqa("weights", "import-dnpiqa", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "b"),
                  cache=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"piqa: error: checkpoint not found: {tmp_path / 'nope.pth'}"]


def test_predict_prints_json_rows_with_the_starter_and_flags_an_untrained_bundle(repo_root, tmp_path):
    samples = repo_root / "samples" / "portraits"
    images = [samples / "congress_A000014.jpg", samples / "broken_not_an_image.jpg"]
    result = piqa("predict", *map(str, images), "--json", cache=tmp_path)
    assert result.returncode == 1  # one input failed
    document = json.loads(result.stdout)
    assert document["trained"] is True and document["model"].startswith("starter-")
    assert document["score_scale"].startswith("0-100, higher is better")  # the starter is calibrated
    ok, broken = document["results"]
    assert ok["status"] == "ok" and isinstance(ok["score"], float) and ok["num_faces"] == 1
    assert broken["status"] == "decode_error" and broken["score"] is None
    assert "UNTRAINED" not in result.stderr

    untrained = piqa_model.save_bundle(
        piqa_model.DualBranchNet(piqa_model.preset("small")),
        tmp_path / "untrained",
        piqa_model.BundleInfo(name="random", trained=False),
    )
    table = piqa("predict", str(images[0]), "--bundle", str(untrained), cache=tmp_path)
    assert table.returncode == 0
    assert "UNTRAINED" in table.stderr and "congress_A000014.jpg" in table.stdout
    assert "scores: raw network output" in table.stdout  # a bundle without a scale says so


def test_hub_initialisation_offline_is_a_clear_error():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(piqa_model.WeightsUnavailableError, match="Offline"):
        build_swin(SMALL_SWIN.__class__(), pretrained=True)
    with pytest.raises(piqa_model.WeightsUnavailableError, match="Offline"):
        LiqeBranch.from_pretrained_clip(TINY_LIQE.__class__())


def test_show_names_the_score_scale_and_a_missing_folder_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores = tmp_path / "scores"
    scores.mkdir()
    rows = [
        {"key": "a", "source": "a.jpg", "shard": "s", "status": "ok", "score": 71.5, "num_faces": 1},
        {"key": "b", "source": "b.jpg", "shard": "s", "status": "decode_error", "score": None, "num_faces": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), scores / "s.parquet")
    (scores / "_manifest.json").write_text(json.dumps({"score_scale": "0-100, higher is better: a test"}))
    shown = piqa("show", str(scores), cache=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "scores: 0-100, higher is better: a test"
    assert lines[2].split() == ["71.5000", "1", "ok", "a"] and lines[3].split()[-2:] == ["decode_error", "b"]
    assert lines[4].startswith("distribution: n=1 mean=71.5000") and "--min-score" in shown.stdout

    missing = piqa("show", str(tmp_path / "nowhere"), cache=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr, missing.stderr
