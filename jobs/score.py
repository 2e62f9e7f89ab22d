"""`python -m jobs.score INPUT --out OUTPUT ...`: the scoring job for `ray job submit` (= `piqa score`).

The flags are `ScoreConfig`'s fields, with its defaults and choices.
"""

from __future__ import annotations

import argparse
from typing import get_args

from jobs.common import (
    Parser,
    add_source_arguments,
    add_verbose_argument,
    banner_if_untrained,
    config_from_args,
    job_parser,
    main,
    set_config_defaults,
)
from pipelines.config import Runner, ScoreConfig
from piqa_model.options import CropMode, DecodeMode, Precision


def _actors(text: str) -> tuple[int, int]:
    try:
        low, _, high = text.partition(",")
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or N, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a .tar/.parquet file, or a folder/prefix of them or of images (local or s3://)")
    parser.add_argument(
        "--out", dest="output", metavar="OUT", required=True, help="output folder/prefix for the Parquet scores"
    )
    parser.add_argument("--bundle", help="model bundle directory or URI (default: the shipped default bundle)")
    add_source_arguments(parser)
    parser.add_argument("--shard-size", type=int, help="images per shard for a folder of images")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    parser.add_argument("--batch-size", type=int, help="images per model forward (default: 32 on GPU, 1 on CPU)")
    parser.add_argument(
        "--prepare-actors",
        type=_actors,
        metavar="MIN,MAX",
        help="GPU clusters: CPU actors feeding the GPUs (default: every CPU left)",
    )
    parser.add_argument(
        "--score-actors", type=_actors, metavar="MIN,MAX", help="model actors (default: one per GPU, else one per core)"
    )
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs per scoring actor (default: 1 if any, else CPU)")
    parser.add_argument(
        "--cpus-per-actor",
        type=float,
        help="CPUs (and torch threads, rounded up) per actor (default: 1 or just under)",
    )
    parser.add_argument("--detect-size", type=int, help="longest side of the face-detection preview")
    parser.add_argument("--min-face-size", type=int, help="smallest face sought, in preview pixels")
    parser.add_argument(
        "--crop-mode", choices=get_args(CropMode), help="crops per branch (default: the bundle's own; dn-piqa: five)"
    )
    parser.add_argument("--precision", choices=get_args(Precision), help="bf16: autocast (GPU, AVX512-BF16)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model in each scoring actor: faster on long GPU jobs, a compile per batch shape",
    )
    parser.add_argument("--max-pixels", type=int, help="larger images become too_large rows")
    parser.add_argument("--max-image-bytes", type=int, help="larger encoded images become read_error rows, unread")
    parser.add_argument(
        "--decode",
        choices=get_args(DecodeMode),
        help="draft: decode JPEGs only as finely as detection and the model need; full: every pixel",
    )
    parser.add_argument(
        "--runner",
        choices=get_args(Runner),
        help="ray: a Ray Data job; in-process: the same stages in this process, for a few photos; auto: in-process "
        "for a folder of a few images when RAY_ADDRESS is unset",
    )
    add_verbose_argument(parser)
    set_config_defaults(parser, ScoreConfig)


def score_config_from_args(args: argparse.Namespace) -> ScoreConfig:
    return config_from_args(ScoreConfig, args)


def cmd(args: argparse.Namespace) -> int:
    from pipelines.score import run_scoring

    summary = run_scoring(score_config_from_args(args))
    banner_if_untrained(summary.model_trained, summary.model)
    print(summary.line())
    return 0


def build_parser() -> Parser:
    return job_parser("score", "Score image shards into Parquet with Ray Data.", add_arguments, cmd)


if __name__ == "__main__":
    main(None, build_parser)
