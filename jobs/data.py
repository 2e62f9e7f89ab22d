"""`piqa data ...` (= `python -m jobs.data ...`): make labelled training data.

`degrade`: RankIQA-style synthetic degradations of clean portraits, as a manifest of ranked versions.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import Parser, add_s3_endpoint_argument, config_from_args, main, set_config_defaults


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_degrade_arguments(parser: argparse.ArgumentParser) -> None:
    from training.degrade import KINDS, DegradeConfig

    parser.add_argument(
        "input",
        metavar="portraits",
        help="a folder/prefix of clean portraits (jpg/jpeg/png, recursive; local or s3://)",
    )
    parser.add_argument(
        "--out",
        dest="output",
        metavar="OUT",
        required=True,
        help="output folder/prefix: images/, manifest.parquet, degrade.json",
    )
    parser.add_argument("--levels", type=int, help="severity levels per kind (1-10)")
    parser.add_argument("--kinds", type=_kinds, help=f"comma-separated, of: {','.join(KINDS)} (default: all)")
    parser.add_argument("--max-size", type=int, help="downscale sources to this longest side (0: keep)")
    parser.add_argument("--seed", type=int, help="random seed (noise, colour-cast hue)")
    parser.add_argument("--limit", type=int, help="use only the first N sources (sorted by path)")
    parser.add_argument("--label-std", type=float, help="label spread the pairwise loss assumes, in levels")
    add_s3_endpoint_argument(parser)
    set_config_defaults(parser, DegradeConfig)
    parser.add_argument("--workers", type=int, help="threads (default: one per CPU)")


def cmd_degrade(args: argparse.Namespace) -> int:
    from training.degrade import DegradeConfig, degrade_folder

    summary = degrade_folder(config_from_args(DegradeConfig, args), workers=args.workers)
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


if __name__ == "__main__":
    main(None, build_parser)
