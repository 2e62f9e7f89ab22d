"""Filter rules on score tables: which rows to keep, and the rule that dropped each of the others.

Pure functions of pyarrow Tables (no I/O, no Ray), deterministic. The rules run in this fixed order and a
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

Rules 1-4 look at one row (`row_decisions`). The fraction rules need a group's rank order, which a score set of
a billion rows cannot give in one place, so they are applied through cuts: a group's cut for a rule is its
eligible row at the last rank that passes (`cut_rows`, found wherever the group's ranked rows are, even a
slice of them), and a row passes when it ranks at or above its group's cut (`apply_cuts`, anywhere, one file at
a time). `decide` composes the two on one in-memory table, the way `pipelines.curate` does over many.
Groups are compared as text (the `per` value cast to string), as the manifests store them.

`decide` returns rows in a canonical order (shard, key, source), so the same rows and rules give the same
table whatever order they came in. `manifest` cuts the kept or dropped rows to `MANIFEST_SCHEMA`, the same
columns whatever the rules (README, "Manifests").
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
FRACTION_RULES = ("bottom_fraction", "top_fraction")
KEPT = "kept"
ELIGIBLE = -1  # a row's decision code while it has passed every rule applied so far; else its index in RULES
DECIDED_BY = "decided_by"
CANONICAL_ORDER = [("shard", "ascending"), ("key", "ascending"), ("source", "ascending")]
GROUP = "group"
RANK_ORDER = [(GROUP, "ascending"), ("score", "descending"), ("key", "ascending"), ("source", "ascending")]
# kept.parquet and dropped.parquet: the score columns the rules read, `group` (the row's --per value as
# text, null without --per) and `decided_by`, whatever the rules.
SCORE_COLUMNS = ("key", "source", "shard", "status", "error", "score", "num_faces", "face_prob", "model")
MANIFEST_SCHEMA = pa.schema(
    [OUTPUT_SCHEMA.field(name) for name in SCORE_COLUMNS] + [(GROUP, pa.string()), (DECIDED_BY, pa.string())]
)
SCORING_METADATA_KEY = "piqa.scoring"  # manifest metadata: JSON of the model that made the scores
NULL_GROUP = "(null)"  # how summaries and reports show the group of rows whose `per` value is null
# The eligible rows as the fraction rules see them: their group and what ranks them.
CANDIDATE_SCHEMA = pa.schema(
    [(GROUP, pa.string()), ("score", pa.float32()), ("key", pa.string()), ("source", pa.string())]
)
# Where a group's rows passing each fraction rule end: `n` eligible rows, `<rule>_keep` of them pass (null when the
# rule is off), and the last passing row's rank columns when 0 < keep < n (null otherwise).
CUT_SCHEMA = pa.schema(
    [(GROUP, pa.string()), ("n", pa.int64())]
    + [
        field
        for rule in FRACTION_RULES
        for field in (
            (f"{rule}_keep", pa.int64()),
            (f"{rule}_score", pa.float32()),
            (f"{rule}_key", pa.string()),
            (f"{rule}_source", pa.string()),
        )
    ]
)


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
        for name in FRACTION_RULES:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.min_face_prob is not None and not 0.0 <= self.min_face_prob <= 1.0:
            raise ConfigError(f"min_face_prob must be between 0 and 1, got {self.min_face_prob}")

    @property
    def uses_fractions(self) -> bool:
        return self.top_fraction is not None or self.bottom_fraction is not None

    @property
    def columns(self) -> list[str]:
        """The columns the rules and the manifests read."""
        return [*SCORE_COLUMNS, *([self.per] if self.per and self.per not in SCORE_COLUMNS else [])]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(scores: pa.Table, config: FilterConfig) -> pa.Table:
    """`scores` in canonical order with a `decided_by` column: `kept` or the first rule the row failed."""
    table = canonical(scores, config)
    decided = row_decisions(table, config)
    if config.uses_fractions:
        rows = candidates(table, decided, config)
        sizes = group_sizes(rows)
        cuts = cuts_from_rows(sizes, cut_rows(rows, sizes, config), config)
        apply_cuts(table, decided, cuts, config)
    return labelled(table, decided)


def canonical(scores: pa.Table, config: FilterConfig) -> pa.Table:
    """`scores` checked for the columns the rules need, in canonical order."""
    check_columns(scores.schema, config)
    return scores.take(pc.sort_indices(scores, sort_keys=CANONICAL_ORDER))


def row_decisions(table: pa.Table, config: FilterConfig) -> np.ndarray:
    """Rules 1-4, one row at a time: per row ELIGIBLE, or the index in RULES of the first rule it fails."""
    decided = np.full(table.num_rows, ELIGIBLE, dtype=np.int8)

    def apply(rule: str, passes: np.ndarray) -> None:
        decided[(decided == ELIGIBLE) & ~passes] = RULES.index(rule)

    apply("status", _mask(pc.is_in(table["status"], value_set=pa.array(config.statuses, pa.string()))))
    if config.require_face:
        apply("require_face", _mask(pc.greater_equal(table["num_faces"], 1)))
    if config.min_face_prob is not None:
        apply("min_face_prob", _mask(pc.greater_equal(table["face_prob"], pa.scalar(config.min_face_prob))))
    if config.min_score is not None:
        apply("min_score", _mask(pc.greater_equal(table["score"], pa.scalar(config.min_score))))
    return decided


def groups_of(table: pa.Table, config: FilterConfig) -> pa.ChunkedArray:
    """Each row's fraction group as text (`per`'s value; all null without `per`)."""
    if not config.per:
        return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    return table[config.per].cast(pa.string())


def candidates(table: pa.Table, decided: np.ndarray, config: FilterConfig) -> pa.Table:
    """The eligible rows of `table` (`decided` ELIGIBLE) as CANDIDATE_SCHEMA, in `table`'s order."""
    rows = pa.array(np.flatnonzero(decided == ELIGIBLE))
    columns = [groups_of(table, config), *(table[name] for name in ("score", "key", "source"))]
    return pa.table(
        [_array(column.take(rows)).cast(field.type) for column, field in zip(columns, CANDIDATE_SCHEMA, strict=True)],
        schema=CANDIDATE_SCHEMA,
    )


