"""Scoring through object-storage faults: what was injected, what was retried, what was lost or doubled.

A moto S3 server on loopback holds the inputs (a folder of files, WebDataset tars, a Parquet file: the test
corpora of tests/corpus.py); the fault proxy of tests/faultproxy.py sits between `run_scoring` (in this process)
and moto. For each fault and request kind, every input format is scored through the proxy with that fault on a
`--fraction` of the kind's requests, into a fresh output; each run's rows are then checked against the statuses
every key must have: keys missing (lost) and keys written twice (doubled). Retries come from the run manifest
(`storage_retries`). Then the retry budget: one shard whose every GET is throttled, so its run must fail naming
it, with nothing of it visible, and a rerun without the fault must complete it.

The `drop` fault (the connection closed once the request arrived, unanswered) is held out: no test injects it;
its rows are marked so.

    python bench/faults.py [--fraction 0.2] [--out bench/out/faults]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import s3fs  # noqa: E402
from corpus import folder_corpus, parquet_corpus, tar_corpus  # noqa: E402
from faultproxy import FAULTS, HELD_OUT, Fault, FaultProxy  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from pipelines.config import ScoreConfig  # noqa: E402
from pipelines.runtime import apply_local_hygiene  # noqa: E402
from pipelines.score import ShardsFailedError, run_scoring  # noqa: E402
from pipelines.storage import STORAGE_ATTEMPTS, Storage  # noqa: E402

SHARED = ROOT.parent / "shared"
FORMATS = {"folder": folder_corpus, "tar": tar_corpus, "parquet": parquet_corpus}
KINDS = ("list", "get", "put")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.2, help="of a kind's requests that meet the fault")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "faults"))
    args = parser.parse_args()
    apply_local_hygiene()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    moto = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    moto.mkdir("bench")
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch, FaultProxy(endpoint, seed=2026) as proxy:
        corpora = {}
        for name, make in FORMATS.items():
            corpus = make(SHARED, Path(scratch) / name)
            moto.put(str(corpus.root), f"bench/{name}/in", recursive=True)
            corpora[name] = corpus.expected
        rows = [
            _fault_row(proxy, moto, corpora, fault, kind, args.fraction)
            for fault in (*FAULTS, *HELD_OUT)
            for kind in KINDS
        ]
        budget = _budget_row(proxy, moto, corpora)
    server.stop()

    result = {
        "fraction": args.fraction,
        "attempts": STORAGE_ATTEMPTS,
        "rows": rows,
        "budget": budget,
        "seconds": time.time() - started,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))
    print(_table(rows, budget, args.fraction))
    print(f"{time.time() - started:.0f} s; result: {args.out}/result.json")


def _fault_row(proxy: FaultProxy, moto, corpora: dict[str, dict[str, str]], fault: str, kind: str, fraction: float):
    injected, retries, completed, lost, doubled, requests = 0, 0, 0, 0, 0, 0
    for name, expected in corpora.items():
        out = f"bench/{name}/out-{fault}-{kind}"
        proxy.inject(Fault(kind, fault, fraction))
        try:
            run_scoring(_config(name, out, proxy.endpoint))
            completed += 1
        except ShardsFailedError as exc:
            print(f"{fault}/{kind}/{name}: {exc}")
        injected += proxy.injected[kind, fault]
        requests += proxy.requests[kind]
        proxy.inject()
        keys = _written_keys(moto, out)
        lost += len(set(expected) - set(keys))
        doubled += sum(count - 1 for count in Counter(keys).values())
        manifest = f"{out}/_manifest.json"
        if moto.exists(manifest):
            retries += sum(json.loads(moto.cat_file(manifest))["storage_retries"].values())
    return dict(
        fault=fault,
        kind=kind,
        held_out=fault in HELD_OUT,
        runs=len(corpora),
        completed=completed,
        requests=requests,
        injected=injected,
        retries=retries,
        lost=lost,
        doubled=doubled,
    )


def _budget_row(proxy: FaultProxy, moto, corpora: dict[str, dict[str, str]]):
    """Every GET of one tar throttled: the run fails naming that shard, nothing of it is visible; a rerun completes."""
    out = "bench/tar/out-budget"
    proxy.inject(Fault("get", "slowdown", 1.0, match="shard-001.tar"))
    started = time.time()
    try:
        run_scoring(_config("tar", out, proxy.endpoint))
        said = "completed (it should have failed)"
    except ShardsFailedError as exc:
        said = str(exc)
    failed_after = time.time() - started
    visible = sorted(path.rsplit("/", 1)[-1] for path in moto.glob(f"{out}/*.parquet"))
    proxy.inject()
    run_scoring(_config("tar", out, proxy.endpoint))
    keys = _written_keys(moto, out)
    expected = corpora["tar"]
    return dict(
        error=said,
        failed_after_seconds=round(failed_after, 1),
        visible_before_rerun=visible,
        lost=len(set(expected) - set(keys)),
        doubled=len(keys) - len(set(keys)),
    )


def _config(name: str, out: str, endpoint: str) -> ScoreConfig:
    source = f"s3://bench/{name}/in"
    return ScoreConfig(
        input=source, output=f"s3://{out}", shard_size=3, crop_mode="center", runner="in-process", s3_endpoint=endpoint
    )


def _written_keys(moto, out: str) -> list[str]:
    import pyarrow.parquet as pq

    storage = Storage(moto.client_kwargs["endpoint_url"])
    fs, _ = storage.filesystem(f"s3://{out}")
    return [
        key for path in fs.glob(f"{out}/*.parquet") for key in pq.read_table(path, filesystem=fs)["key"].to_pylist()
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _table(rows: list[dict], budget: dict, fraction: float) -> str:
    lines = [
        f"faults on {fraction:.0%} of one kind of request; 3 runs each (folder, tar, parquet), "
        f"{STORAGE_ATTEMPTS} attempts per request",
        "",
        "| fault | request kind | runs completed | requests | faults injected | retries counted | rows lost "
        "| rows doubled |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        name = f"{row['fault']} (held out)" if row["held_out"] else row["fault"]
        lines.append(
            f"| {name} | {row['kind']} | {row['completed']} of {row['runs']} | {row['requests']} | {row['injected']} "
            f"| {row['retries']} | {row['lost']} | {row['doubled']} |"
        )
    lines += [
        "",
        f"retry budget: every GET of shard-001.tar throttled -> failed after {budget['failed_after_seconds']} s: "
        f"{budget['error']}",
        f"visible before the rerun: {', '.join(budget['visible_before_rerun'])}; after the rerun: "
        f"rows lost {budget['lost']}, doubled {budget['doubled']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
