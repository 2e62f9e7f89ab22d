"""The deployment files (infra/, docs/deploy.md) checked against what consumes them: Ray's own cluster-config
schema and KubeRay translation, the fields the Kubernetes controllers require, the jobs' real argument parsers,
the MLflow and Ray command lines, and the versions pinned in pyproject.toml. Fast: nothing is started."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import click
import jsonschema
import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet

from pipelines.runtime import HYGIENE_ENV

REPO = Path(__file__).parents[1]
INFRA = REPO / "infra"
DOCS = (REPO / "docs" / "deploy.md", INFRA / "README.md")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
YAML_FILES = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
K8S_DIRS = (INFRA / "kuberay", INFRA / "mlflow" / "k8s")
TELEMETRY = ("RAY_USAGE_STATS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
# Loopback-only defaults of local runs that would cut a cluster off from S3, IAM credentials, MLflow or the hub.
LOCAL_ONLY = ("HTTP_PROXY", "HTTPS_PROXY", "AWS_EC2_METADATA_DISABLED", "HF_HUB_OFFLINE")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
WITHOUT_SPEC = {"Namespace", "ServiceAccount", "Secret", "ConfigMap", "Role", "RoleBinding"}
# Fields of the KubeRay ray.io/v1 API (ray-operator/apis/ray/v1): a misspelt one would be dropped by the
# API server without a word, e.g. a `shutdownAfterJobFinish` that never deletes the cluster.
RAYJOB_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata", "clusterSelector",
    "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
    "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
RAYCLUSTER_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy", "authOptions",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "idleTimeoutSeconds", "suspend", "resources", "labels",
}  # fmt: skip
AUTOSCALER_FIELDS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing Ray's and MLflow's CLIs


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects(kind: str | None = None) -> list[tuple[Path, dict]]:
    found = [
        (path, doc)
        for directory in K8S_DIRS
        for path in sorted(directory.glob("*.yaml"))
        for doc in documents(path)
        if kind is None or doc.get("kind") == kind
    ]
    return found


def one(kind: str, path: Path | None = None) -> dict:
    matches = [doc for found, doc in k8s_objects(kind) if path is None or found == path]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def name_of(obj: dict) -> str:
    return obj["metadata"].get("name") or obj["metadata"]["generateName"]


def pinned(package: str) -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


# --- parsing the command lines the files and docs contain, with the real parsers -------------------------


def job_parser(module: str):
    """The parser of `python -m jobs.<module>` (each entrypoint module has `build_parser()`)."""
    return importlib.import_module(f"jobs.{module}").build_parser()


def click_context(command: click.Command, args: list[str], parent=None, name=None) -> click.Context:
    """Parse `args` with a click CLI (ray, mlflow) down to the subcommand; raises click.UsageError."""
    context = command.make_context(name or command.name, list(args), parent=parent)
    if isinstance(command, click.Group):
        rest = [*context._protected_args, *context.args]
        sub_name, sub, rest = command.resolve_command(context, rest)
        return click_context(sub, rest, context, sub_name)
    return context


def ray_cli() -> click.Group:
    from ray.scripts.scripts import cli

    return cli


def mlflow_cli() -> click.Group:
    from mlflow.cli import cli

    return cli


def check_job_command(argv: list[str]) -> Any:
    """`python -m jobs.X ...` or `piqa ...`, parsed as the program would; returns the namespace."""
    if argv[0] == "piqa":
        from jobs.cli import build_parser

        return build_parser().parse_args(argv[1:])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), argv
    return job_parser(argv[2].removeprefix("jobs.")).parse_args(argv[3:])


def check_repo_paths(argv: list[str]) -> None:
    """Every file of this repository that a command names must exist."""
    for token in argv:
        for part in token.split("="):
            if re.match(r"(infra|docs|samples|tests|configs)/", part):
                assert (REPO / part).exists(), f"{part} (in {shlex.join(argv)}) does not exist"


def check_command(argv: list[str]) -> None:
    check_repo_paths(argv)
    if argv[0] == "piqa" or argv[:2] == ["python", "-m"]:
        check_job_command(argv)
    elif argv[0] == "ray":
        context = click_context(ray_cli(), argv[1:])
        if context.info_name == "submit":
            check_job_command(list(context.params["entrypoint"]))
    elif argv[0] == "mlflow":
        click_context(mlflow_cli(), argv[1:])


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet: continuation lines joined, comments dropped, split at
    `|`, `&&`, `||` and `;`, leading `VAR=value` assignments removed."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("|", "||", "&&", ";", "&"):
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)
                if current and current[0] != "export":
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), flags=re.S):
            found += [(rel(path), argv) for argv in shell_commands(block)]
    return found


# --- YAML and Kubernetes objects --------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses_into_mappings(path):
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_kubernetes_objects_have_what_the_api_server_requires():
    objects = k8s_objects()
    assert {doc["kind"] for _, doc in objects} >= {"RayCluster", "RayJob", "CronJob", "Deployment", "Service"}
    namespaces = {doc["metadata"]["name"] for _, doc in objects if doc["kind"] == "Namespace"}
    for path, doc in objects:
        where = f"{rel(path)}: {doc.get('kind')}"
        assert doc.get("apiVersion") and doc.get("kind") and isinstance(doc.get("metadata"), dict), where
        assert name_of(doc), where
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") in namespaces, f"{where}: namespace not created by infra/"
        assert "spec" in doc or doc["kind"] in WITHOUT_SPEC, where


def test_workloads_select_their_own_pods_and_services_find_them():
    labelled = []
    for kind in ("Deployment", "StatefulSet"):
        for path, doc in k8s_objects(kind):
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{rel(path)}: selector does not match the pod labels"
            labelled.append((doc["metadata"]["namespace"], labels, doc))
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert container["image"] and container["resources"]["requests"], rel(path)
    for path, service in k8s_objects("Service"):
        namespace, selector = service["metadata"]["namespace"], service["spec"]["selector"]
        assert any(ns == namespace and selector.items() <= labels.items() for ns, labels, _ in labelled), rel(path)
    services = {(s["metadata"]["namespace"], name_of(s)) for _, s in k8s_objects("Service")}
    for path, stateful_set in k8s_objects("StatefulSet"):
        assert (stateful_set["metadata"]["namespace"], stateful_set["spec"]["serviceName"]) in services, rel(path)


def ray_cluster_specs() -> list[tuple[str, dict, dict]]:
    """(where, metadata, RayClusterSpec) of the RayCluster and of every RayJob's cluster."""
    specs = [(f"{rel(p)}: RayCluster", d["metadata"], d["spec"]) for p, d in k8s_objects("RayCluster")]
    specs += [(f"{rel(p)}: RayJob", d["metadata"], d["spec"]["rayClusterSpec"]) for p, d in k8s_objects("RayJob")]
    return specs


def ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("where, metadata, spec", ray_cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_cluster_specs_have_what_kuberay_requires(where, metadata, spec):
    assert spec.keys() <= RAYCLUSTER_FIELDS, (where, spec.keys() - RAYCLUSTER_FIELDS)
    assert spec["headGroupSpec"].keys() <= HEAD_GROUP_FIELDS, where
    assert all(group.keys() <= WORKER_GROUP_FIELDS for group in spec["workerGroupSpecs"]), where
    assert spec.get("autoscalerOptions", {}).keys() <= AUTOSCALER_FIELDS, where
    assert spec["rayVersion"] == ray.__version__ == pinned("ray"), where
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"], where
    assert spec["workerGroupSpecs"], where
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict), where
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (where, group["groupName"])
        assert group["template"]["spec"]["containers"], where
    for container in ray_containers(spec):
        assert container["image"] == ray_image(), (where, container["name"])
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert resources["requests"][kind] == resources["limits"][kind], (where, container["name"], kind)
    gpu_groups = [g for g in spec["workerGroupSpecs"] if requests_gpu(g)]
    assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"], where

    # What the Ray autoscaler makes of it (Ray's own translation of a RayCluster; it validates the result).
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    node_types = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": name_of({"metadata": metadata}), "namespace": metadata["namespace"]}, "spec": spec}
    )["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 0, f"{where}: the head should run no tasks"
    for group in gpu_groups:
        assert node_types[group["groupName"]]["resources"]["GPU"] >= 1, where


def requests_gpu(group: dict) -> bool:
    return any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in group["template"]["spec"]["containers"])


