"""`python -m jobs.report SCORES --out report.html` (= `piqa report`): an HTML page about a score set."""

from __future__ import annotations

import argparse

from jobs.common import Parser, add_source_arguments, job_parser, main, source_format_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", help="the output folder/prefix of `piqa score` (local or s3://)")
    parser.add_argument("--out", required=True, help="the HTML file to write (local or s3://)")
    parser.add_argument(
        "--group",
        metavar="COLUMN",
        help="a score column to tabulate first, e.g. liqe_scene (num_faces and shard always are)",
    )
    parser.add_argument("--title", default="Portrait quality report", help="the page's title (default: %(default)s)")
    add_source_arguments(parser)


def cmd(args: argparse.Namespace) -> int:
    from pipelines.report import ReportConfig, report_score_set
    from pipelines.storage import Storage

    config = ReportConfig(title=args.title, group=args.group, source_format=source_format_from_args(args))
    rows = report_score_set(args.scores, args.out, config, Storage.from_environment(args.s3_endpoint))
    print(f"wrote {args.out} ({rows} rows)")
    return 0


def build_parser() -> Parser:
    return job_parser("report", "Write an HTML report of a score set.", add_arguments, cmd)


if __name__ == "__main__":
    main(None, build_parser)