def group_sizes(rows: pa.Table) -> pa.Table:
    """(group, n): the number of candidate rows of each group."""
    return rows.group_by(GROUP).aggregate([([], "count_all")]).rename_columns([GROUP, "n"])


def keep_counts(n: np.ndarray, config: FilterConfig) -> dict[str, np.ndarray | None]:
    """For groups of n eligible rows: how many pass each fraction rule (None when the rule is off)."""
    keep: dict[str, np.ndarray | None] = dict.fromkeys(FRACTION_RULES)
    if config.bottom_fraction is not None:
        keep["bottom_fraction"] = n - _round_half_up(config.bottom_fraction * n)
    if config.top_fraction is not None:
        keep["top_fraction"] = _round_half_up(config.top_fraction * n)
    return keep


def cut_rows(rows: pa.Table, sizes: pa.Table, config: FilterConfig) -> pa.Table:
    """The cut rows among `rows`, candidates of some groups: CANDIDATE_SCHEMA plus `rule`.

    `rows` may be a slice of a group's ranked candidates: `sizes` gives, per group, `n` (all its candidates) and
    `offset`, how many of them rank above every row here (0 when the column is absent: `rows` holds the group
    from its best row on). A group's cut for a rule is the row at rank keep - 1, found only where it is.
    """
    order, rank, n = _ranked(rows, sizes)
    found = [rows.slice(0, 0).append_column("rule", pa.array([], pa.string()))]
    for rule, keep in keep_counts(n, config).items():
        if keep is not None:
            at_cut = order[(rank == keep - 1) & (keep > 0) & (keep < n)]
            found.append(rows.take(pa.array(at_cut)).append_column("rule", pa.array([rule] * at_cut.size, pa.string())))
    return pa.concat_tables(found)


def passing_candidates(rows: pa.Table, sizes: pa.Table, config: FilterConfig) -> np.ndarray:
    """Which of `rows` (as for `cut_rows`) pass both fraction rules, in `rows`' order."""
    order, rank, n = _ranked(rows, sizes)
    passes = np.ones(rows.num_rows, dtype=bool)
    for keep in keep_counts(n, config).values():
        if keep is not None:
            passes[order[rank >= keep]] = False
    return passes


def cuts_from_rows(sizes: pa.Table, found: pa.Table, config: FilterConfig) -> pa.Table:
    """CUT_SCHEMA for the groups of `sizes` (group, n) from the cut rows `cut_rows` found for them."""
    n = sizes["n"].to_numpy().astype(np.int64)
    columns = {GROUP: _array(sizes[GROUP]), "n": pa.array(n)}
    for rule, keep in keep_counts(n, config).items():
        rows = found.filter(pc.equal(found["rule"], rule))
        at = pc.index_in(sizes[GROUP], value_set=_array(rows[GROUP]), skip_nulls=False)
        columns[f"{rule}_keep"] = pa.nulls(len(n), pa.int64()) if keep is None else pa.array(keep)
        for name in ("score", "key", "source"):
            columns[f"{rule}_{name}"] = _array(rows[name].take(at))
    return pa.table([columns[field.name].cast(field.type) for field in CUT_SCHEMA], schema=CUT_SCHEMA)


