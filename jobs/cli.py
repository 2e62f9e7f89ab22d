"""`piqa`: the command line. Thin: parse arguments, call the library, print, map errors to exit codes."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.runtime import apply_local_hygiene, set_ray_verbose


class UsageError(Exception):
    """A wrong flag or value on the command line."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _actors(text: str) -> tuple[int, int]:
    try:
        low, _, high = text.partition(",")
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or N, got {text!r}") from None


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """`--verbose` for the commands that run Ray (`run` applies it)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own INFO logs (cluster start, Ray Data's plans, progress lines)",
    )


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a .tar/.parquet file, or a folder/prefix of them or of images (local or s3://)")
    parser.add_argument("--out", required=True, help="output folder/prefix for the Parquet scores")
    parser.add_argument("--bundle", help="model bundle directory or URI (default: the shipped default bundle)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard for a folder of images")
    parser.add_argument("--image-column", default="jpg", help="image-bytes column of Parquet inputs")
    parser.add_argument("--key-column", default="key", help="key column of Parquet inputs")
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
    parser.add_argument("--detect-size", type=int, default=640, help="longest side of the face-detection preview")
    parser.add_argument("--min-face-size", type=int, default=20, help="smallest face sought, in preview pixels")
    parser.add_argument(
        "--crop-mode", choices=("five", "center"), help="crops per branch (default: the bundle's own; dn-piqa: five)"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (GPU, AVX512-BF16)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model in each scoring actor: faster on long GPU jobs, a compile per batch shape",
    )
    parser.add_argument("--max-pixels", type=int, default=100_000_000, help="larger images become too_large rows")
    parser.add_argument(
        "--decode",
        choices=("full", "draft"),
        default="draft",
        help="draft: decode JPEGs only as finely as detection and the model need (default); full: every pixel",
    )
    add_verbose_argument(parser)


def score_config_from_args(args: argparse.Namespace):
    from pipelines.config import ScoreConfig

    return ScoreConfig(
        input=args.input,
        output=args.out,
        bundle=args.bundle,
        s3_endpoint=args.s3_endpoint,
        shard_size=args.shard_size,
        image_column=args.image_column,
        key_column=args.key_column,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        prepare_actors=args.prepare_actors,
        score_actors=args.score_actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        detect_size=args.detect_size,
        min_face_size=args.min_face_size,
        precision=args.precision,
        compile=args.compile,
        crop_mode=args.crop_mode,
        max_pixels=args.max_pixels,
        decode=args.decode,
    )


def cmd_score(args: argparse.Namespace) -> int:
    from pipelines.score import run_scoring

    summary = run_scoring(score_config_from_args(args))
    _banner_if_untrained(summary.model_trained, summary.model)
    print(summary.line())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from piqa_model import load_bundle
    from piqa_model.calibration import describe_scale

    scorer = load_bundle(args.bundle)
    paths = [Path(p) for p in args.images]
    rows = scorer.score([p.read_bytes() if p.is_file() else b"" for p in paths])
    for path, row in zip(paths, rows, strict=True):
        row["image"] = str(path)
        if not path.is_file():
            row.update(status="read_error", error="file not found")
    scale = describe_scale(scorer.info.scale)
    if args.json:
        document = {"model": scorer.bundle_id, "trained": scorer.trained, "score_scale": scale, "results": rows}
        print(json.dumps(document, indent=2))
    else:
        _banner_if_untrained(scorer.trained, scorer.bundle_id)
        print(f"scores: {scale}")
        for row in rows:
            score = f"{row['score']:8.4f}" if row["score"] is not None else "       -"
            detail = f"faces={row['num_faces']}" if row["status"] == "ok" else f"{row['status']}: {row['error']}"
            print(f"{score}  {row['image']}  {detail}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def cmd_show(args: argparse.Namespace) -> int:
    from pipelines.filtering import ScoreStats
    from pipelines.scoreset import list_parquet, read_score_set, scoring_manifest
    from pipelines.storage import Storage
    from piqa_model.calibration import RAW_SCALE

    storage = Storage.from_environment()
    table = read_score_set(args.scores, list_parquet(args.scores, storage), storage)
    table = table.select(["key", "status", "score", "num_faces"])
    rows = sorted(table.to_pylist(), key=lambda r: (r["score"] is None, -(r["score"] or 0.0)))
    print(f"scores: {scoring_manifest(args.scores, storage).get('score_scale', RAW_SCALE)}")
    print(f"{'score':>8}  {'faces':>5}  {'status':<13} key")
    for row in rows[: args.limit]:
        score = f"{row['score']:8.4f}" if row["score"] is not None else "       -"
        faces = row["num_faces"] if row["num_faces"] is not None else "-"
        print(f"{score}  {faces:>5}  {row['status']:<13} {row['key']}")
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more rows")
    print(f"distribution: {ScoreStats.of(table.column('score')).line()}")
    print("a threshold: `piqa filter --min-score X` with X from the distribution (X = p10 drops about the lowest")
    print("tenth), `--bottom-fraction F` to drop a share, `piqa report` for the histogram and photos at each level")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from piqa_model import BundleInfo, import_dnpiqa, save_bundle

    net = import_dnpiqa(args.checkpoint, liqe=args.liqe)
    files = [("checkpoint", args.checkpoint), *([("LIQE", args.liqe)] if args.liqe else [])]
    sources = ", ".join(f"{kind} {Path(path).name} (sha256 {_sha256(path)})" for kind, path in files)
    info = BundleInfo(
        name=args.name,
        trained=True,
        description=(
            "DN-PIQA's architecture (Sun et al., CVPRW 2024) with the weights of the imported checkpoint, unchanged: "
            "the authors' released weights if it is their PIQ_model.pth (compare the sha256 under Source)."
        ),
        source=f"imported from {sources}",
    )
    path = save_bundle(net, args.out, info)
    print(f"wrote bundle {path} ({net.config.overall.embed_dim}-dim Swin, aux={net.config.aux})")
    if net.config.aux == "liqe" and net.liqe is None:
        print("note: without --liqe this bundle cannot compute its LIQE features; pass --liqe LIQE.pt")
    return 0


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _banner_if_untrained(trained: bool, model: str) -> None:
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


def build_parser() -> Parser:
    parser = Parser(prog="piqa", description="Portrait image quality scoring and curation (DN-PIQA on Ray).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    score = commands.add_parser("score", help="score image shards into Parquet (Ray Data)")
    add_score_arguments(score)
    score.set_defaults(run=cmd_score)

    predict = commands.add_parser("predict", help="score a few image files in this process")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--bundle", help="model bundle (default: the shipped default bundle)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(run=cmd_predict)

    show = commands.add_parser("show", help="print a table of scores from a scoring output")
    show.add_argument("scores", help="the output folder of `piqa score`")
    show.add_argument("--limit", type=int, default=20)
    show.set_defaults(run=cmd_show)

    weights = commands.add_parser("weights", help="model weights").add_subparsers(
        dest="weights_command", required=True, parser_class=Parser
    )
    importer = weights.add_parser("import-dnpiqa", help="import the authors' PIQ_model.pth (and LIQE.pt)")
    importer.add_argument("--checkpoint", required=True, help="PIQ_model.pth")
    importer.add_argument("--liqe", help="LIQE.pt (OpenAI-layout CLIP)")
    importer.add_argument("--out", required=True, help="bundle directory to write")
    importer.add_argument("--name", default="dn-piqa", help="bundle name")
    importer.set_defaults(run=cmd_import)

    from jobs import filter as filter_job  # these import this module: import them here, not at the top
    from jobs import report as report_job

    curate = commands.add_parser("filter", help="keep the portraits that pass quality rules; reshard; report")
    filter_job.add_arguments(curate)
    curate.set_defaults(run=filter_job.cmd)

    from jobs import retrain as retrain_job

    train = commands.add_parser("train", help="retrain with Ray Train; track, register and promote in MLflow")
    retrain_job.add_arguments(train)
    train.set_defaults(run=retrain_job.cmd)

    report = commands.add_parser("report", help="write a self-contained HTML report of a score set")
    report_job.add_arguments(report)
    report.set_defaults(run=report_job.cmd)

    from jobs import data as data_job

    data = commands.add_parser("data", help="make labelled training data")
    data_job.add_commands(data.add_subparsers(dest="data_command", required=True, parser_class=Parser))
    return parser


def run(argv: Sequence[str] | None, parser_factory: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    """Run a command; known errors become one line on stderr and a non-zero exit code."""
    from pipelines.storage import StorageError
    from piqa_model.errors import PiqaError

    apply_local_hygiene()
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
    except (PiqaError, StorageError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
