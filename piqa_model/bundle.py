"""Model bundles: a directory holding everything needed to score with a trained network.

    <bundle>/config.json        {"id": bundle id, "model": ModelConfig, "bundle": BundleInfo}
    <bundle>/model.safetensors  the weights (LIQE prompt features included, so they are never recomputed)
    <bundle>/MODEL_CARD.md      what it is, what it was trained on, how good it is

A bundle's id is its name plus a hash of its weights, so scores can always be traced to the exact model. It is
recorded in config.json, so a job can name and check a bundle from its config alone (`inspect_bundle`) and each
node loads its own copy (`local_bundle`) instead of the driver shipping the weights; every load recomputes the
hash and refuses weights that no longer match the recorded id. Bundles saved before the id was recorded have
their weights hashed instead.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors.torch import load, save_file

from piqa_model.calibration import ScoreScale, describe_scale
from piqa_model.config import ModelConfig, describe_branches, preset
from piqa_model.errors import WeightsError
from piqa_model.network import DualBranchNet
from piqa_model.registry import download_registered_bundle, is_registry_uri

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
SHIPPED_BUNDLE = Path(__file__).resolve().parent / "assets" / "starter"  # absolute: a job may chdir
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on its JSON header


class UntrainedModelWarning(UserWarning):
    """Scores from this model come from random weights and mean nothing."""


@dataclass(frozen=True)
class BundleInfo:
    name: str
    trained: bool
    description: str = ""
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    score_scale: dict[str, Any] | None = None  # a `ScoreScale`; None: scores are the raw network output

    @property
    def scale(self) -> ScoreScale | None:
        return None if self.score_scale is None else ScoreScale(**self.score_scale)


def save_bundle(
    net: DualBranchNet,
    path: str | Path,
    info: BundleInfo,
    card: str | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write `net` as a bundle directory at `path` (replaced atomically if it exists). `weights_dtype` (e.g.
    torch.float16, half the size) stores the floating-point tensors in that type; loading casts them back to the
    network's own, so scores change by that rounding only."""
    path = Path(path)
    if net.liqe is not None:
        net.liqe.prompt_features()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: _stored(v, weights_dtype) for k, v in net.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        with open(staging / WEIGHTS_FILE, "rb") as weights:
            recorded = _weights_id(weights, info)
        document = {"id": recorded, "model": net.config.to_dict(), "bundle": dataclasses.asdict(info)}
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        (staging / CARD_FILE).write_text(card or _default_card(net.config, info))
        for written in (staging, *staging.iterdir()):  # mkdtemp makes them owner-only: a bundle is for sharing
            written.chmod(0o755 if written.is_dir() else 0o644)
        if path.exists():  # move the old bundle aside first: readers never see a half-written one
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, retired / path.name)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def bundle_files(path: str | Path) -> dict[str, bytes]:
    """The bytes of a bundle's config and weights, from a local directory, any fsspec URI (s3://...) or the
    MLflow model registry (models:/NAME@ALIAS, models:/NAME/VERSION)."""
    if is_registry_uri(str(path)):
        path = download_registered_bundle(str(path), cache_dir())
    fs, root = fsspec.core.url_to_fs(str(path))
    files = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            files[name] = fs.cat_file(f"{root.rstrip('/')}/{name}")
        except FileNotFoundError:
            raise WeightsError(f"not a model bundle: {path} has no {name}") from None
        except Exception as exc:
            raise WeightsError(f"cannot read bundle {path}: {type(exc).__name__}: {exc}") from None
    return files


def read_bundle(path: str | Path, expected_id: str | None = None) -> tuple[DualBranchNet, BundleInfo, str]:
    """(network in eval mode, bundle info, bundle id) from a bundle directory. `expected_id`: the id a job
    checked before it started (`inspect_bundle`); a bundle that has changed since is refused."""
    net, info, loaded_id = read_bundle_files(bundle_files(path))
    if expected_id is not None and loaded_id != expected_id:
        raise _changed(path, expected_id, loaded_id)
    return net, info, loaded_id


def _changed(uri: str | Path, expected_id: str, found_id: str) -> WeightsError:
    return WeightsError(
        f"bundle {uri} changed after the job checked it: it was {expected_id}, it is now {found_id}; "
        "rerun the job (and keep a bundle unchanged while a job reads it)"
    )


def read_bundle_config(files: dict[str, bytes]) -> tuple[ModelConfig, BundleInfo]:
    """A bundle's model config and info, without building the network."""
    config, info, _ = _parse_config(files[CONFIG_FILE])
    return config, info


