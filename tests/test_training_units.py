"""The retraining job's pure parts: configuration, training table, batches, promotion gate, CLI errors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

import piqa_model
from jobs.cli import run
from jobs.retrain import build_parser, config_from_args
from piqa_model.bundle import read_bundle
from piqa_model.config import PRESETS
from piqa_model.errors import ConfigError
from training.config import TrainConfig
from training.data import collate, group_batches
from training.loop import fit_standardisation, network_inputs
from training.promotion import decide
from training.retrain import config_hash
from training.sources import LabelledImage
from training.table import Example, build_table, select, snapshot_id


def images(dataset: str, groups: int, per_group: int, split: str | None = None) -> list[LabelledImage]:
    rng = np.random.default_rng(len(dataset) + groups)
    return [
        LabelledImage(f"/d/{dataset}/{g}/{i}.png", float(rng.normal(50, 10)), f"g{g}", dataset, split=split)
        for g in range(groups)
        for i in range(per_group)
    ]


def test_promotion_gate_promotes_and_refuses():
    assert decide("srcc_mean", 0.7, None, 0.01).promote  # no champion yet
    assert decide("srcc_mean", 0.795, 0.8, 0.01).promote  # worse, but within the tolerance
    refused = decide("srcc_mean", 0.7, 0.8, 0.01)
    assert not refused.promote and "beyond the tolerance" in refused.reason
    assert decide("rmse_mean", 0.5, 0.6, 0.0).promote and not decide("rmse_mean", 0.7, 0.6, 0.05).promote
    assert not decide("srcc_mean", math.nan, 0.8, 0.01).promote


def test_table_splits_standardises_and_fingerprints():
    synthetic = images("synthetic", groups=20, per_group=5)
    clive = images("clive", groups=1, per_group=50)
    piq23 = images("piq23", groups=3, per_group=10, split="train") + images("piq23t", 3, 4, split="test")
    table = build_table([synthetic, clive, piq23], test_fraction=0.25, val_fraction=0.2, seed=0)

    by_split = {s: {e.group for e in select(table, s) if e.dataset == "synthetic"} for s in ("train", "val", "test")}
    assert by_split["test"] and by_split["val"] and by_split["train"]
    assert not (by_split["test"] & by_split["train"]) and not (by_split["val"] & by_split["train"])  # unseen photos
    clive_splits = Counter(e.split for e in table if e.dataset == "clive")
    assert clive_splits["test"] > 0 and clive_splits["train"] > 0  # one group: split by image
    assert all(e.split == "test" for e in table if e.dataset == "piq23t")  # the official split is kept
    assert all(e.split in ("train", "val") for e in table if e.dataset == "piq23")
    for dataset in ("synthetic", "clive"):
        targets = np.array([e.target for e in table if e.dataset == dataset and e.split == "train"])
        assert abs(targets.mean()) < 1e-9 and abs(targets.std() - 1) < 1e-9
    assert all(e.group.startswith(f"{e.dataset}/") for e in table)

    again = build_table([clive, synthetic, piq23], test_fraction=0.25, val_fraction=0.2, seed=0)
    assert snapshot_id(again) == snapshot_id(table)
    changed = [synthetic[0].__class__(**{**synthetic[0].__dict__, "label": 0.0}), *synthetic[1:]]
    assert snapshot_id(build_table([changed, clive, piq23], 0.25, 0.2, 0)) != snapshot_id(table)


def test_group_batches_pair_within_groups_and_split_evenly_over_workers():
    table = build_table([images("synthetic", groups=9, per_group=7)], test_fraction=0, val_fraction=0, seed=1)
    per_rank = [group_batches(table, batch_size=6, chunk=3, seed=0, epoch=2, rank=r, world=2) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no image twice in an epoch
    for batches in per_rank:
        for batch in batches:
            counts = Counter(table[i].group for i in batch)
            assert len(batch) >= 6 and min(counts.values()) >= 2  # every image has a same-group partner
    other_epoch = group_batches(table, batch_size=6, chunk=3, seed=0, epoch=3, rank=0, world=2)
    assert other_epoch != per_rank[0]


def test_dataset_weights_repeat_a_small_set_and_thin_a_large_one():
    small = build_table([images("clive", groups=1, per_group=30)], test_fraction=0, val_fraction=0, seed=1)
    large = build_table([images("synthetic", groups=40, per_group=6)], test_fraction=0, val_fraction=0, seed=1)
    table = sorted(small + large, key=lambda e: e.uri)

    def epoch_counts(weights):
        batches = group_batches(table, batch_size=6, chunk=3, seed=0, epoch=0, rank=0, world=1, weights=weights)
        return Counter(table[i].dataset for batch in batches for i in batch)

    plain = epoch_counts(None)
    assert plain == epoch_counts({"clive": 1.0, "synthetic": 1.0}) == {"clive": 30, "synthetic": 240}
    weighted = epoch_counts({"clive": 2.0, "synthetic": 0.5})
    assert weighted["clive"] == 60  # two whole passes
    assert 80 <= weighted["synthetic"] <= 160  # about half of the 80 chunks of 3
    assert "synthetic" not in epoch_counts({"synthetic": 0})


def test_config_yaml_round_trip_and_errors(tmp_path):
    config = TrainConfig.from_dict({"data": {"manifests": ["m.csv"]}, "optim": {"epochs": 3}})
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert TrainConfig.from_yaml(path) == config
    with pytest.raises(ConfigError, match="no training data"):
        TrainConfig.from_dict({})
    with pytest.raises(ConfigError, match="passes per epoch >= 0"):
        TrainConfig.from_dict({"data": {"manifests": ["m.csv"], "weights": {"clive": -1}}})
    with pytest.raises(ConfigError, match="not a valid training configuration"):
        TrainConfig.from_dict({"data": {"manifests": ["m.csv"]}, "optim": {"epoch": 3}})

    args = build_parser().parse_args(
        ["--config", str(path), "--curated", "s3://b/m/", "--num-workers", "4", "--use-gpu", "--tracking-uri", "x"]
    )
    overridden = config_from_args(args)
    assert overridden.data.curated == ("s3://b/m/",) and overridden.num_workers == 4 and overridden.use_gpu
    assert overridden.tracking.uri == "x" and overridden.optim.epochs == 3


def test_config_base_chain_changes_only_what_a_stage_names(tmp_path):
    (tmp_path / "stage1.yaml").write_text(
        "data: {manifests: [a.csv, b.csv], test_fraction: 0.3}\noptim: {epochs: 10, lr: 0.001}\nseed: 7\n"
    )
    (tmp_path / "stage2.yaml").write_text("base: stage1.yaml\ninit: models:/m@champion\noptim: {lr: 0.0005}\n")
    nested = tmp_path / "more"
    nested.mkdir()
    (nested / "stage3.yaml").write_text("base: ../stage2.yaml\ndata: {manifests: [c.csv]}\n")
    config = TrainConfig.from_yaml(nested / "stage3.yaml")
    assert config.data.manifests == ("c.csv",) and config.data.test_fraction == 0.3
    assert (config.optim.epochs, config.optim.lr, config.seed, config.init) == (10, 0.0005, 7, "models:/m@champion")
    (tmp_path / "loop.yaml").write_text("base: stage2.yaml\n")
    (tmp_path / "stage1.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        TrainConfig.from_yaml(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        TrainConfig.from_yaml(tmp_path / "orphan.yaml")


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert run(["train", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert run(["train"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "data: {manifests: ["
        + str(tmp_path / "nothing.csv")
        + "]}\ntracking: {uri: 'sqlite:///"
        + str(tmp_path / "m.db")
        + "'}\n"
    )
    assert run(["train", "--config", str(bad)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("piqa: error")]
    assert len(lines) == 3 and "missing.yaml does not exist" in lines[0] and "nothing.csv" in lines[2]


def test_initial_bundle_from_the_jobs_own_registry(tmp_path, monkeypatch):
    import piqa_model
    from piqa_model.bundle import bundle_files
    from training.retrain import initial_bundle
    from training.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")  # must not be used
    bundle = piqa_model.save_bundle(
        piqa_model.DualBranchNet(piqa_model.preset("small-224")),
        tmp_path / "bundle",
        piqa_model.BundleInfo(name="champ", trained=True),
    )
    tracker = Tracker(uri, "e", "portrait-quality")
    run_id = tracker.start_run("r", {})
    tracker.log_artifacts(run_id, bundle, "bundle")
    tracker.set_alias("champion", tracker.register(run_id, {}))

    config = TrainConfig.from_dict(
        {"init": "models:/portrait-quality@champion", "data": {"manifests": ["m.csv"]}, "tracking": {"uri": uri}}
    )
    files, source = initial_bundle(config)
    assert files == bundle_files(bundle) and source == "models:/portrait-quality@champion (version 1)"


def test_head_input_standardisation_is_fitted_on_training_views_and_travels_in_the_bundle(tmp_path):
    config = piqa_model.preset("lite0-352").replace(standardise_features=True, resize=64, crop=64)
    net = piqa_model.DualBranchNet(config)
    rng = np.random.default_rng(0)
    views = [torch.from_numpy(rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)) for _ in range(40)]
    example = Example("/d/x.png", 1.0, 0.0, None, "d/g", "d", "train")
    dataset = [(view, view.flip(-1), None, example) for view in views]
    inputs = network_inputs(net, collate(dataset), torch.device("cpu"))
    with torch.no_grad():
        before = net.eval().forward_crops(*inputs)
        fit_standardisation(net, dataset, seed=0, device=torch.device("cpu"))
        standardised = net.standardise(net.head_inputs(*inputs))
        after = net.forward_crops(*inputs)
    # The fit runs in batches of 16, this check in one batch of 40: float rounding of a feature differs between the
    # two by about 1e-6 of its size, so only features whose spread is not tiny beside their size are checked
    # (a random network has dead, near-constant units).
    shift, scale = net.standardise.shift, net.standardise.scale
    varying = scale > 1e-2 * shift.abs().clamp_min(1.0)
    assert varying.float().mean() > 0.5
    ones = torch.ones(int(varying.sum()))
    torch.testing.assert_close(standardised.mean(0)[varying], torch.zeros_like(ones), atol=1e-3, rtol=0)
    torch.testing.assert_close(standardised.std(0)[varying], ones, atol=1e-3, rtol=0)
    assert not torch.allclose(before, after)
    path = piqa_model.save_bundle(net, tmp_path / "bundle", piqa_model.BundleInfo("s", False))
    loaded = read_bundle(path)[0]
    torch.testing.assert_close(loaded.standardise.shift, net.standardise.shift)
    assert piqa_model.DualBranchNet(piqa_model.preset("small")).standardise is None  # the paper's head reads raw


def test_a_fresh_start_is_a_new_training_when_its_preset_changes(monkeypatch):
    config = TrainConfig.from_dict({"preset": "small", "data": {"manifests": ["m.csv"]}})
    from_bundle = config.replace(init="bundles/champion")
    before = config_hash(config), config_hash(from_bundle)
    monkeypatch.setitem(PRESETS, "small", PRESETS["small"].replace(head_hidden=64))
    assert config_hash(config) != before[0]
    assert config_hash(from_bundle) == before[1]  # a bundle brings its own network
