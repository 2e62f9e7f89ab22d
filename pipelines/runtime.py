"""Starting or joining Ray with the environment every worker needs.

Every run turns telemetry off; the tests, CI, benchmarks and `make demo` also set the loopback-only variables
(`LOOPBACK_ONLY`), so that nothing they run talks to any address but loopback. Variables that workers must
share with the driver (the S3 endpoint, AWS region and credentials, MLflow URI, the hygiene variables when
set) travel in the runtime environment of a local cluster, so Ray workers and Ray Train's controller see them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import select
import signal
import sys
import threading
from collections.abc import Iterator

import ray

TELEMETRY_OFF = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
"""Set (as defaults) by every `piqa` command and local job: nothing phones home."""

LOOPBACK_ONLY = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "HF_HUB_OFFLINE": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "RAY_AUTH_MODE": "disabled",
}
"""Cut every address but loopback (a dead proxy; no cloud-metadata probes, no hub). For tests, CI, benchmarks
and `make demo` only: a user's job must reach its object store, credentials service and MLflow."""

HYGIENE_ENV = {**TELEMETRY_OFF, **LOOPBACK_ONLY}
"""The whole network-hygiene environment (no telemetry, loopback only), as the test harness and the Makefile set it."""

SHARED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_URI",
    "PIQA_CACHE_DIR",
    *HYGIENE_ENV,
)
"""Variables a local driver passes on to its Ray workers when they are set."""


def apply_local_hygiene() -> None:
    """Turn telemetry off in this process (before Ray or any client library starts); a variable already set wins."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


_ray_verbose = False


def set_ray_verbose(verbose: bool) -> None:
    """`--verbose`: print Ray's own INFO logs here (cluster start, Ray Data's plans and periodic progress lines).
    By default only Ray's warnings and errors reach the console (and Ray Data's progress bar, on a terminal); the
    session's log files (/tmp/ray/session_*/logs) hold everything either way."""
    global _ray_verbose
    _ray_verbose = verbose


RAY_FALSE_ALARM = re.compile(
    rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and max_restarts"
)
"""An error-level line Ray's core prints in the driver for every Ray Data actor pool (ray-project/ray#53727): Ray
Data passes each pool its transformer by reference and lets actors restart. It holds that reference until the
dataset ends, so restarts work (tests/test_pipeline_faults.py kills a scoring actor); the line is a false alarm."""


def drop_stderr_lines(pattern: re.Pattern[bytes]) -> None:
    """From now on, lines of this process's stderr that match `pattern` are dropped; everything else passes.

    It works on file descriptor 2, so that it also sees what native libraries (Ray's C++ core) write there; a
    thread forwards the rest as it arrives (a line without its end, such as a progress bar's, after 50 ms).
    For a command's process only (`jobs.common.main`): a test harness capturing stderr itself must not get it.
    """
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while True:
            arrived = select.select([read_end], [], [], 0.05)[0]
            chunk = os.read(read_end, 1 << 16) if arrived else b""
            if arrived and not chunk:
                break
            pending += chunk
            lines = re.split(rb"(?<=[\n\r])", pending)
            pending = lines.pop() if arrived else b""  # quiet for 50 ms: what is there goes out too
            for line in lines:
                if not pattern.search(line):
                    os.write(original, line)
        os.write(original, pending)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer here closes: the thread forwards what is left and ends
        forwarder.join(timeout=2)

    atexit.register(restore)


def ray_log_level() -> int:
    """The level of Ray's own console logs (see `set_ray_verbose`)."""
    return logging.INFO if _ray_verbose else logging.WARNING


def _apply_ray_console_level() -> int:
    """Set (and return) the level of Ray's own console logs in this process."""
    from ray.data import DataContext
    from ray.data._internal.logging import SessionFileHandler

    level = ray_log_level()
    logging.getLogger("ray").setLevel(level)
    for handler in logging.getLogger("ray.data").handlers:  # Ray Data logs apart from "ray", to a file and here
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(level)
    DataContext.get_current().print_on_execution_start = _ray_verbose
    return level


def ensure_ray(log_to_driver: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (as `ray job submit` sets it) or start a local one on loopback.

    `log_to_driver`: show the workers' output here (training progress); off for the chatty scoring actors.
    Ray's own console logs follow `set_ray_verbose`.
    """
    level = _apply_ray_console_level()
    if ray.is_initialized():
        return
    with _own_sigterm_handler_kept():
        if os.environ.get("RAY_ADDRESS", "local") != "local":
            # A cluster (e.g. under `ray job submit`): its runtime environment is the submitter's to set.
            ray.init(log_to_driver=log_to_driver, logging_level=level)
            return
        apply_local_hygiene()
        env_vars = {name: os.environ[name] for name in SHARED_ENV if name in os.environ}
        runtime_env = {"env_vars": env_vars, "worker_process_setup_hook": "pipelines.runtime.quiet_local_workers"}
        start_local_ray(runtime_env=runtime_env, log_to_driver=log_to_driver, logging_level=level)


@contextlib.contextmanager
def _own_sigterm_handler_kept() -> Iterator[None]:
    """`ray.init` in a driver replaces SIGTERM's handler with `sys.exit`; a handler this process had set itself
    (the CLI's, which stops a job as Ctrl-C does) is put back. Without one, Ray's stays."""
    own = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if own not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, own)


def quiet_local_workers() -> None:
    """Worker setup of a local cluster: silence Ray Train's placement-group cleaner, which polls the State API
    once a second and, with no dashboard to answer (a local cluster starts none), warns every time."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


LOCAL_TASK_RECORDS = 1000


def start_local_ray(**options) -> None:
    """A single-node Ray on 127.0.0.1, without a dashboard.

    `ray.init` maps 127.0.0.1 to the machine's network address unless multi-node clusters are switched off
    (Ray's switch, also read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER); a local run switches them off so all
    its traffic stays on loopback. `ray start --node-ip-address=127.0.0.1` is the way for multi-node setups.

    Ray's GCS keeps a record of every task (up to 100,000 by default, a few KB each) for the State API and the
    dashboard; a local cluster has no dashboard to read them, so it keeps only the last `LOCAL_TASK_RECORDS`
    and its memory stays flat over a long run.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local",
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _system_config={"task_events_max_num_task_in_gcs": LOCAL_TASK_RECORDS},
        **options,
    )
