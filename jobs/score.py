"""`python -m jobs.score INPUT --out OUTPUT ...`: the scoring job for `ray job submit` (= `piqa score`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs.cli import Parser, add_score_arguments, cmd_score, run


def build_parser() -> Parser:
    parser = Parser(prog="python -m jobs.score", description="Score image shards into Parquet with Ray Data.")
    add_score_arguments(parser)
    parser.set_defaults(run=cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv, build_parser))


if __name__ == "__main__":
    main()
