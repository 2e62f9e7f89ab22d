"""The cluster path end to end on one machine: a head and a worker node with its own resources (`ray start`
on 127.0.0.1), `ray job submit --runtime-env` with the project's infra/ray/runtime_env.yaml, and S3 (moto).

The nodes are started WITHOUT the S3 endpoint and credentials: the job can only reach the bucket if the
runtime environment carries them to its driver and to the workers on both nodes, as on a real cluster.
"""

from __future__ import annotations

import json
import warnings

import pytest
import s3fs
import yaml
from corpus import folder_corpus
from pipeline_helpers import assert_rows_match, read_scores
from ray_cluster import local_cluster, node_env, submit_job

import piqa_model
from pipelines.runtime import HYGIENE_ENV

warnings.filterwarnings("ignore", category=piqa_model.UntrainedModelWarning)

BUCKET = "multinode"
NOT_ON_THE_NODES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
)


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Head (1 CPU, the dashboard) + a worker node (1 CPU and a custom `decode` resource, like the CPU decode
    workers of infra/ray/cluster-aws.yaml); neither knows the S3 endpoint or credentials."""
    with local_cluster(node_env(drop=NOT_ON_THE_NODES), workers=[{"decode": 1}]) as running:
        yield running


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(BUCKET)
    return fs


@pytest.fixture
def runtime_env_file(s3_endpoint, repo_root, tmp_path):
    """infra/ray/runtime_env.yaml as a test cluster needs it: the same file (working_dir `.`, excludes), its
    env_vars plus the moto endpoint, dummy credentials and the loopback-only hygiene variables. Plug further
    jobs (e.g. `python -m jobs.retrain ... --storage-path s3://multinode/...`) into `submit_job` with it."""
    runtime_env = yaml.safe_load((repo_root / "infra" / "ray" / "runtime_env.yaml").read_text())
    runtime_env["env_vars"].update(
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        **HYGIENE_ENV,
    )
    path = tmp_path / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(runtime_env))
    return path


def test_score_job_on_two_nodes_reads_and_writes_s3(cluster, bucket, runtime_env_file, shared_dir, repo_root, tmp_path):
    corpus = folder_corpus(shared_dir, tmp_path / "in")  # 4 portraits and 5 broken files, in nested folders
    bucket.put(str(corpus.root), f"{BUCKET}/in", recursive=True)

    job = submit_job(
        cluster,
        "--runtime-env", str(runtime_env_file), "--submission-id", "score-multinode",
        entrypoint=["python", "-m", "jobs.score", f"s3://{BUCKET}/in", "--out", f"s3://{BUCKET}/out",
                    "--shard-size", "3", "--crop-mode", "center"],
        cwd=repo_root,  # the runtime environment's working_dir is `.`: the repository, as documented
    )  # fmt: skip

    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    assert_rows_match(read_scores(f"s3://{BUCKET}/out"), corpus.expected)
    manifest = json.loads(bucket.cat_file(f"{BUCKET}/out/_manifest.json"))
    assert manifest["images_this_run"] == len(corpus.expected)
    assert manifest["shards"]["written"] == manifest["shards"]["total"] == len(manifest["shard_files"])
    assert sum(manifest["counts_this_run"].values()) == len(corpus.expected)
    # The worker node, which knows no S3 endpoint or credentials of its own, did part of the work.
    assert "decode" in ran_on_nodes(cluster, "score-multinode")


def ran_on_nodes(cluster, submission_id: str) -> set[str]:
    """Which nodes ran the job's tasks and actors: `head`, or the custom resource that marks a worker."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes, list_tasks

    job_id = JobSubmissionClient(cluster.dashboard).get_job_info(submission_id).job_id
    nodes = {
        node.node_id: "head" if node.is_head_node else "decode" if "decode" in node.resources_total else node.node_id
        for node in list_nodes(address=cluster.dashboard, detail=True)
    }
    tasks = list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
    return {nodes[task.node_id] for task in tasks if task.node_id in nodes}


def test_retrain_job_on_two_nodes_reads_and_writes_s3(
    cluster, bucket, runtime_env_file, mlflow_server, shared_dir, repo_root, tmp_path
):
    from mlflow import MlflowClient
    from train_helpers import degraded_portraits, train_config, write_config

    manifest = degraded_portraits(shared_dir, tmp_path / "synthetic", count=8)
    bucket.put(str(tmp_path / "synthetic"), f"{BUCKET}/labelled/synthetic", recursive=True)
    config = train_config(tmp_path, optim={"epochs": 2}, data={"curated": [f"s3://{BUCKET}/labelled/"]})
    path = write_config(config, tmp_path / "retrain.yaml")
    assert manifest.endswith("manifest.parquet")

    job = submit_job(
        cluster,
        "--runtime-env", str(runtime_env_file), "--submission-id", "retrain-multinode",
        entrypoint=["python", "-m", "jobs.retrain", "--config", str(path), "--num-workers", "2",
                    "--storage-path", f"s3://{BUCKET}/train-runs", "--tracking-uri", mlflow_server,
                    "--model-name", "multinode", "--experiment", "multinode"],
        cwd=repo_root,
    )  # fmt: skip

    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "registered version 1 as candidate, promoted to champion" in job.stdout
    assert len(bucket.glob(f"{BUCKET}/train-runs/retrain-*/checkpoint_*/state.pt")) == 2
    assert bucket.glob(f"{BUCKET}/train-runs/feature-cache/features-*.parquet")
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("multinode", "champion")
    assert client.get_run(version.run_id).info.status == "FINISHED"
    # One training worker per node: DDP across the head and the worker node.
    assert {"head", "decode"} <= ran_on_nodes(cluster, "retrain-multinode")
