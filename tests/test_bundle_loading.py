"""Bundles as a job loads them: the driver checks a bundle from its config alone (`inspect_bundle`), each node
loads its own copy (`local_bundle`), and every load checks the weights against the id in config.json."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import s3fs
import torch
from safetensors.torch import load_file, save_file

import piqa_model
from piqa_model.bundle import (
    CONFIG_FILE,
    SHIPPED_BUNDLE,
    WEIGHTS_FILE,
    bundle_files,
    bundle_id,
    inspect_bundle,
    local_bundle,
    read_bundle,
    read_bundle_config,
)
from piqa_model.errors import WeightsError


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, str]:
    """A small bundle and its id, as `read_bundle` computes it."""
    torch.manual_seed(0)
    net = piqa_model.DualBranchNet(piqa_model.preset("small"))
    path = piqa_model.save_bundle(net, tmp_path_factory.mktemp("saved") / "bundle", piqa_model.BundleInfo("s", False))
    return path, read_bundle(path)[2]


def copy_of(saved: tuple[Path, str], target: Path) -> Path:
    target.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (target / name).write_bytes((saved[0] / name).read_bytes())
    return target


def test_the_starter_records_the_id_of_its_weights():
    files = bundle_files(SHIPPED_BUNDLE)
    recorded = json.loads(files[CONFIG_FILE])["id"]
    assert recorded == bundle_id(files, read_bundle_config(files)[1]) == inspect_bundle(SHIPPED_BUNDLE)[2]


def test_a_bundle_stored_in_half_precision_loads_into_full_precision_and_scores_alike(saved, tmp_path):
    net, info, _ = read_bundle(saved[0])
    half = piqa_model.save_bundle(net, tmp_path / "half", info, weights_dtype=torch.float16)
    stored = load_file(half / WEIGHTS_FILE)
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert (half / WEIGHTS_FILE).stat().st_size < 0.6 * (saved[0] / WEIGHTS_FILE).stat().st_size
    loaded, _, _ = read_bundle(half)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    crops = torch.randint(0, 256, (2, 5, 3, 384, 384), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score_images(crops, crops), net.score_images(crops, crops), atol=2e-3, rtol=0)


def test_inspect_reads_the_config_and_id_without_loading_the_weights(saved, tmp_path):
    path = copy_of(saved, tmp_path / "bundle")
    weights = bytearray((path / WEIGHTS_FILE).read_bytes())
    weights[-1000:] = bytes(1000)  # tensor bytes damaged, header and size intact
    (path / WEIGHTS_FILE).write_bytes(weights)

    config, info, found = inspect_bundle(path)
    assert (config, info.name, found) == (piqa_model.preset("small"), "s", saved[1])
    with pytest.raises(WeightsError, match="do not match the id recorded in config.json"):
        read_bundle(path)


def test_weights_changed_after_saving_are_refused_at_load(saved, tmp_path):
    path = copy_of(saved, tmp_path / "bundle")
    tensors = load_file(path / WEIGHTS_FILE)
    tensors["quality.3.bias"] += 1.0  # other weights that load fine: only the recorded id tells them apart
    save_file(tensors, path / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="do not match the id recorded in config.json"):
        read_bundle(path)


def test_a_bundle_saved_before_ids_were_recorded_has_its_weights_hashed(saved, tmp_path):
    path = copy_of(saved, tmp_path / "bundle")
    document = json.loads((path / CONFIG_FILE).read_text())
    del document["id"]
    (path / CONFIG_FILE).write_text(json.dumps(document))
    assert inspect_bundle(path)[2] == read_bundle(path)[2] == saved[1]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda weights: weights.unlink(), "has no model.safetensors", id="missing"),
        pytest.param(lambda weights: weights.write_bytes(b"not safetensors"), "not a safetensors file", id="garbage"),
        pytest.param(
            lambda weights: weights.write_bytes(weights.read_bytes()[:-10]), "truncated or damaged", id="truncated"
        ),
    ],
)
def test_inspect_refuses_unusable_weights(saved, tmp_path, damage, message):
    path = copy_of(saved, tmp_path / "bundle")
    damage(path / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match=message):
        inspect_bundle(path)


def test_inspect_refuses_a_liqe_bundle_without_its_liqe_weights(tmp_path):
    net = piqa_model.DualBranchNet(piqa_model.preset("small-liqe"))
    path = piqa_model.save_bundle(net, tmp_path / "bundle", piqa_model.BundleInfo("l", False))
    assert inspect_bundle(path)[0].aux == "liqe"
    tensors = load_file(path / WEIGHTS_FILE)
    save_file({name: t for name, t in tensors.items() if not name.startswith("liqe.")}, path / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="holds no LIQE weights"):
        inspect_bundle(path)


def test_a_local_bundle_is_used_in_place_and_must_be_on_the_node(saved, tmp_path):
    assert local_bundle(str(saved[0]), saved[1]) == saved[0]
    with pytest.raises(WeightsError, match="s3:// or models:/"):
        local_bundle(str(tmp_path / "elsewhere"), saved[1])


def test_a_bundle_changed_since_the_driver_checked_it_is_refused(saved):
    with pytest.raises(WeightsError, match="changed after the job checked it"):
        read_bundle(saved[0], expected_id="s-000000000000")


def test_an_s3_bundle_is_copied_once_per_node(saved, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("PIQA_CACHE_DIR", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("bundles")
    fs.put(str(saved[0]), "bundles/s", recursive=True)
    uri, expected = "s3://bundles/s", saved[1]
    assert inspect_bundle(uri)[2] == expected

    copies: list[Path] = []
    actors = [threading.Thread(target=lambda: copies.append(local_bundle(uri, expected))) for _ in range(3)]
    for actor in actors:
        actor.start()
    for actor in actors:
        actor.join()
    cache = tmp_path / "cache" / "bundles"
    assert copies == [cache / expected] * 3
    assert sorted(p.name for p in cache.iterdir()) == [f".{expected}.lock", expected]  # no staging left behind
    copied = (cache / expected / WEIGHTS_FILE).stat().st_mtime_ns

    fs.rm("bundles/s", recursive=True)  # a second load reads the node's copy, not the bucket
    assert read_bundle(local_bundle(uri, expected), expected)[2] == expected
    assert (cache / expected / WEIGHTS_FILE).stat().st_mtime_ns == copied


def test_an_s3_bundle_that_changed_is_not_cached(saved, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("PIQA_CACHE_DIR", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("changed")
    fs.put(str(saved[0]), "changed/s", recursive=True)
    with pytest.raises(WeightsError, match="changed after the job checked it"):
        local_bundle("s3://changed/s", "s-000000000000")
    assert [p.name for p in (tmp_path / "cache" / "bundles").iterdir()] == [".s-000000000000.lock"]


def test_an_s3_bundle_with_tampered_weights_is_refused_and_never_cached(saved, s3_endpoint, tmp_path, monkeypatch):
    """config.json intact (the driver's check reads only it), one byte of the weights changed in the bucket."""
    monkeypatch.setenv("PIQA_CACHE_DIR", str(tmp_path / "cache"))
    weights = bytearray((saved[0] / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 0xFF  # inside the last tensor's data: the header still parses
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("tampered")
    fs.put(str(saved[0]), "tampered/s", recursive=True)
    fs.pipe_file("tampered/s/model.safetensors", bytes(weights))
    uri, expected = "s3://tampered/s", saved[1]
    assert inspect_bundle(uri)[2] == expected
    for load in (lambda: local_bundle(uri, expected), lambda: read_bundle(uri, expected)):
        with pytest.raises(WeightsError, match="do not match the id recorded in config.json") as refused:
            load()
        assert "\n" not in str(refused.value)
    assert [p.name for p in (tmp_path / "cache" / "bundles").iterdir()] == [f".{expected}.lock"]
