"""What every entrypoint shares: the one-line-error parser, running a command, the flags of several commands.

`jobs.cli` (`piqa`) and each `python -m jobs.<module>` build on this module; none of them imports another's
entrypoint, so `jobs.cli` can import the subcommand modules at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from pipelines.config import ScoreConfig
from pipelines.runtime import RAY_FALSE_ALARM, apply_local_hygiene, drop_stderr_lines, set_ray_verbose
from piqa_model.errors import PiqaError

if TYPE_CHECKING:
    from pipelines.fetch import SourceFormat


class UsageError(PiqaError):
    """A wrong flag or value on the command line."""


class _DefaultsFormatter(argparse.HelpFormatter):
    """Ends each flag's help with its default, unless the help already speaks of it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is no for no in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse that shows every default and reports a usage error in one line instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"formatter_class": _DefaultsFormatter, **kwargs})

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def set_config_defaults(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Flags named after `config_class`'s fields default to its defaults, so that each is written once."""
    parser.set_defaults(**{f.name: f.default for f in fields(config_class) if f.default is not MISSING})


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """`config_class` built from the flags named after its fields."""
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """`--verbose` for the commands that run Ray (`run` applies it)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own INFO logs (cluster start, Ray Data's plans, progress lines)",
    )


def add_s3_endpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach and read the input images: as given to `piqa score` (later commands re-read them)."""
    parser.add_argument(
        "--image-column",
        default=ScoreConfig.image_column,
        help="image-bytes column of Parquet inputs",
    )
    parser.add_argument("--key-column", default=ScoreConfig.key_column, help="key column of Parquet inputs")
    add_s3_endpoint_argument(parser)


def source_format_from_args(args: argparse.Namespace) -> SourceFormat:
    from pipelines.fetch import SourceFormat

    return SourceFormat(image_column=args.image_column, key_column=args.key_column)


def banner_if_untrained(trained: bool, model: str) -> None:
    if not trained:
        line = "!" * 78
        print(
            f"{line}\n!! UNTRAINED MODEL '{model}': random weights, the scores below MEAN NOTHING.\n"
            f"!! Import real weights: piqa weights import-dnpiqa --checkpoint PIQ_model.pth ...\n{line}",
            file=sys.stderr,
        )


def job_parser(
    module: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Callable[[argparse.Namespace], int],
    **defaults: Any,
) -> Parser:
    """The parser of a `python -m jobs.<module>` entrypoint (what `ray job submit` runs)."""
    parser = Parser(prog=f"python -m jobs.{module}", description=description)
    add_arguments(parser)
    parser.set_defaults(run=command, **defaults)
    return parser


def run(argv: Sequence[str] | None, parser_factory: Callable[[], argparse.ArgumentParser]) -> int:
    """Run a command; the project's own errors become one line on stderr and a non-zero exit code.

    Every error raised on purpose is a `PiqaError` with a message the user can act on; anything else is a
    bug and keeps its traceback.
    """
    apply_local_hygiene()
    with _stop_on_sigterm():
        return _run(argv, parser_factory)


def _run(argv: Sequence[str] | None, parser_factory: Callable[[], argparse.ArgumentParser]) -> int:
    parser = parser_factory()
    try:
        args = parser.parse_args(argv)
        set_ray_verbose(getattr(args, "verbose", False))  # a command without --verbose keeps Ray quiet
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*UNTRAINED.*")  # the banner says it louder
            return args.run(args)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except PiqaError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (`_stop_on_sigterm`); a job may say what it had done
        print(f"{parser.prog}: {exc or 'interrupted'}; rerun the same command to resume", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While a command runs, SIGTERM (a preempted pod, `kill`, `ray job stop`) stops it as Ctrl-C does: the job
    ends between two steps, says so, and exits non-zero; the caller's handler is back afterwards.
    `pipelines.runtime.ensure_ray` keeps this handler (Ray's driver would replace it with a bare exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore_further_signals() -> None:
    """After the command: a second Ctrl-C or SIGTERM must not cut short Ray's shutdown at exit, which stops the
    local cluster's processes (interrupted, they outlive the job)."""
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def main(argv: Sequence[str] | None, parser_factory: Callable[[], argparse.ArgumentParser]) -> None:
    """A `python -m jobs.<module>` entrypoint: run the command, exit with its code."""
    if "--verbose" not in (sys.argv[1:] if argv is None else argv):
        drop_stderr_lines(RAY_FALSE_ALARM)
    code = run(argv, parser_factory)
    _ignore_further_signals()
    sys.exit(code)
