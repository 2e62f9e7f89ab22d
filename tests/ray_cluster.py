"""Multi-node Ray on one machine for `ray job submit` tests: `ray start --head` plus worker nodes, loopback only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")


@dataclass(frozen=True)
class LocalCluster:
    dashboard: str  # the job-submission address, http://127.0.0.1:PORT
    env: dict[str, str]  # the environment the nodes were started with (and `ray job submit` runs with)


def node_ports() -> list[str]:
    """Free ports for every listener of a node, so that several nodes share one machine."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={free_port()}" for name in names]


def node_env(drop: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment (network hygiene included) with the venv first on PATH, as the nodes get it.

    A submitted job runs `python` from the environment its head was started in. `drop` leaves variables out,
    e.g. the S3 endpoint and credentials that a test wants to reach the job through its runtime environment.
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for name in ("RAY_ADDRESS", *drop):
        env.pop(name, None)
    return env


@contextmanager
def local_cluster(
    env: dict[str, str] | None = None, workers: Iterable[dict[str, float]] = ({},), cpus: int = 1
) -> Iterator[LocalCluster]:
    """A head (with the dashboard, for job submission) and one worker node per entry of `workers`, each with
    `cpus` CPUs; an entry is the node's custom resources (`ray start --resources`). Every process is killed
    and the temporary directory removed on exit."""
    env = node_env() if env is None else env
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}", *common, *node_ports()],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        for resources in workers:
            extra = [f"--resources={json.dumps(resources)}"] if resources else []
            subprocess.run(
                [RAY, "start", f"--address=127.0.0.1:{gcs_port}", *common, *extra, *node_ports()],
                env=env, check=True, capture_output=True, timeout=180,
            )  # fmt: skip
        yield LocalCluster(dashboard=f"http://127.0.0.1:{dashboard_port}", env=env)
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if temp_dir in " ".join(process.info["cmdline"] or []):
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_job(
    cluster: LocalCluster, *options: str, entrypoint: Iterable[str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`ray job submit --address=... OPTIONS -- ENTRYPOINT`, waiting for the job; exit code 0 iff it succeeded."""
    return subprocess.run(
        [RAY, "job", "submit", f"--address={cluster.dashboard}", *options, "--", *entrypoint],
        env=cluster.env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
