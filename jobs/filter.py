"""`python -m jobs.filter SCORES --out OUT [rules]` (= `piqa filter`): keep the portraits that pass the rules.

As a Ray job it reads the score files with Ray Data tasks (`--ray` is on); `piqa filter` reads them in
this process unless `--ray` is given. Resharding (`--reshard-to`) always runs on Ray Data.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from jobs.common import (
    Parser,
    add_source_arguments,
    add_verbose_argument,
    config_from_args,
    job_parser,
    main,
    source_format_from_args,
)
from piqa_model.errors import STATUSES

if TYPE_CHECKING:
    from pipelines.reshard import ReshardConfig


def _statuses(text: str) -> tuple[str, ...]:
    statuses = tuple(part.strip() for part in text.split(",") if part.strip())
    if not statuses:
        raise argparse.ArgumentTypeError("expected one or more statuses, e.g. ok or ok,too_large")
    return statuses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", help="the output folder/prefix of `piqa score` (local or s3://)")
    parser.add_argument("--out", required=True, help="folder/prefix for kept.parquet, summary.json, ...")
    add_verbose_argument(parser)
    rules = parser.add_argument_group(
        "rules (a row is kept when it passes all of them; they run in this order, and all but --status are off "
        "unless given)"
    )
    rules.add_argument(
        "--status",
        dest="statuses",
        type=_statuses,
        default="ok",
        metavar="S[,S...]",
        help=f"statuses to keep, comma-separated, from {', '.join(STATUSES)} (default: %(default)s)",
    )
    rules.add_argument("--require-face", action="store_true", help="keep only images with a detected face")
    rules.add_argument(
        "--min-face-prob",
        type=float,
        metavar="P",
        help="keep images whose face the detector (MTCNN) is at least P sure of: portrait faces score 0.99-1, "
        "false detections in photos without people mostly 0.7-0.98; 0.98 drops most of those (README, Curating)",
    )
    rules.add_argument("--min-score", type=float, metavar="X", help="keep scores >= X")
    rules.add_argument(
        "--bottom-fraction",
        type=float,
        metavar="F",
        help="drop the worst round(F*n) of the n rows left (per --per group)",
    )
    rules.add_argument(
        "--top-fraction", type=float, metavar="F", help="keep the best round(F*n) of the n rows left (per --per group)"
    )
    rules.add_argument(
        "--per",
        metavar="COLUMN",
        help="count the fractions within each value of COLUMN (a score column, or one from --metadata such as "
        "photographer) and break the summary down by it; shard suits tar/Parquet shards that each hold one "
        "source, not folders (default: none: the fractions count all rows, the summary breaks down by shard)",
    )
    rules.add_argument("--metadata", metavar="PARQUET", help="Parquet file/folder holding the --per column")
    rules.add_argument("--metadata-key", default="key", help="the key column of --metadata (default: %(default)s)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--emit-dropped", action="store_true", help="also write dropped.parquet")
    outputs.add_argument("--report", action="store_true", help="also write report.html (kept vs dropped)")
    outputs.add_argument("--reshard-to", metavar="DIR", help="write the kept images into WebDataset tars here")
    outputs.add_argument(
        "--shard-size", type=int, default=1000, help="samples per resharded tar (default: %(default)s)"
    )
    parser.add_argument(
        "--block-rows",
        type=int,
        metavar="N",
        help="the most score rows one task holds, and the rows of one manifest part (default: the job's, 250000)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="read the score files with Ray Data tasks (always on for python -m jobs.filter)",
    )
    add_source_arguments(parser)


def cmd(args: argparse.Namespace) -> int:
    from pipelines.curate import FilterJobConfig, run_filter
    from pipelines.filtering import FilterConfig

    rules = config_from_args(FilterConfig, args)
    config = FilterJobConfig(
        scores=args.scores,
        output=args.out,
        rules=rules,
        metadata=args.metadata,
        metadata_key=args.metadata_key,
        emit_dropped=args.emit_dropped,
        reshard=_reshard_config(args),
        report=args.report,
        source_format=source_format_from_args(args),
        use_ray=args.ray,
        **({"block_rows": args.block_rows} if args.block_rows else {}),
        s3_endpoint=args.s3_endpoint,
    )
    print("\n".join(run_filter(config).lines()))
    return 0


def _reshard_config(args: argparse.Namespace) -> ReshardConfig | None:
    if not args.reshard_to:
        return None
    from pipelines.reshard import ReshardConfig  # imports Ray: only for a run that reshards

    return ReshardConfig(args.reshard_to, args.shard_size)


def build_parser() -> Parser:
    return job_parser("filter", "Filter a score set; reshard and report the result.", add_arguments, cmd, ray=True)


if __name__ == "__main__":
    main(None, build_parser)
