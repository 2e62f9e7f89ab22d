"""Shared test fixtures. Network hygiene is set here, before Ray, botocore or MLflow are imported."""

import os
from pathlib import Path

import pytest

from pipelines.runtime import HYGIENE_ENV

os.environ.update(HYGIENE_ENV)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

SHARED_DIR = Path(__file__).parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder beside the repository (`../shared`): reference fixtures and real data."""
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    """The DN-PIQA checkpoint-compatibility fixture."""
    return shared_dir / "fixtures" / "dnpiqa-reference"


@pytest.fixture(scope="session")
def portrait_paths(shared_dir: Path) -> dict[str, list[Path]]:
    """A few real portraits: London Set (1350x1350) and Congress headshots (225x275)."""
    portraits = shared_dir / "data" / "portraits"
    return {
        "london": sorted((portraits / "london").glob("*.jpg"))[:3],
        "congress": sorted((portraits / "congress").glob("*.jpg"))[:3],
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto's server mode) on loopback, with dummy credentials.

    AWS_ENDPOINT_URL is set before any Ray cluster starts, so Ray workers inherit it.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_endpoint: str):
    """A real local Ray cluster (2 CPUs) for in-process pipeline runs."""
    import ray

    from pipelines.runtime import start_local_ray

    start_local_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).parents[1]


@pytest.fixture(scope="session")
def scored_folder(ray_local, shared_dir: Path, tmp_path_factory):
    """Scores from the real pipeline (shards of 3) for a folder of portraits, broken files and a faceless image."""
    import warnings

    from curation_corpus import ScoredCorpus, folder_with_faceless
    from pipeline_helpers import score

    import piqa_model

    root = tmp_path_factory.mktemp("curation")
    corpus = folder_with_faceless(shared_dir, root / "in")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", piqa_model.UntrainedModelWarning)
        score(corpus.root, root / "scores", shard_size=3)
    return ScoredCorpus(corpus, str(root / "scores"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server (sqlite backend, served artifacts) on loopback; its URI."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=open(root / "server.log", "wb"),  # noqa: SIM115 (the server outlives this function)
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_data(shared_dir: Path, tmp_path_factory) -> dict[str, str]:
    """Training data for the retraining tests: a synthetic-degradation manifest and a small PIQ23-shaped tree."""
    from piq23_tree import make_piq23_tree
    from train_helpers import degraded_portraits

    root = tmp_path_factory.mktemp("train-data")
    return {
        "manifest": degraded_portraits(shared_dir, root / "synthetic", count=8),
        "piq23": str(make_piq23_tree(root / "piq23", shared_dir / "data" / "piq23", scenes=2, images_per_scene=6)),
    }
