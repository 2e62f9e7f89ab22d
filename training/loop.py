"""The per-worker training loop that Ray Train's `TorchTrainer` runs on every worker (DDP).

Each epoch: fidelity loss over every within-group pair of each batch, then predictions on the
validation and test splits (sharded over the workers, gathered on rank 0), per-group metrics, and a
checkpoint holding everything needed to go on: weights, optimiser, schedule, history and the best
model so far (selected on validation only). A restarted worker or a resubmitted job starts from the
latest checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.storage import Storage
from piqa_model import DualBranchNet
from piqa_model.bundle import read_bundle_files
from piqa_model.errors import ConfigError
from piqa_model.losses import fidelity_loss, sample_pairs
from training.config import TrainConfig
from training.data import Batch, ExampleDataset, collate, group_batches
from training.evaluate import flat_metrics, group_reports, predict_examples, score_array
from training.features import ImageFeatures
from training.table import Example, select

STATE_FILE = "state.pt"
STANDARDISE_IMAGES = 256
SELECTION_METRIC = "val/srcc_mean"
# What Ray Train receives (and logs) per epoch; every metric goes to MLflow and into the checkpoint's history.
HEADLINE = ("epoch", "train/loss", "val/srcc_mean", "test/srcc_mean", "epoch_seconds")


@dataclass(frozen=True)
class LoopInputs:
    """Everything a worker needs, shipped once through Ray's object store."""

    config: TrainConfig
    init_files: dict[str, bytes]  # the starting network as bundle bytes
    table: list[Example]
    features: dict[str, ImageFeatures]
    tracking_uri: str | None = None  # rank 0 logs each epoch's metrics to this MLflow run as it goes
    mlflow_run_id: str | None = None


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    inputs: LoopInputs = loop_config["inputs"]
    config = inputs.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    torch.manual_seed(config.seed)

    net = read_bundle_files(inputs.init_files)[0]
    if net.liqe is not None:  # a frozen feature extractor; its outputs come from the cache
        net.liqe.requires_grad_(False)
    freeze_parameters(net, config.optim.freeze)
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, config.optim.lr_step_epochs, config.optim.lr_gamma)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "resumed_at": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        state["resumed_at"].append(state["epoch"])
    # DDP wraps `net` (same parameters): train through `model`, evaluate and save through `net`.
    model = ray.train.torch.prepare_model(net, parallel_strategy_kwargs={"find_unused_parameters": False})
    device = ray.train.torch.get_device()
    precision = config.effective_precision

    storage = Storage.from_environment(config.s3_endpoint)
    splits = {name: select(inputs.table, name) for name in ("train", "val", "test")}
    datasets = {
        name: ExampleDataset(
            examples,
            inputs.features,
            net.config,
            storage,
            train=name == "train",
            flip=config.optim.flip,
            seed=config.seed,
        )
        for name, examples in splits.items()
    }
    tracker = _EpochLogger(inputs.tracking_uri, inputs.mlflow_run_id) if rank == 0 else None
    if net.standardise is not None and checkpoint is None and config.starts_fresh:
        fit_standardisation(net, datasets["train"], config.seed, device)

    for epoch in range(state["epoch"], config.optim.epochs):
        started = time.time()
        datasets["train"].epoch = epoch
        batches = group_batches(
            splits["train"],
            config.optim.batch_size,
            config.optim.group_chunk,
            config.seed,
            epoch,
            rank,
            world,
            config.data.weights,
        )
        if not batches:
            raise ConfigError(
                f"too few training images for {world} workers: {len(splits['train'])} images, batch size "
                f"{config.optim.batch_size}; add data, lower batch_size or use fewer workers"
            )
        model.train()
        total, steps = 0.0, 0
        for indices in batches:
            batch = collate([datasets["train"][i] for i in indices])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                pred = model(*network_inputs(net, batch, device)).float().squeeze(1)
            pairs = sample_pairs(batch.groups).to(device)
            target = batch.target.to(device)
            std = None if batch.target_std is None else batch.target_std.to(device)
            loss = fidelity_loss(
                pred[pairs[:, 0]],
                pred[pairs[:, 1]],
                target[pairs[:, 0]],
                target[pairs[:, 1]],
                None if std is None else std[pairs[:, 0]],
                None if std is None else std[pairs[:, 1]],
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        schedule.step()

        metrics: dict[str, float] = {
            "epoch": epoch,
            "train/loss": _mean_over_workers(total / steps, device, world),
            "lr": optimizer.param_groups[0]["lr"],
        }
        for name in ("val", "test"):
            if splits[name]:
                metrics.update(_evaluate(net, datasets[name], splits[name], name, precision, rank, world))
        metrics["epoch_seconds"] = time.time() - started
        state["history"].append(metrics)
        selection = metrics.get(SELECTION_METRIC, -metrics["train/loss"])
        if state["best"] is None or selection > state["best"]["selection"]:
            state["best"] = {"epoch": epoch, "selection": selection, "model": _cpu_copy(net.state_dict())}
        state.update(
            epoch=epoch + 1,
            model=_cpu_copy(net.state_dict()),
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
        )
        if tracker is not None:
            tracker.log(metrics, step=epoch)
            print(_progress_line(metrics, config.optim.epochs), flush=True)
        _report({k: v for k, v in metrics.items() if k in HEADLINE}, state if rank == 0 else None)


def network_inputs(net: DualBranchNet, batch: Batch, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A batch's (overall, face, aux) as the network's forward reads them: normalised crops, on `device`."""
    overall = net.normalise(batch.overall.flatten(0, 1).to(device), "overall")
    face = net.normalise(batch.face.flatten(0, 1).to(device), "face")
    return overall, face, None if batch.aux is None else batch.aux.to(device)


def fit_standardisation(net: DualBranchNet, dataset: ExampleDataset, seed: int, device: torch.device) -> None:
    """Fit the head's input standardisation on up to STANDARDISE_IMAGES training views (a seeded draw: every
    worker fits the same statistics)."""
    order = np.random.default_rng(seed).permutation(len(dataset))[:STANDARDISE_IMAGES]
    net.eval()
    with torch.no_grad():
        features = [
            net.head_inputs(*network_inputs(net, collate([dataset[int(i)] for i in chunk]), device))
            for chunk in np.array_split(order, -(-len(order) // 16))
        ]
    net.standardise.fit(torch.cat(features).float())


def freeze_parameters(net: DualBranchNet, prefixes: tuple[str, ...]) -> int:
    """Stop training the parameters whose names start with one of `prefixes`; how many were frozen."""
    frozen = 0
    for name, parameter in net.named_parameters():
        if prefixes and name.startswith(prefixes):
            parameter.requires_grad_(False)
            frozen += 1
    if prefixes and not frozen:
        raise ConfigError(f"optim.freeze {list(prefixes)} names no parameter of the network")
    return frozen


def _progress_line(metrics: dict[str, float], epochs: int) -> str:
    shown = [f"loss {metrics['train/loss']:.4f}"]
    shown += [
        f"{split} SRCC {metrics[key]:.4f}" for split in ("val", "test") if (key := f"{split}/srcc_mean") in metrics
    ]
    return f"epoch {int(metrics['epoch']) + 1}/{epochs}: {', '.join(shown)} ({metrics['epoch_seconds']:.0f} s)"


def _evaluate(
    net: DualBranchNet,
    dataset: ExampleDataset,
    examples: list[Example],
    prefix: str,
    precision: str,
    rank: int,
    world: int,
) -> dict[str, float]:
    scores = predict_examples(net, dataset, batch_size=8, precision=precision, rank=rank, world=world)
    if world > 1:
        gathered: list[dict[int, float] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, scores)
        scores = {k: v for part in gathered for k, v in (part or {}).items()}
    return flat_metrics(group_reports(examples, score_array(scores, len(examples)).tolist()), prefix)


def _mean_over_workers(value: float, device: torch.device, world: int) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item()) / world


def _cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
    """Every worker reports; only rank 0 passes the checkpoint (it holds the whole state)."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, os.path.join(directory, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


class _EpochLogger:
    """Rank 0's live MLflow logging of each epoch (the run was created by the driver)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.client = None
        if tracking_uri and run_id:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items() if key != "epoch"]
        self.client.log_batch(self.run_id, metrics=entries)


def load_state(directory: str) -> dict[str, Any]:
    """The state a finished (or interrupted) run's checkpoint holds."""
    return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