def ray_image() -> str:
    return yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())["docker"]["image"]


@pytest.mark.parametrize("path, rayjob", k8s_objects("RayJob"), ids=lambda v: rel(v) if isinstance(v, Path) else "")
def test_rayjobs_run_a_real_job_command_and_clean_up(path, rayjob):
    spec = rayjob["spec"]
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert spec.keys() <= RAYJOB_FIELDS, spec.keys() - RAYJOB_FIELDS
    assert rayjob["metadata"].get("generateName"), "each `kubectl create` should be a new run"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0
    assert spec["rayClusterSpec"]["headGroupSpec"]
    argv = shlex.split(spec["entrypoint"])
    check_command(argv)
    assert argv[:3] == ["python", "-m", f"jobs.{rayjob['metadata']['labels']['app.kubernetes.io/component']}"]


def test_retrain_rayjob_reads_its_config_from_the_documented_configmap():
    rayjob = next(d for _, d in k8s_objects("RayJob") if "jobs.retrain" in d["spec"]["entrypoint"])
    args = check_job_command(shlex.split(rayjob["spec"]["entrypoint"]))
    assert args.use_gpu and args.num_workers >= 1 and args.storage_path.startswith("s3://")
    assert args.tracking_uri == mlflow_service_uri()
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    config = PurePosixPath(args.config)
    mount = next(m for m in head["containers"][0]["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent)
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    configmap = volume["configMap"]["name"]
    source = documented_configmap(configmap, key=config.name)
    from training.config import TrainConfig

    TrainConfig.from_dict(yaml.safe_load((REPO / source).read_text()))


def documented_configmap(name: str, key: str) -> str:
    """The repository file that docs/deploy.md turns into ConfigMap `name` under `key`."""
    for _, argv in doc_commands():
        if argv[:3] == ["kubectl", "create", "configmap"] and argv[3] == name:
            sources = dict(a.removeprefix("--from-file=").split("=", 1) for a in argv if a.startswith("--from-file="))
            assert key in sources, f"ConfigMap {name} is documented without the key {key}"
            return sources[key]
    raise AssertionError(f"docs/deploy.md does not say how to create the ConfigMap {name}")


def test_cronjob_creates_the_retraining_rayjob_with_only_the_rights_it_needs():
    path = INFRA / "kuberay" / "cronjob-retrain.yaml"
    cronjob = one("CronJob", path)
    assert cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    [container] = pod["containers"]
    assert container["image"].split(":")[-1] not in ("", "latest") and container["resources"]["limits"]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[:3] == ["kubectl", "create", "-f"]
    manifest = PurePosixPath(command[3])
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == manifest.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    source = documented_configmap(volume["configMap"]["name"], key=manifest.name)
    [created] = documents(REPO / source)
    assert created["kind"] == "RayJob" and created["metadata"]["generateName"], "every scheduled run a new RayJob"

    # RBAC: the pod's ServiceAccount may create RayJobs in the namespace the RayJob goes to, and nothing more.
    namespace = cronjob["metadata"]["namespace"]
    assert created["metadata"]["namespace"] == namespace
    account = pod["serviceAccountName"]
    assert one("ServiceAccount", path)["metadata"]["name"] == account
    binding = one("RoleBinding", path)
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding["subjects"]
    role = one("Role", path)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name_of(role)}
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]


def mlflow_service_uri() -> str:
    service = one("Service", INFRA / "mlflow" / "k8s" / "mlflow.yaml")
    return f"http://{name_of(service)}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"


def test_every_job_pod_points_at_the_mlflow_service():
    uri = mlflow_service_uri()
    for where, _, spec in ray_cluster_specs():
        for container in ray_containers(spec):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["MLFLOW_TRACKING_URI"] == uri, where
            assert not set(env) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *LOCAL_ONLY}, where
    assert runtime_env()["env_vars"]["MLFLOW_TRACKING_URI"] == uri
    assert yaml.safe_load((INFRA / "retrain" / "retrain.yaml").read_text())["tracking"]["uri"] == uri


