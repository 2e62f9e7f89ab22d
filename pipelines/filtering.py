"""Filter rules on a score table: which rows to keep, and the rule that dropped each of the others.

Pure functions of a pyarrow Table (no I/O, no Ray), deterministic. The rules run in this fixed order and a
row's `decided_by` names the first rule it fails, or `kept`:

1. `status`: the row's status is one of `statuses` (default: `ok` only);
2. `require_face`: the detector found at least one face (`num_faces >= 1`);
3. `min_face_prob` P: the face probability is at least P;
4. `min_score` X: the score is at least X;
5. `bottom_fraction` F: drops the worst round(F * n) rows of each group;
6. `top_fraction` F: keeps the best round(F * n) rows of each group.

Exact semantics of the fraction rules:
- A group is the rows sharing a value of the `per` column (null is a group of its own); without `per`, all
  rows form one group. n is the number of the group's rows that passed rules 1-4 (its eligible rows), and
  both fraction rules count from that same n: `bottom_fraction=0.1, top_fraction=0.5` keeps the best half.
- round(x) rounds halves up, floor(x + 0.5): 0.5 of 5 rows is 3, 0.5 of 1 row is 1, 0.25 of 6 rows is 2.
- Rank: score descending, then key ascending, then source ascending; a row without a score ranks last.

Thresholds compare the stored values (float32 scores, widened to float64); a null never passes one.
`decide` returns rows in a canonical order (shard, key, source), so the same rows and rules give the same
table whatever order the score files were read in. `manifest` cuts the kept or dropped rows to
`MANIFEST_SCHEMA`, the same columns whatever the rules (README, "Manifests").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.writer import OUTPUT_SCHEMA
from piqa_model.errors import STATUSES, ConfigError, PiqaError

RULES = ("status", "require_face", "min_face_prob", "min_score", "bottom_fraction", "top_fraction")
KEPT = "kept"
DECIDED_BY = "decided_by"
CANONICAL_ORDER = [("shard", "ascending"), ("key", "ascending"), ("source", "ascending")]
GROUP = "group"
# kept.parquet and dropped.parquet: the score columns the rules read, `group` (the row's --per value as
# text, null without --per) and `decided_by`, whatever the rules.
SCORE_COLUMNS = ("key", "source", "shard", "status", "error", "score", "num_faces", "face_prob", "model")
MANIFEST_SCHEMA = pa.schema(
    [OUTPUT_SCHEMA.field(name) for name in SCORE_COLUMNS] + [(GROUP, pa.string()), (DECIDED_BY, pa.string())]
)
SCORING_METADATA_KEY = "piqa.scoring"  # manifest metadata: JSON of the model that made the scores
NULL_GROUP = "(null)"


class FilterError(PiqaError, ValueError):
    """Rules that cannot apply to this score table (a missing or unusable column)."""


@dataclass(frozen=True)
class FilterConfig:
    """The rules; each is off unless set. See the module docstring for their order and exact semantics."""

    statuses: tuple[str, ...] = ("ok",)
    min_score: float | None = None
    top_fraction: float | None = None
    bottom_fraction: float | None = None
    per: str | None = None  # the column that groups rows for the fraction rules and the summary
    require_face: bool = False
    min_face_prob: float | None = None

    def __post_init__(self) -> None:
        if not self.statuses:
            raise ConfigError("statuses must name at least one status, e.g. ok")
        unknown = [status for status in self.statuses if status not in STATUSES]
        if unknown:
            raise ConfigError(f"unknown status(es) {', '.join(unknown)}; the statuses are {', '.join(STATUSES)}")
        for name in ("top_fraction", "bottom_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.min_face_prob is not None and not 0.0 <= self.min_face_prob <= 1.0:
            raise ConfigError(f"min_face_prob must be between 0 and 1, got {self.min_face_prob}")

    @property
    def uses_fractions(self) -> bool:
        return self.top_fraction is not None or self.bottom_fraction is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(scores: pa.Table, config: FilterConfig) -> pa.Table:
    """`scores` in canonical order with a `decided_by` column: `kept` or the first rule the row failed."""
    _check_columns(scores, config)
    table = scores.take(pc.sort_indices(scores, sort_keys=CANONICAL_ORDER))
    decided = np.full(table.num_rows, -1, dtype=np.int8)  # index into RULES; -1: kept

    def apply(rule: str, passes: np.ndarray) -> None:
        decided[(decided == -1) & ~passes] = RULES.index(rule)

    apply("status", _mask(pc.is_in(table["status"], value_set=pa.array(config.statuses, pa.string()))))
    if config.require_face:
        apply("require_face", _mask(pc.greater_equal(table["num_faces"], 1)))
    if config.min_face_prob is not None:
        apply("min_face_prob", _mask(pc.greater_equal(table["face_prob"], pa.scalar(config.min_face_prob))))
    if config.min_score is not None:
        apply("min_score", _mask(pc.greater_equal(table["score"], pa.scalar(config.min_score))))
    if config.uses_fractions:
        rank, size = _rank_in_groups(table, decided == -1, config.per)
        if config.bottom_fraction is not None:
            apply("bottom_fraction", rank < size - _round_half_up(config.bottom_fraction * size))
        if config.top_fraction is not None:
            apply("top_fraction", rank < _round_half_up(config.top_fraction * size))
    labels = np.array([*RULES, KEPT], dtype=object)[decided]  # -1 picks the last: KEPT
    return table.append_column(DECIDED_BY, pa.array(labels, pa.string()))


def manifest(decided: pa.Table, config: FilterConfig, scoring: Mapping[str, Any], kept: bool = True) -> pa.Table:
    """The kept (or dropped) rows of a `decide` result as a `MANIFEST_SCHEMA` table.

    `scoring` (the model that made the scores, `scoreset.scoring_model`) goes into the schema's metadata
    under `SCORING_METADATA_KEY`, as JSON.
    """
    is_kept = pc.equal(decided[DECIDED_BY], KEPT)
    rows = decided.filter(is_kept if kept else pc.invert(is_kept))
    group = rows[config.per].cast(pa.string()) if config.per else pa.nulls(rows.num_rows, pa.string())
    columns = {name: rows[name] for name in SCORE_COLUMNS} | {GROUP: group, DECIDED_BY: rows[DECIDED_BY]}
    metadata = {SCORING_METADATA_KEY: json.dumps(dict(scoring), sort_keys=True)}
    schema = MANIFEST_SCHEMA.with_metadata(metadata)
    return pa.table([columns[field.name].cast(field.type) for field in MANIFEST_SCHEMA], schema=schema)


def _check_columns(scores: pa.Table, config: FilterConfig) -> None:
    needed = dict.fromkeys([*SCORE_COLUMNS, *([config.per] if config.per else [])])
    missing = [name for name in needed if name not in scores.column_names]
    if missing:
        columns = ", ".join(scores.column_names)
        raise FilterError(
            f"no column(s) {', '.join(missing)} in the scores (columns: {columns}); "
            "a --per column that is not a score column needs --metadata"
        )
    if config.per and pa.types.is_nested(scores.schema.field(config.per).type):
        raise FilterError(f"cannot group by '{config.per}': it holds lists; pick a scalar column")


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean comparison result as numpy, null counting as a failed test."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5).astype(np.int64)


def _rank_in_groups(table: pa.Table, eligible: np.ndarray, per: str | None) -> tuple[np.ndarray, np.ndarray]:
    """For every row: its rank among the eligible rows of its group (0 = best) and that group's eligible count.

    Rows that are not eligible get rank 0 and size 0; their decision is already made.
    """
    rank = np.zeros(table.num_rows, dtype=np.int64)
    size = np.zeros(table.num_rows, dtype=np.int64)
    rows = np.flatnonzero(eligible)
    if rows.size == 0:
        return rank, size
    candidates = table.take(rows)
    group = candidates[per] if per else pa.array(np.zeros(rows.size, dtype=np.int8))
    ranking = pa.table(
        {"group": group, "score": candidates["score"], "key": candidates["key"], "source": candidates["source"]}
    )
    order = pc.sort_indices(
        ranking,
        sort_keys=[("group", "ascending"), ("score", "descending"), ("key", "ascending"), ("source", "ascending")],
    ).to_numpy()  # nulls sort last (Arrow's default): a missing score ranks worst, a null group comes last
    encoded = pc.dictionary_encode(ranking.column("group").combine_chunks())
    codes = pc.fill_null(encoded.indices, -1).to_numpy()[order]
    starts_group = np.ones(rows.size, dtype=bool)
    starts_group[1:] = codes[1:] != codes[:-1]
    group_number = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    sizes = np.diff(np.append(starts, rows.size))
    rank[rows[order]] = np.arange(rows.size) - starts[group_number]
    size[rows[order]] = sizes[group_number]
    return rank, size


@dataclass(frozen=True)
class ScoreStats:
    """The distribution of a set of scores (all None when it is empty)."""

    count: int
    mean: float | None = None
    min: float | None = None
    p10: float | None = None
    median: float | None = None
    p90: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, scores: pa.ChunkedArray | pa.Array) -> ScoreStats:
        values = pc.drop_null(scores).to_numpy(zero_copy_only=False).astype(np.float64)
        if values.size == 0:
            return cls(0)
        p10, median, p90 = (round(float(q), 6) for q in np.quantile(values, [0.1, 0.5, 0.9]))
        mean, low, high = (round(float(v), 6) for v in (values.mean(), values.min(), values.max()))
        return cls(int(values.size), mean, low, p10, median, p90, high)

    def line(self) -> str:
        if not self.count:
            return "no scores"
        return (
            f"n={self.count} mean={self.mean:.4f} min={self.min:.4f} p10={self.p10:.4f} "
            f"median={self.median:.4f} p90={self.p90:.4f} max={self.max:.4f}"
        )


@dataclass(frozen=True)
class GroupCounts:
    group: Any
    rows: int
    kept: int
    dropped_by: dict[str, int]


@dataclass(frozen=True)
class FilterSummary:
    """What a filter kept and dropped: per rule, broken down by a column, and the scores before and after.

    The breakdown is by the `per` column, else by shard; `fraction_scope` says which rows the fraction rules
    counted together ("all rows", or "each <per> group"), None without fraction rules.
    """

    rows: int
    kept: int
    by_rule: dict[str, int]  # decided_by -> rows, in rule order, `kept` last
    fraction_scope: str | None
    breakdown_by: str
    breakdown: list[GroupCounts]
    before: ScoreStats  # every row with a score
    after: ScoreStats  # the kept rows with a score

    @property
    def dropped(self) -> int:
        return self.rows - self.kept

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"dropped": self.dropped}

    def lines(self, max_groups: int = 20) -> list[str]:
        rules = ", ".join(f"{rule} {count}" for rule, count in self.by_rule.items())
        lines = [
            f"kept {self.kept} of {self.rows} rows ({self.dropped} dropped); decided by: {rules}",
            f"scores before: {self.before.line()}",
            f"scores after:  {self.after.line()}",
            f"breakdown by {self.breakdown_by}"
            + (f" (fractions counted over {self.fraction_scope})" if self.fraction_scope else "")
            + ":",
        ]
        for counts in self.breakdown[:max_groups]:
            dropped = ", ".join(f"{rule} {n}" for rule, n in counts.dropped_by.items()) or "none"
            group = NULL_GROUP if counts.group is None else counts.group
            lines.append(f"  {group}: {counts.rows} rows, kept {counts.kept}, dropped: {dropped}")
        if len(self.breakdown) > max_groups:
            lines.append(f"  ... {len(self.breakdown) - max_groups} more groups (see summary.json)")
        return lines


def summarize(decided: pa.Table, config: FilterConfig) -> FilterSummary:
    """Counts of a `decide` result per rule and per value of the `per` column, else of the shard."""
    column = config.per or "shard"
    scope = (f"each {config.per} group" if config.per else "all rows") if config.uses_fractions else None
    counts = (
        pa.table({"group": decided[column], "rule": decided[DECIDED_BY]})
        .group_by(["group", "rule"])
        .aggregate([([], "count_all")])
    )
    per_group: dict[Any, dict[str, int]] = {}
    for row in counts.to_pylist():
        per_group.setdefault(row["group"], {})[row["rule"]] = row["count_all"]
    groups = [
        GroupCounts(
            group=group,
            rows=sum(rules.values()),
            kept=rules.get(KEPT, 0),
            dropped_by={rule: rules[rule] for rule in RULES if rule in rules},
        )
        for group, rules in sorted(per_group.items(), key=lambda item: (item[0] is None, item[0]))
    ]
    by_rule = pc.value_counts(decided[DECIDED_BY]).to_pylist()
    totals = {entry["values"]: entry["counts"] for entry in by_rule}
    kept = decided.filter(pc.equal(decided[DECIDED_BY], KEPT))
    return FilterSummary(
        rows=decided.num_rows,
        kept=kept.num_rows,
        by_rule={rule: totals[rule] for rule in (*RULES, KEPT) if rule in totals},
        fraction_scope=scope,
        breakdown_by=column,
        breakdown=groups,
        before=ScoreStats.of(decided["score"]),
        after=ScoreStats.of(kept["score"]),
    )