def apply_cuts(table: pa.Table, decided: np.ndarray, cuts: pa.Table, config: FilterConfig) -> None:
    """Rules 5-6 on `table`'s eligible rows, in place in `decided`, from their groups' `cuts` (CUT_SCHEMA)."""
    rows = np.flatnonzero(decided == ELIGIBLE)
    mine = candidates(table, decided, config)
    at = pc.index_in(mine[GROUP], value_set=cuts[GROUP], skip_nulls=False)
    for rule in FRACTION_RULES:
        if getattr(config, rule) is None or rows.size == 0:
            continue
        keep, n = (cuts[name].take(at).to_numpy() for name in (f"{rule}_keep", "n"))
        cut = {name: cuts[f"{rule}_{name}"].take(at) for name in ("score", "key", "source")}
        passes = (keep >= n) | ((keep > 0) & _at_or_above(mine, cut))
        failing = rows[(decided[rows] == ELIGIBLE) & ~passes]
        decided[failing] = RULES.index(rule)


def labelled(table: pa.Table, decided: np.ndarray) -> pa.Table:
    """`table` with its `decided_by` column from decision codes."""
    labels = np.array([*RULES, KEPT], dtype=object)[decided]  # ELIGIBLE (-1) picks the last: KEPT
    return table.append_column(DECIDED_BY, pa.array(labels, pa.string()))


def manifest(decided: pa.Table, config: FilterConfig, scoring: Mapping[str, Any], kept: bool = True) -> pa.Table:
    """The kept (or dropped) rows of a `decide` result as a `MANIFEST_SCHEMA` table.

    `scoring` (the model that made the scores, `scoreset.scoring_model`) goes into the schema's metadata
    under `SCORING_METADATA_KEY`, as JSON.
    """
    is_kept = pc.equal(decided[DECIDED_BY], KEPT)
    rows = decided.filter(is_kept if kept else pc.invert(is_kept))
    columns = {name: rows[name] for name in SCORE_COLUMNS} | {
        GROUP: groups_of(rows, config),
        DECIDED_BY: rows[DECIDED_BY],
    }
    metadata = {SCORING_METADATA_KEY: json.dumps(dict(scoring), sort_keys=True)}
    schema = MANIFEST_SCHEMA.with_metadata(metadata)
    return pa.table([columns[field.name].cast(field.type) for field in MANIFEST_SCHEMA], schema=schema)


def check_columns(schema: pa.Schema, config: FilterConfig) -> None:
    names = schema.names
    missing = [name for name in config.columns if name not in names]
    if missing:
        raise FilterError(
            f"no column(s) {', '.join(missing)} in the scores (columns: {', '.join(names)}); "
            "a --per column that is not a score column needs --metadata"
        )
    if config.per and pa.types.is_nested(schema.field(config.per).type):
        raise FilterError(f"cannot group by '{config.per}': it holds lists; pick a scalar column")


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean comparison result as numpy, null counting as a failed test."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5).astype(np.int64)


def _ranked(rows: pa.Table, sizes: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`rows` (candidates) in rank order within their groups: their positions, each one's rank in its whole group
    (`sizes`' offset added) and its group's n."""
    order = pc.sort_indices(rows, sort_keys=RANK_ORDER)
    groups = rows[GROUP].take(order)
    at = pc.index_in(groups, value_set=_array(sizes[GROUP]), skip_nulls=False).to_numpy(zero_copy_only=False)
    n = sizes["n"].to_numpy()[at]
    offset = sizes["offset"].to_numpy()[at] if "offset" in sizes.column_names else np.zeros_like(n)
    return order.to_numpy(), offset + _rank_within_runs(groups), n


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _rank_within_runs(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For sorted `values`: each position's distance from the start of its run of equal values (nulls equal)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    codes = pc.fill_null(pc.dictionary_encode(_array(values)).indices, -1).to_numpy()
    starts = np.ones(codes.size, dtype=bool)
    starts[1:] = codes[1:] != codes[:-1]
    start_of_run = np.flatnonzero(starts)[np.cumsum(starts) - 1]
    return np.arange(codes.size) - start_of_run


def _at_or_above(rows: pa.Table, cut: dict[str, pa.ChunkedArray]) -> np.ndarray:
    """Per row: it ranks at or above `cut` (the rank columns of its group's cut row, one per row)."""
    row_missing = _mask(pc.is_null(rows["score"]))
    cut_missing = _mask(pc.is_null(cut["score"]))
    row_score = pc.fill_null(rows["score"], 0.0).to_numpy().astype(np.float64)
    cut_score = pc.fill_null(cut["score"], 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    same_score = (row_missing == cut_missing) & (row_score == cut_score)
    better_score = (~row_missing & cut_missing) | (~row_missing & ~cut_missing & (row_score > cut_score))
    key_less, key_same = _mask(pc.less(rows["key"], cut["key"])), _mask(pc.equal(rows["key"], cut["key"]))
    source_at_most = _mask(pc.less_equal(rows["source"], cut["source"]))
    return better_score | (same_score & (key_less | (key_same & source_at_most)))