def _parse_config(data: bytes) -> tuple[ModelConfig, BundleInfo, str | None]:
    """config.json's model config, bundle info and recorded id (None in bundles saved before ids were recorded)."""
    try:
        document = json.loads(data)
        recorded = document.get("id")
        if recorded is not None and not isinstance(recorded, str):
            raise TypeError(f"its id is {recorded!r}, not a string")
        return ModelConfig.from_dict(document["model"]), BundleInfo(**document["bundle"]), recorded
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"not a valid bundle config: {exc}") from None


def read_bundle_files(files: dict[str, bytes]) -> tuple[DualBranchNet, BundleInfo, str]:
    """`read_bundle` on bytes already in memory. Refuses weights that do not match the id in config.json."""
    config, info, recorded = _parse_config(files[CONFIG_FILE])
    loaded_id = bundle_id(files, info)
    if recorded is not None:
        _check_recorded_id(info, recorded, loaded_id)
    net = DualBranchNet(config)
    try:
        missing, unexpected = net.load_state_dict(load(files[WEIGHTS_FILE]), strict=False)
    except Exception as exc:
        raise WeightsError(f"cannot load bundle weights: {type(exc).__name__}: {exc}") from None
    if missing or unexpected:
        raise WeightsError(
            f"bundle weights do not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval(), info, loaded_id


def _check_recorded_id(info: BundleInfo, recorded: str, loaded_id: str) -> None:
    """Refuse weights whose hash (`loaded_id`) is not the id recorded in config.json."""
    if recorded != loaded_id:
        raise WeightsError(
            f"bundle '{info.name}': its weights do not match the id recorded in config.json (recorded {recorded}, "
            f"the weights give {loaded_id}): {WEIGHTS_FILE} was changed or damaged after the bundle was saved; "
            "restore it, or save the bundle again with save_bundle"
        )


def bundle_id(files: dict[str, bytes], info: BundleInfo) -> str:
    """The bundle's name and a hash of its weights (and of its score scale: the same weights on another scale give
    other scores), without building the network."""
    return _weights_id(io.BytesIO(files[WEIGHTS_FILE]), info)


def _weights_id(weights: BinaryIO, info: BundleInfo) -> str:
    """`bundle_id` of a weights file read in chunks (it need not fit in memory)."""
    digest = hashlib.file_digest(weights, "sha256")
    if info.score_scale is not None:
        digest.update(json.dumps(info.score_scale, sort_keys=True).encode())
    return f"{info.name}-{digest.hexdigest()[:12]}"


def inspect_bundle(uri: str | Path) -> tuple[ModelConfig, BundleInfo, str]:
    """(model config, bundle info, bundle id) of the bundle at `uri` (a local directory, any fsspec URI such as
    s3://..., or models:/...), read from its config.json alone: what a job's driver needs before it starts.

    The weights are checked without being loaded: the file exists, its safetensors header is whole and, with the
    LIQE branch, holds the LIQE weights. Their bytes are hashed only for a bundle saved without a recorded id.
    """
    if is_registry_uri(str(uri)):
        uri = download_registered_bundle(str(uri), cache_dir())
    fs, root = fsspec.core.url_to_fs(str(uri))
    root = root.rstrip("/")
    try:
        config_data = fs.cat_file(f"{root}/{CONFIG_FILE}")
    except FileNotFoundError:
        raise WeightsError(f"not a model bundle: {uri} has no {CONFIG_FILE}") from None
    except Exception as exc:
        raise WeightsError(f"cannot read bundle {uri}: {type(exc).__name__}: {exc}") from None
    config, info, recorded = _parse_config(config_data)
    weights = f"{root}/{WEIGHTS_FILE}"
    try:
        with fs.open(weights, "rb", cache_type="none") as stream:  # no read-ahead: only the header's bytes
            tensors = _safetensors_header(stream, fs.size(weights), f"{uri}/{WEIGHTS_FILE}")
        if recorded is None:
            with fs.open(weights, "rb") as stream:
                recorded = _weights_id(stream, info)
    except FileNotFoundError:
        raise WeightsError(f"not a model bundle: {uri} has no {WEIGHTS_FILE}") from None
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"cannot read bundle {uri}: {type(exc).__name__}: {exc}") from None
    if config.aux == "liqe" and (config.liqe is None or "liqe.text_features" not in tensors):
        raise WeightsError(
            f"bundle {uri} reads LIQE features but holds no LIQE weights; import them with "
            "`piqa weights import-dnpiqa --checkpoint PIQ_model.pth --liqe LIQE.pt`"
        )
    return config, info, recorded


