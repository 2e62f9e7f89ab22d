"""`python -m jobs.score INPUT --out OUTPUT ...`: the scoring job for `ray job submit` (= `piqa score`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs.cli import Parser, add_score_arguments, cmd_score, job_parser, run


def build_parser() -> Parser:
    return job_parser("score", "Score image shards into Parquet with Ray Data.", add_score_arguments, cmd_score)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv, build_parser))


if __name__ == "__main__":
    main()
