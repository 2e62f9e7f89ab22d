"""`python -m jobs.retrain --config FILE.yaml [overrides]` (= `piqa train`): retrain, track, register, promote.

Safe on a schedule: with `--curated PREFIX` it trains on every manifest under the prefix, and a second
run on unchanged data does nothing (see training/retrain.py).
"""

from __future__ import annotations

import argparse

from jobs.common import Parser, add_s3_endpoint_argument, add_verbose_argument, job_parser, main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training configuration (YAML; see configs/)")
    parser.add_argument(
        "--curated", nargs="+", metavar="PREFIX", help="train also on every manifest under these folders/prefixes"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, sqlite:///mlflow.db)")
    parser.add_argument("--storage-path", help="where Ray Train writes checkpoints (local or s3://)")
    add_s3_endpoint_argument(parser)
    parser.add_argument("--num-workers", type=int, help="training workers (DDP)")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    parser.add_argument("--experiment", help="MLflow experiment name")
    parser.add_argument("--model-name", help="registered model name (default: portrait-quality)")
    add_verbose_argument(parser)


def config_from_args(args: argparse.Namespace):
    from dataclasses import replace

    from training.config import TrainConfig

    config = TrainConfig.from_yaml(args.config)
    tracking = {
        name: value
        for name, value in (
            ("uri", args.tracking_uri),
            ("experiment", args.experiment),
            ("model_name", args.model_name),
        )
        if value is not None
    }
    overrides = {
        name: value
        for name, value in (
            ("storage_path", args.storage_path),
            ("s3_endpoint", args.s3_endpoint),
            ("num_workers", args.num_workers),
            ("use_gpu", args.use_gpu),
        )
        if value is not None
    }
    if args.curated:
        overrides["data"] = replace(config.data, curated=(*config.data.curated, *args.curated))
    return config.replace(tracking=replace(config.tracking, **tracking), **overrides)


def cmd(args: argparse.Namespace) -> int:
    from training.retrain import run_retraining

    result = run_retraining(config_from_args(args))
    print(result.line())
    return 0


def build_parser() -> Parser:
    return job_parser(
        "retrain", "Retrain the quality model with Ray Train; track and promote in MLflow.", add_arguments, cmd
    )


if __name__ == "__main__":
    main(None, build_parser)