def _safetensors_header(stream: BinaryIO, size: int, where: str) -> set[str]:
    """The tensor names in a safetensors file's header (8-byte little-endian length, then JSON), reading only the
    header; raises WeightsError unless it parses and the file is as long as the header says."""
    prefix = stream.read(8)
    length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
    if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
        raise WeightsError(f"{where} is not a safetensors file (no valid header); save the bundle again")
    try:
        header = json.loads(stream.read(length))
        tensors = {name: spec for name, spec in header.items() if name != "__metadata__"}
        end = max((int(spec["data_offsets"][1]) for spec in tensors.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise WeightsError(f"{where} has a damaged safetensors header ({exc}); save the bundle again") from None
    if 8 + length + end != size:
        raise WeightsError(
            f"{where} is {size} bytes, its header describes {8 + length + end}: it is truncated or damaged; "
            "copy or save the bundle again"
        )
    return set(tensors)


def local_bundle(uri: str | Path, expected_id: str) -> Path:
    """A directory on this node holding the bundle at `uri`, which the job's driver found to be `expected_id`
    (`inspect_bundle`): what each scoring actor loads with `read_bundle(local_bundle(...), expected_id)`.

    A local directory is used in place, so on a cluster it must exist on every node. A models:/ URI is
    downloaded once per version into the piqa cache; another remote URI (s3://...) once per id, into
    cache_dir()/bundles/<id>, under a lock so that the actors of one node download it once between them.
    """
    if is_registry_uri(str(uri)):
        return download_registered_bundle(str(uri), cache_dir())
    fs, root = fsspec.core.url_to_fs(str(uri))
    if isinstance(fs, LocalFileSystem):
        path = Path(root)
        if not (path / CONFIG_FILE).is_file():
            raise WeightsError(
                f"bundle directory {path} is not on this node ({os.uname().nodename}): on a cluster, pass an s3:// "
                "or models:/ bundle, or install the bundle at the same path on every node"
            )
        return path
    target = cache_dir() / "bundles" / expected_id
    if (target / CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{expected_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if not (target / CONFIG_FILE).is_file():  # else another actor of this node copied it while we waited
            _copy_remote_bundle(fs, root.rstrip("/"), uri, target, expected_id)
    return target


def _copy_remote_bundle(fs: fsspec.AbstractFileSystem, root: str, uri: str | Path, target: Path, expected: str) -> None:
    """Copy a bundle's config and weights into `target`, whole or not at all (staged, then renamed), and only once
    the copied weights hash to the recorded id: weights changed in the bucket never enter the node's cache."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            try:
                fs.get_file(f"{root}/{name}", str(staging / name))
            except FileNotFoundError:
                raise WeightsError(f"not a model bundle: {uri} has no {name}") from None
            except Exception as exc:
                raise WeightsError(f"cannot copy bundle {uri}: {type(exc).__name__}: {exc}") from None
        _, info, found = inspect_bundle(staging)
        if found != expected:
            raise _changed(uri, expected, found)
        with open(staging / WEIGHTS_FILE, "rb") as weights:
            _check_recorded_id(info, found, _weights_id(weights, info))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cache_dir() -> Path:
    return Path(os.environ.get("PIQA_CACHE_DIR", Path.home() / ".cache" / "piqa"))


def default_bundle_path() -> Path:
    """The shipped starter bundle; in a checkout without it, a seeded random (untrained) `small` bundle."""
    if (SHIPPED_BUNDLE / CONFIG_FILE).is_file():
        return SHIPPED_BUNDLE
    path = cache_dir() / "bundles" / "untrained-small"
    if not (path / CONFIG_FILE).is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = DualBranchNet(preset("small"))
        info = BundleInfo(
            name="untrained-small",
            trained=False,
            description="Randomly initialised `small` preset: a placeholder until a trained bundle exists.",
        )
        try:
            save_bundle(net, path, info)
        except OSError:
            if not (path / CONFIG_FILE).is_file():  # else another process wrote the same bundle first
                raise
    return path


def warn_if_untrained(info: BundleInfo) -> None:
    if not info.trained:
        warnings.warn(
            f"model bundle '{info.name}' is UNTRAINED (random weights): its scores mean nothing. "
            "Import the paper's weights with `piqa weights import-dnpiqa` or pass a trained --bundle.",
            UntrainedModelWarning,
            stacklevel=3,
        )


def _default_card(config: ModelConfig, info: BundleInfo) -> str:
    status = "trained" if info.trained else "**UNTRAINED — random weights, scores mean nothing**"
    metrics = "\n".join(f"- {k}: {v}" for k, v in sorted(info.metrics.items())) or "- none recorded"
    return (
        f"# Model card: {info.name}\n\n"
        f"Status: {status}\n\n{info.description}\n\n"
        f"## Architecture\n\nPreset/config name `{config.name}`: {describe_branches(config)}; auxiliary "
        f"branch `{config.aux}`; resize {config.resize}, {config.crop_mode} crop {config.crop}.\n\n"
        f"## Score scale\n\n{describe_scale(info.scale)}.\n\n"
        f"## Source\n\n{info.source or 'not recorded'}\n\n## Metrics\n\n{metrics}\n"
    )
