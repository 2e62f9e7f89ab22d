"""What makes an output's rows what they are, so that a rerun resumes the same job and never mixes two.

`piqa score` writes `_job.json` into its output before it scores anything: the input, the bundle's id, every
setting that changes a row, and each shard's members. A rerun into the same output resumes only when all of
these match for the shards already written; otherwise it is refused with one line that names what differs
(a shard written with other settings, or a folder re-sharded so that an image lands in two shards, would
otherwise sit beside the new rows). Settings that change only speed (actors, batch size, compile) may differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines import formats
from pipelines.config import ScoreConfig
from pipelines.shards import Shard
from pipelines.storage import Storage
from piqa_model import ModelConfig
from piqa_model.errors import PiqaError

JOB_RECORD = "_job.json"
NEWER_SETTINGS = frozenset({"max_image_bytes"})
"""Settings that records written by an older version lack; such a record resumes with any value of them."""


class OutputMismatchError(PiqaError, ValueError):
    """The output holds rows of another job (other input, model, settings or shard layout)."""


@dataclass(frozen=True)
class JobRecord:
    input: str
    model: str  # the bundle id (a hash of its weights and score scale)
    settings: dict[str, Any]  # every setting that changes a row
    shards: dict[str, str] = field(default_factory=dict)  # shard id -> digest of its members

    @classmethod
    def describe(cls, config: ScoreConfig, shards: list[Shard], model: str, model_config: ModelConfig) -> JobRecord:
        settings = {
            "crop_mode": model_config.crop_mode,
            "decode": config.decode,
            "detect_size": config.detect_size,
            "min_face_size": config.min_face_size,
            "max_pixels": config.max_pixels,
            "max_image_bytes": config.max_image_bytes,
            "precision": config.precision,
        }
        for kind in dict.fromkeys(shard.kind for shard in shards):  # the settings that change what it reads
            settings |= {name: getattr(config, name) for name in formats.get(kind).settings}
        return cls(_normalised_input(config.input), model, settings, {s.shard_id: _members_digest(s) for s in shards})

    def differences(self, current: JobRecord, written: set[str]) -> list[str]:
        """What stops `current` from continuing this job, given the shards already `written`."""
        found = [f"input {self.input} -> {current.input}"] if self.input != current.input else []
        if self.model != current.model:
            found.append(f"model {self.model} -> {current.model}")
        for name in sorted(set(self.settings) | set(current.settings)):
            if name in NEWER_SETTINGS and name not in self.settings:  # recorded before the setting existed
                continue
            before, after = self.settings.get(name), current.settings.get(name)
            if before != after:
                found.append(f"{name} {before} -> {after}")
        if found:
            return found
        gone = sorted(s for s in written if s not in current.shards)
        changed = sorted(s for s in written if s in current.shards and self.shards.get(s) != current.shards[s])
        if changed:
            found.append(f"the input's files changed: shard {few_names(changed)} would now hold other images")
        if gone:
            found.append(f"shard {few_names(gone)} is no longer in the input")
        return found


def continue_job(output: str, storage: Storage, current: JobRecord, written: set[str]) -> None:
    """Record `current` in `output`, or raise OutputMismatchError when the rows already there are another job's."""
    uri = posixpath.join(output.rstrip("/"), JOB_RECORD)
    recorded = _read(uri, storage)
    if recorded is None and written:
        raise OutputMismatchError(
            f"{output} holds {len(written)} scored shards but no {JOB_RECORD} to say how they were made "
            "(an older version, or another tool, wrote them); rerun with --overwrite, or choose a new --out"
        )
    if recorded is not None and written:  # an output without rows yet (stopped early) takes the new job
        differences = recorded.differences(current, written)
        if differences:
            raise OutputMismatchError(
                f"{output} holds rows of another job ({'; '.join(differences)}); rerun with --overwrite to start "
                "over, or choose a new --out"
            )
    if recorded != current:
        storage.write_atomic(uri, json.dumps(asdict(current), indent=2, sort_keys=True).encode())


def _read(uri: str, storage: Storage) -> JobRecord | None:
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return None
    try:
        return JobRecord(**json.loads(storage.read_bytes(uri)))
    except (ValueError, TypeError) as exc:
        raise OutputMismatchError(f"{uri} is not a job record ({exc}); rerun with --overwrite") from None


def _normalised_input(uri: str) -> str:
    return uri.rstrip("/") if "://" in uri else os.path.abspath(uri)


def _members_digest(shard: Shard) -> str:
    members = shard.files or (shard.source,)
    return hashlib.sha256("\n".join(members).encode()).hexdigest()[:16]


def few_names(names: list[str]) -> str:
    """Up to three names, then how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