# --- MLflow -----------------------------------------------------------------------------------------------


def test_mlflow_server_on_kubernetes(monkeypatch):
    from mlflow.server.security_utils import is_allowed_host_header

    deployment = one("Deployment", INFRA / "mlflow" / "k8s" / "mlflow.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # The backend store URI comes from a Secret, through the variable behind --backend-store-uri.
    secret_ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    secret = one("Secret")
    assert name_of(secret) == secret_ref["name"]
    backend = secret["stringData"][secret_ref["key"]]
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", backend)
    params = click_context(mlflow_cli(), container["command"][1:]).params
    assert params["backend_store_uri"].startswith("postgresql://")
    assert params["artifacts_destination"].startswith("s3://") and params["serve_artifacts"]
    # MLflow 3 answers only allowed Host headers: the jobs' in-cluster URI must be one of them.
    allowed = params["allowed_hosts"].split(",")
    assert is_allowed_host_header(allowed, mlflow_service_uri().removeprefix("http://"))
    assert not is_allowed_host_header(allowed, "attacker.example.com")
    # The database host is the in-cluster Postgres Service (or a managed database).
    host = re.match(r"postgresql://[^@]+@([^:/]+)", backend).group(1)
    postgres = one("Service", INFRA / "mlflow" / "k8s" / "postgres.yaml")
    assert host == f"{name_of(postgres)}.{postgres['metadata']['namespace']}.svc"
    assert one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"] == (
        name_of(secret)
    )
    assert container["image"].endswith(f"mlflow-server:{pinned('mlflow')}")


def test_compose_stack_binds_loopback_only_and_runs_a_valid_mlflow_server():
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"minio", "postgres", "mlflow"} <= services.keys()
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to loopback"
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
    mlflow = services["mlflow"]
    assert mlflow["build"]["context"] == "." and (INFRA / "mlflow" / mlflow["build"]["dockerfile"]).is_file()
    params = click_context(mlflow_cli(), mlflow["command"][1:]).params
    assert params["backend_store_uri"].startswith("postgresql://") and "@postgres:" in params["backend_store_uri"]
    assert params["serve_artifacts"]
    artifact_bucket = params["artifacts_destination"].removeprefix("s3://").split("/")[0]
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket_step = services["create-buckets"]
    assert bucket_step["image"].startswith("minio/mc:")
    assert f"local/{artifact_bucket}" in " ".join(bucket_step["command"])
    assert mlflow["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"


# --- the Ray cluster launcher and the runtime environment -------------------------------------------------


def test_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # with Ray's defaults filled in, as `ray up` does

    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"]["CPU"] == 0
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] < t["max_workers"] for t in workers)
    assert any(not t["resources"].get("GPU") for t in workers), "no CPU workers for reading and decoding"
    for node_type in node_types.values():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert config["docker"]["image"].endswith("/piqa:latest")
    assert config["setup_commands"] == [] and config["provider"]["type"] == "aws"


def runtime_env() -> dict:
    return yaml.safe_load((INFRA / "ray" / "runtime_env.yaml").read_text())


def test_runtime_env_is_valid_and_fit_for_a_cluster():
    from ray.runtime_env import RuntimeEnv

    document = runtime_env()
    assert set(document) <= set(RuntimeEnv.known_fields)
    RuntimeEnv(**document)  # Ray's own validation (env_vars are strings, ...)
    assert document["working_dir"] == "."
    assert {".git/", ".venv/"} <= set(document["excludes"])
    env = document["env_vars"]
    for name in TELEMETRY:
        assert env[name] == HYGIENE_ENV[name]
    assert not set(env) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}, "no credentials"
    assert not set(env) & set(LOCAL_ONLY), "loopback-only variables would cut the cluster off"


# --- images -----------------------------------------------------------------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, arguments in instructions:
        if instruction == "ENV":
            env.update(dict(token.split("=", 1) for token in shlex.split(arguments)))
    return env


