"""End-to-end scoring with `load_bundle`: decode -> detect -> prepare -> predict, one row per input."""

import io
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import piqa_model
from piqa_model import bundle as bundle_module
from piqa_model.liqe import DISTORTIONS, SCENES, summarise


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("piqa-cache")


@pytest.fixture(scope="module")
def scorer(cache_dir: Path) -> piqa_model.Scorer:
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings():
        monkeypatch.setenv("PIQA_CACHE_DIR", str(cache_dir))
        warnings.simplefilter("error", piqa_model.UntrainedModelWarning)  # the shipped starter is trained
        loaded = piqa_model.load_bundle()
    return loaded


@pytest.fixture(scope="module")
def portrait_bytes(portrait_paths: dict[str, list[Path]]) -> list[bytes]:
    paths = portrait_paths["london"][:1] + portrait_paths["congress"][:2]
    return [path.read_bytes() for path in paths]


@pytest.fixture(scope="module")
def mixed_rows(scorer, portrait_bytes) -> list[dict]:
    pil = Image.open(io.BytesIO(portrait_bytes[2]))  # a PIL image (still JPEG-backed, not yet RGB-loaded)
    return scorer.score([*portrait_bytes, pil, b"", b"not an image"])


def test_default_bundle_is_the_shipped_starter_model(scorer):
    assert scorer.trained and scorer.info.name == "starter"
    assert scorer.config == piqa_model.preset("lite0-352")
    files = list(bundle_module.SHIPPED_BUNDLE.iterdir())
    assert sum(f.stat().st_size for f in files) <= 30_000_000
    card = (bundle_module.SHIPPED_BUNDLE / "MODEL_CARD.md").read_text()
    assert "small starter model" in card and "piqa weights import-dnpiqa" in card and "| all groups |" in card
    assert "## Score scale" in card and "## Held-out SRCC per fault kind" in card
    assert scorer.info.scale is not None and "CLIVE validation split" in scorer.info.scale.fitted_on


def test_the_starter_scores_on_its_0_to_100_scale_and_ranks_degraded_photos_lower(scorer, repo_root):
    samples = repo_root / "samples" / "portraits"
    pairs = [
        (samples / f"degraded_{kind}_{name}", samples / name)
        for kind, name in (
            ("blur", "london_005_03.jpg"),
            ("underexposure", "congress_D000616.jpg"),
            ("noise", "congress_G000558.jpg"),
            ("jpeg", "london_010_03.jpg"),
        )
    ]
    rows = scorer.score([path.read_bytes() for pair in pairs for path in pair])
    scores = [row["score"] for row in rows]
    assert all(0.0 <= score <= 100.0 for score in scores)
    for degraded, clean in zip(scores[::2], scores[1::2], strict=True):
        assert degraded < clean - 5, scores


def test_without_a_starter_the_default_is_a_reproducible_untrained_network(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "SHIPPED_BUNDLE", tmp_path / "no-starter")
    ids = []
    for cache in ("a", "b"):  # two caches build the same seeded weights, hence the same bundle id
        monkeypatch.setenv("PIQA_CACHE_DIR", str(tmp_path / cache))
        with pytest.warns(piqa_model.UntrainedModelWarning, match="UNTRAINED"):
            untrained = piqa_model.load_bundle()
        assert not untrained.trained and untrained.config == piqa_model.preset("small")
        assert (tmp_path / cache / "bundles" / "untrained-small" / "config.json").is_file()
        ids.append(untrained.bundle_id)
    assert ids[0] == ids[1] and ids[0].startswith("untrained-small-")


def test_mixed_inputs_give_one_row_each_in_order(mixed_rows):
    assert [row["status"] for row in mixed_rows] == ["ok"] * 4 + ["decode_error"] * 2


def test_ok_rows(mixed_rows):
    sizes = [(1350, 1350), (225, 275), (225, 275), (225, 275)]
    for row, (width, height) in zip(mixed_rows[:4], sizes, strict=True):
        assert row["error"] is None
        assert (row["width"], row["height"]) == (width, height)
        assert isinstance(row["score"], float) and math.isfinite(row["score"])
        assert row["num_faces"] >= 1
        assert row["face_prob"] > 0.9
        box = row["face_box"]
        assert isinstance(box, list) and len(box) == 4
        assert all(isinstance(v, float) for v in box)
        assert box[0] < box[2] <= width and box[1] < box[3] <= height
        assert "liqe_quality" not in row  # the small preset has no LIQE branch


