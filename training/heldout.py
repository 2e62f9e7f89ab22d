"""Held-out figures of a model as its users meet them: series of versions of one photo (or one labelled set),
each ranked against its labels (SRCC), averaged per set and per fault kind.

`test_series` builds them from a training config's test split: CLIVE's test images against MOS, and for every
synthetic test photo its versions, per kind (the clean image and that kind's levels) and all kinds at once.
`training.starter` puts them in the starter's card; `bench/quality.py` adds faults and photos the model never saw.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import spearmanr

from pipelines.storage import Storage
from piqa_model import load_bundle
from piqa_model.bundle import UntrainedModelWarning
from training.config import TrainConfig
from training.retrain import load_sources
from training.table import Example, build_table, select


@dataclass(frozen=True)
class Series:
    """Versions of one photo (or one labelled set) and their labels (higher is better)."""

    set: str
    kind: str
    group: str
    paths: tuple[str, ...]
    labels: tuple[float, ...]


def split_examples(config: TrainConfig, split: str) -> list[Example]:
    """The examples of one split of `config`'s training table (the splits are a pure function of the config)."""
    data = config.data
    table = build_table(load_sources(config, Storage())[0], data.test_fraction, data.val_fraction, config.seed)
    return select(table, split)


def test_series(config: TrainConfig) -> list[Series]:
    """CLIVE's test split as one series; every synthetic test photo's versions, all kinds and per kind."""
    test = split_examples(config, "test")
    clive = [e for e in test if e.dataset == "clive"]
    found = [_series("clive-test", "authentic", "clive", clive)]
    by_group: dict[str, list[Example]] = {}
    for example in test:
        if example.dataset != "clive":
            by_group.setdefault(example.group, []).append(example)
    for group, examples in sorted(by_group.items()):
        found.append(_series("generator-test", "all kinds", group, examples))
        for kind in sorted({version_kind(e.uri) for e in examples} - {"clean"}):
            versions = [e for e in examples if version_kind(e.uri) in (kind, "clean")]
            found.append(_series("generator-test", kind, group, versions))
    return found


def version_kind(uri: str) -> str:
    """The kind of a `piqa data degrade` image from its name (`images/<photo>/<kind>-<level>.png`)."""
    return Path(uri).stem.rsplit("-", 1)[0]


def clean_version(item: Series) -> str:
    return next(path for path in item.paths if version_kind(path) == "clean")


def _series(name: str, kind: str, group: str, examples: list[Example]) -> Series:
    return Series(name, kind, group, tuple(e.uri for e in examples), tuple(e.label for e in examples))


def bundle_scores(bundle: str | Path | None, paths: list[str]) -> dict[str, float | None]:
    """{path: score} of image files, scored as `piqa predict` does (None: the default bundle)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        scorer = load_bundle(bundle, batch_size=16)
    scores: dict[str, float | None] = {}
    for start in range(0, len(paths), 64):
        chunk = paths[start : start + 64]
        for path, row in zip(chunk, scorer.score([Path(p).read_bytes() for p in chunk]), strict=True):
            scores[path] = row["score"]
    return scores


def summarise(all_series: list[Series], scores: dict[str, float | None]) -> dict[str, dict[str, float]]:
    """{set: {kind: mean SRCC over its series}}; a series with an unscored image is left out."""
    found: dict[str, dict[str, list[float]]] = {}
    for item in all_series:
        values = [scores.get(p) for p in item.paths]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        srcc = float(spearmanr(item.labels, values)[0])
        found.setdefault(item.set, {}).setdefault(item.kind, []).append(srcc)
    summary: dict[str, dict[str, float]] = {}
    for name, kinds in found.items():
        summary[name] = {kind: statistics.mean(values) for kind, values in sorted(kinds.items())}
        if len(kinds) > 1 and "all kinds" not in kinds:
            summary[name]["mean over series"] = statistics.mean(v for values in kinds.values() for v in values)
    return summary
