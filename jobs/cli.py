"""`piqa`: the command line. Thin: parse arguments, call the library, print, map errors to exit codes."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from jobs import common
from jobs import data as data_job
from jobs import filter as filter_job
from jobs import report as report_job
from jobs import retrain as retrain_job
from jobs import score as score_job
from jobs.common import Parser, banner_if_untrained


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
        banner_if_untrained(scorer.trained, scorer.bundle_id)
        print(f"scores: {scale}")
        for row in rows:
            score = f"{row['score']:8.4f}" if row["score"] is not None else "       -"
            detail = f"faces={row['num_faces']}" if row["status"] == "ok" else f"{row['status']}: {row['error']}"
            print(f"{score}  {row['image']}  {detail}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def cmd_show(args: argparse.Namespace) -> int:
    from pipelines.scoreset import list_parquet, read_score_set, scoring_manifest
    from pipelines.storage import Storage
    from pipelines.summary import ScoreStats
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


def build_parser() -> Parser:
    parser = Parser(prog="piqa", description="Portrait image quality scoring and curation (DN-PIQA on Ray).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    _add_job(commands, "score", score_job, "score image shards into Parquet (Ray Data)")

    predict = commands.add_parser("predict", help="score a few image files in this process")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--bundle", help="model bundle (default: the shipped default bundle)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(run=cmd_predict)

    show = commands.add_parser("show", help="print a table of scores from a scoring output")
    show.add_argument("scores", help="the output folder of `piqa score`")
    show.add_argument("--limit", type=int, default=20, help="rows to print")
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

    _add_job(commands, "filter", filter_job, "keep the portraits that pass quality rules; reshard; report")
    _add_job(commands, "train", retrain_job, "retrain with Ray Train; track, register and promote in MLflow")
    _add_job(commands, "report", report_job, "write a self-contained HTML report of a score set")

    data = commands.add_parser("data", help="make labelled training data")
    data_job.add_commands(data.add_subparsers(dest="data_command", required=True, parser_class=Parser))
    return parser


def _add_job(commands: argparse._SubParsersAction, name: str, job: ModuleType, text: str) -> None:
    """`piqa NAME`: the command of the `python -m jobs.<module>` entrypoint `job`."""
    command = commands.add_parser(name, help=text)
    job.add_arguments(command)
    command.set_defaults(run=job.cmd)


def run(argv: Sequence[str] | None, parser_factory: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    """Run a `piqa` command (or another entrypoint's, with its `parser_factory`); see `jobs.common.run`."""
    return common.run(argv, parser_factory)


def main(argv: Sequence[str] | None = None) -> None:
    common.main(argv, build_parser)


if __name__ == "__main__":
    main()
