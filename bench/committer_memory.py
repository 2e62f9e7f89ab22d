"""The shard committer's memory against its concurrency: a bounded rise per thread, or a leak per commit?

For each `--concurrency`, a fresh local Ray runs one `ShardCommitter` actor (`COMMITTER_ACTOR`, with that
`max_concurrency`) that commits `--shards` shards of 500 rows, each from four parts that `PartWriter` wrote on
local disk, four commits in flight at a time. The actor's USS (its unshared memory) is sampled every ten shards.
A threaded actor runs each call on one of its pool's threads, and each thread that has run a commit keeps its
own allocator caches: the memory rises until every thread has run one, then stays flat; a leak would keep rising.

    python bench/committer_memory.py [--concurrency 16,8,4,1] [--shards 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import command_env  # noqa: E402

ROWS, PARTS, IN_FLIGHT = 500, 4, 4


def measure(concurrency: int, shards: int) -> list[float]:
    """USS (MiB) of a committer with `concurrency` threads, after every ten of `shards` commits."""
    import psutil
    import pyarrow as pa
    import ray

    from pipelines.runtime import start_local_ray
    from pipelines.storage import Storage
    from pipelines.writer import COMMITTER_ACTOR, PartWriter, ShardCommitter, output_schema

    start_local_ray(num_cpus=1)
    out = tempfile.mkdtemp(prefix="committer-")
    schema = output_schema(False)
    writer = PartWriter(out, Storage(), False)

    def part(shard: str, first: int, rows: int) -> pa.Table:
        columns = {f.name: pa.nulls(rows, f.type) for f in schema if f.name != "scored_at"}
        columns["key"] = pa.array([f"{shard}-{i}" for i in range(first, first + rows)])
        columns["status"] = pa.array(["ok"] * rows)
        columns |= {"index": pa.array(range(first, first + rows), pa.int64()), "shard": pa.array([shard] * rows)}
        return pa.table(columns | {"shard_total": pa.array([ROWS] * rows, pa.int64())})

    options = COMMITTER_ACTOR | {"max_concurrency": concurrency}
    committer = ray.remote(**options)(ShardCommitter).remote(out, Storage(), False)
    process = psutil.Process(ray.get(committer.__ray_call__.remote(lambda _: os.getpid())))
    usses, pending = [], []
    rows = ROWS // PARTS
    for number in range(shards):
        shard = f"shard-{number:05d}"
        parts = [r["part"] for p in range(PARTS) for r in writer(part(shard, p * rows, rows)).to_pylist()]
        pending.append(committer.commit.remote(shard, parts))
        if len(pending) >= IN_FLIGHT:
            ray.get(pending)
            pending = []
        if number % 10 == 9:
            usses.append(round(process.memory_full_info().uss / 2**20, 1))
    ray.get(pending)
    ray.shutdown()
    return usses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="16,8,4,1")
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one, in this process
    args = parser.parse_args()
    if args.one is not None:
        print(" ".join(map(str, measure(args.one, args.shards))))
        return
    print("| max_concurrency | USS after 10 shards, MiB | after 50 | after the last | last minus 50 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for concurrency in map(int, args.concurrency.split(",")):
        env = command_env()
        command = [sys.executable, __file__, "--one", str(concurrency), "--shards", str(args.shards)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        usses = [float(value) for value in done.stdout.split()]
        print(f"| {concurrency} | {usses[0]} | {usses[4]} | {usses[-1]} | {usses[-1] - usses[4]:+.1f} |")


if __name__ == "__main__":
    main()