def test_error_rows(mixed_rows):
    for row in mixed_rows[4:]:
        assert row["status"] == "decode_error"
        assert isinstance(row["error"], str) and row["error"]
        for key in ("score", "num_faces", "face_box", "face_prob", "width", "height"):
            assert row[key] is None
    assert set(mixed_rows[0]) == set(mixed_rows[4])


def test_pil_input_scores_like_its_bytes(mixed_rows):
    assert abs(mixed_rows[3]["score"] - mixed_rows[2]["score"]) < 1e-5
    assert mixed_rows[3]["face_box"] == pytest.approx(mixed_rows[2]["face_box"], abs=1e-3)


def test_scores_differ_between_images(mixed_rows):
    assert mixed_rows[0]["score"] != mixed_rows[1]["score"]
    assert mixed_rows[1]["score"] != mixed_rows[2]["score"]


def test_scores_do_not_depend_on_the_batch(scorer, mixed_rows, portrait_bytes):
    for index in (0, 1):
        (alone,) = scorer.score([portrait_bytes[index]])
        assert alone["status"] == "ok"
        assert abs(alone["score"] - mixed_rows[index]["score"]) < 1e-5
        assert alone["face_box"] == pytest.approx(mixed_rows[index]["face_box"], abs=1.0)


def test_batches_split_by_batch_size(scorer, portrait_bytes, mixed_rows):
    small_batches = piqa_model.Scorer(scorer.net, scorer.info, scorer.bundle_id, batch_size=2)
    rows = small_batches.score([portrait_bytes[1], b"", portrait_bytes[2]])
    assert [row["status"] for row in rows] == ["ok", "decode_error", "ok"]
    assert abs(rows[0]["score"] - mixed_rows[1]["score"]) < 1e-5
    assert abs(rows[2]["score"] - mixed_rows[2]["score"]) < 1e-5


def test_too_large_and_empty_input(scorer, portrait_bytes):
    limited = piqa_model.Scorer(scorer.net, scorer.info, scorer.bundle_id, max_pixels=100_000)
    rows = limited.score([portrait_bytes[0], portrait_bytes[1]])  # 1350x1350 > limit, 225x275 < limit
    assert [row["status"] for row in rows] == ["too_large", "ok"]
    assert rows[0]["score"] is None and "100000" in rows[0]["error"]
    assert limited.score([]) == []


def test_tiny_image_does_not_stop_the_batch(scorer, portrait_bytes):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (120, 100, 90)).save(buffer, "PNG")
    rows = scorer.score([buffer.getvalue(), portrait_bytes[1]])
    assert len(rows) == 2
    assert rows[1]["status"] == "ok"
    assert rows[0]["status"] != "ok" or rows[0]["num_faces"] == 0


@pytest.fixture(scope="module")
def liqe_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = piqa_model.DualBranchNet(piqa_model.preset("small-liqe"))
    info = piqa_model.BundleInfo(name="small-liqe-test", trained=True)
    return piqa_model.save_bundle(net, tmp_path_factory.mktemp("liqe") / "bundle", info)


@pytest.fixture(scope="module")
def liqe_scorer(liqe_bundle: Path) -> piqa_model.Scorer:
    with warnings.catch_warnings():
        warnings.simplefilter("error", piqa_model.UntrainedModelWarning)  # trained=True: no warning
        return piqa_model.load_bundle(liqe_bundle)


def test_liqe_bundle_rows_carry_liqe_summary(liqe_scorer, portrait_bytes):
    assert liqe_scorer.trained
    assert liqe_scorer.config == piqa_model.preset("small-liqe")
    rows = liqe_scorer.score([portrait_bytes[0], b"not an image", portrait_bytes[1]])
    assert [row["status"] for row in rows] == ["ok", "decode_error", "ok"]
    for row in (rows[0], rows[2]):
        assert math.isfinite(row["score"])
        assert 1.0 <= row["liqe_quality"] <= 5.0
        assert row["liqe_scene"] in SCENES
        assert row["liqe_distortion"] in DISTORTIONS


def test_liqe_summary_matches_the_network_aux_features(liqe_scorer, portrait_bytes):
    (row,) = liqe_scorer.score([portrait_bytes[1]])
    image = piqa_model.open_image(portrait_bytes[1])
    native = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
    summary = summarise(liqe_scorer.net.aux_features(native))[0]
    assert row["liqe_quality"] == pytest.approx(summary.quality, abs=1e-5)
    assert row["liqe_scene"] == summary.scene
    assert row["liqe_distortion"] == summary.distortion