def copied(instructions: list[tuple[str, str]]) -> list[str]:
    sources = []
    for instruction, arguments in instructions:
        if instruction == "COPY":
            sources += [a for a in shlex.split(arguments) if not a.startswith("--")][:-1]
    return sources


def test_image_installs_the_project_on_the_pinned_ray_and_python():
    instructions = dockerfile(INFRA / "docker" / "Dockerfile")
    [base] = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    image, _, tag = base.partition(":")
    assert image == "rayproject/ray" and tag.startswith(f"{pinned('ray')}-py311")
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains("3.11")
    sources = copied(instructions)
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the build context"
    assert "pyproject.toml" in sources and PYPROJECT["project"]["readme"] in sources
    packages = {
        path.name
        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
        for path in REPO.glob(pattern.rstrip("*"))
        if (path / "__init__.py").is_file()
    }
    assert packages and packages <= {PurePosixPath(s).name for s in sources}, "a package is missing from the image"
    runs = " && ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert re.search(r"pip install [^&]*--no-deps \.(\s|$)", runs), "the project itself must be pip-installed"
    assert "pyproject.toml" in runs, "dependencies come from pyproject.toml's pins"
    [*_, user] = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    env = dockerfile_env(instructions)
    for name in TELEMETRY:
        assert env[name] == HYGIENE_ENV[name]
    for name in LOCAL_ONLY:  # the tests' loopback-only values would cut the cluster off
        assert env.get(name) != HYGIENE_ENV[name], name


def test_mlflow_image_pins_the_projects_mlflow():
    instructions = dockerfile(INFRA / "mlflow" / "Dockerfile")
    runs = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert f"mlflow=={pinned('mlflow')}" in runs and "psycopg2" in runs and "boto3" in runs
    [*_, user] = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert user not in ("0", "root")
    env = dockerfile_env(instructions)
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_dockerignore_keeps_local_state_out_and_the_sources_in():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    for excluded in (".venv", ".git", "demo-out", "bench/out", "mlflow.db", "mlruns"):
        assert excluded in patterns, excluded
    for source in copied(dockerfile(INFRA / "docker" / "Dockerfile")):
        assert not any(fnmatch.fnmatch(source, p) for p in patterns), f"{source} is copied but ignored"


# --- the documentation's commands -------------------------------------------------------------------------


def test_docs_have_the_commands_of_every_step():
    commands = [shlex.join(argv) for _, argv in doc_commands()]
    for expected in (
        "docker build -f infra/docker/Dockerfile -t piqa:latest .",
        "ray up infra/ray/cluster-aws.yaml",
        "ray job submit --address http://127.0.0.1:8265 --runtime-env infra/ray/runtime_env.yaml"
        " -- python -m jobs.score",
        "kubectl apply -f infra/kuberay/raycluster.yaml",
        "kubectl create -f infra/kuberay/rayjob-score.yaml",
        "kubectl apply -f infra/mlflow/k8s/mlflow.yaml",
        "kubectl apply -f infra/kuberay/cronjob-retrain.yaml",
        "python -m jobs.retrain",
        "docker compose -f infra/mlflow/compose.yaml up",
    ):
        assert any(expected in command for command in commands), f"docs/deploy.md lacks `{expected}`"
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert "## Runtime environment" in deploy
    assert "../docs/deploy.md#runtime-environment" in (INFRA / "README.md").read_text()


def command_id(value: Any) -> str:
    if isinstance(value, str):
        return value
    argv = value[value.index("--") :] if "--" in value else value  # a job submission: its entrypoint
    return shlex.join(argv)[:80]


@pytest.mark.parametrize("where, argv", doc_commands(), ids=command_id)
def test_doc_commands_parse_with_the_real_command_lines(where, argv):
    """`piqa ...`, `python -m jobs.X ...` (also inside `ray job submit -- ...`), `ray ...` and `mlflow ...` are
    parsed by the programs' own parsers; every repository path a command names exists."""
    check_command(argv)


def test_the_licence_is_an_spdx_expression():
    # The `{text = ...}` table form makes every install print a setuptools deprecation warning.
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
