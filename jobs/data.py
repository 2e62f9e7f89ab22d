"""`piqa data ...` (= `python -m jobs.data ...`): make labelled training data.

`degrade`: RankIQA-style synthetic degradations of clean portraits, as a manifest of ranked versions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobs.cli import Parser, run


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_degrade_arguments(parser: argparse.ArgumentParser) -> None:
    from training.degrade import KINDS

    parser.add_argument(
        "portraits", help="a folder/prefix of clean portraits (jpg/jpeg/png, recursive; local or s3://)"
    )
    parser.add_argument("--out", required=True, help="output folder/prefix: images/, manifest.parquet, degrade.json")
    parser.add_argument("--levels", type=int, default=5, help="severity levels per kind (1-10)")
    parser.add_argument("--kinds", type=_kinds, default=KINDS, help=f"comma-separated, of: {','.join(KINDS)}")
    parser.add_argument("--max-size", type=int, default=512, help="downscale sources to this longest side (0: keep)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (noise, colour-cast hue)")
    parser.add_argument("--limit", type=int, help="use only the first N sources (sorted by path)")
    parser.add_argument(
        "--label-std", type=float, default=0.5, help="label spread the pairwise loss assumes, in levels"
    )
    parser.add_argument("--workers", type=int, help="threads (default: one per CPU)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")


def cmd_degrade(args: argparse.Namespace) -> int:
    from training.degrade import DegradeConfig, degrade_folder

    config = DegradeConfig(
        input=args.portraits,
        output=args.out,
        levels=args.levels,
        kinds=args.kinds,
        max_size=args.max_size,
        seed=args.seed,
        limit=args.limit,
        label_std=args.label_std,
        s3_endpoint=args.s3_endpoint,
    )
    summary = degrade_folder(config, workers=args.workers)
    for uri, reason in summary.skipped:
        print(f"warning: skipped unreadable {uri}: {reason}", file=sys.stderr)
    print(summary.line())
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the `data` subcommands on `commands` (the subparsers of `piqa data`)."""
    degrade = commands.add_parser("degrade", help="make a ranked manifest of synthetically degraded portraits")
    add_degrade_arguments(degrade)
    degrade.set_defaults(run=cmd_degrade)


def build_parser() -> Parser:
    parser = Parser(prog="python -m jobs.data", description="Make labelled training data.")
    add_commands(parser.add_subparsers(dest="data_command", required=True, parser_class=Parser))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv, build_parser))


if __name__ == "__main__":
    main()
