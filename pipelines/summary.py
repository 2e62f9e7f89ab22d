"""What a filter kept and dropped, summed from parts: counts per rule and group, and the scores' distribution.

Everything here merges: a filter over a billion rows sums the `rule_counts` and `ScoreSketch`es of its files and
never holds the rows. A `ScoreSketch` keeps exact count, sum, min and max, and how many scores fall in each of
2**16 buckets of the float32 order; a second sketch, `refined()`, counts exact values in the few buckets where
the 10th, 50th and 90th percentiles fall, which gives those percentiles exactly (numpy's linear method), in
two passes and bounded memory. `FilterSummary` shows the largest and the most-dropped groups; all of them go
to `groups_table()`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.filtering import DECIDED_BY, KEPT, NULL_GROUP, RULES, FilterConfig

QUANTILES = (0.1, 0.5, 0.9)
BUCKET_SHIFT = 16  # a bucket: the float32 order keys that agree but for their low 16 bits
GROUPS_SHOWN = 10  # the summary lists this many largest and this many most-dropped groups
COUNT_SCHEMA = pa.schema([("group", pa.string()), ("rule", pa.string()), ("rows", pa.int64())])


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
        sketch = ScoreSketch()
        sketch.add(scores)
        refined = sketch.refined()
        refined.add(scores)
        return sketch.stats(refined)

    def line(self) -> str:
        if not self.count:
            return "no scores"
        return (
            f"n={self.count} mean={self.mean:.4f} min={self.min:.4f} p10={self.p10:.4f} "
            f"median={self.median:.4f} p90={self.p90:.4f} max={self.max:.4f}"
        )


@dataclass
class ScoreSketch:
    """A mergeable summary of scores; see the module docstring. `targets`: the buckets whose exact values it counts."""

    targets: frozenset[int] = frozenset()
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(1 << (32 - BUCKET_SHIFT), np.int64))
    exact: dict[int, np.ndarray] = field(default_factory=dict)  # target bucket -> scores per low 16 bits of the key

    def add(self, scores: pa.ChunkedArray | pa.Array) -> None:
        values = np.asarray(pc.drop_null(scores).to_numpy(zero_copy_only=False), dtype=np.float32)
        if values.size == 0:
            return
        keys = order_keys(values)
        self.count += int(values.size)
        self.total += float(values.astype(np.float64).sum())
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        ids, counts = np.unique(keys >> BUCKET_SHIFT, return_counts=True)
        self.buckets[ids] += counts
        for bucket in self.targets:
            low_bits = (keys[keys >> BUCKET_SHIFT == bucket] & ((1 << BUCKET_SHIFT) - 1)).astype(np.int64)
            counts = np.bincount(low_bits, minlength=1 << BUCKET_SHIFT)
            self.exact[bucket] = self.exact[bucket] + counts if bucket in self.exact else counts

    def merge(self, other: ScoreSketch) -> None:
        self.count += other.count
        self.total += other.total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.buckets += other.buckets
        for bucket, counts in other.exact.items():
            self.exact[bucket] = self.exact[bucket] + counts if bucket in self.exact else counts

    def refined(self) -> ScoreSketch:
        """An empty sketch that counts exact values in the buckets holding this one's percentiles."""
        ends = np.cumsum(self.buckets)
        return ScoreSketch(targets=frozenset(int(np.searchsorted(ends, i, "right")) for i in self._order_stats()))

    def stats(self, refined: ScoreSketch) -> ScoreStats:
        """The exact ScoreStats, from this sketch and its `refined()` one, filled from the same scores."""
        if not self.count:
            return ScoreStats(0)
        bucket_ends = np.cumsum(self.buckets)

        def value(i: int) -> float:
            bucket = int(np.searchsorted(bucket_ends, i, "right"))
            before = int(bucket_ends[bucket - 1]) if bucket else 0
            low_bits = int(np.searchsorted(np.cumsum(refined.exact[bucket]), i - before, "right"))
            return float(from_order_keys(np.array([(bucket << BUCKET_SHIFT) | low_bits], np.uint32))[0])

        quantiles = []
        for q in QUANTILES:
            h = (self.count - 1) * q
            lower = value(math.floor(h))
            upper = value(min(math.floor(h) + 1, self.count - 1))
            quantiles.append(lower + (h - math.floor(h)) * (upper - lower))
        mean = refined.total / refined.count  # the refined sketch's sums: this one may hold only bucket counts
        p10, median, p90 = (round(q, 6) for q in quantiles)
        return ScoreStats(self.count, round(mean, 6), round(refined.low, 6), p10, median, p90, round(refined.high, 6))

    @classmethod
    def of_buckets(cls, buckets: np.ndarray) -> ScoreSketch:
        """A sketch of scores known only by their bucket counts (enough for `refined()` and `stats`)."""
        return cls(count=int(buckets.sum()), buckets=buckets.astype(np.int64))

    def _order_stats(self) -> set[int]:
        positions = set()
        for q in QUANTILES:
            h = (self.count - 1) * q
            positions |= {math.floor(h), min(math.floor(h) + 1, self.count - 1)}
        return positions if self.count else set()


def rule_counts(groups: pa.ChunkedArray | pa.Array, decided_by: pa.ChunkedArray | pa.Array) -> pa.Table:
    """COUNT_SCHEMA: rows per (summary group, decided_by)."""
    table = pa.table({"group": groups, "rule": decided_by})
    counts = table.group_by(["group", "rule"]).aggregate([([], "count_all")])
    return counts.rename_columns(COUNT_SCHEMA.names).cast(COUNT_SCHEMA)


def merge_counts(tables: list[pa.Table]) -> pa.Table:
    """`rule_counts` of several parts as one."""
    merged = pa.concat_tables(tables).group_by(["group", "rule"]).aggregate([("rows", "sum")])
    return merged.rename_columns(COUNT_SCHEMA.names)


def summarize(decided: pa.Table, config: FilterConfig) -> FilterSummary:
    """The summary of one in-memory `filtering.decide` result."""
    counts = rule_counts(summary_groups(decided, config), decided[DECIDED_BY])
    kept = decided.filter(pc.equal(decided[DECIDED_BY], KEPT))
    return FilterSummary.of(counts, ScoreStats.of(decided["score"]), ScoreStats.of(kept["score"]), config)


def summary_groups(table: pa.Table, config: FilterConfig) -> pa.ChunkedArray:
    """Each row's group in the summary, as text: its `per` value, else its shard."""
    return table[config.per or "shard"].cast(pa.string())


@dataclass(frozen=True)
class GroupCounts:
    group: Any
    rows: int
    kept: int
    dropped_by: dict[str, int]

    @property
    def dropped(self) -> int:
        return self.rows - self.kept


@dataclass(frozen=True)
class FilterSummary:
    """What a filter kept and dropped: per rule, broken down by a column, and the scores before and after.

    The breakdown is by the `per` column, else by shard: every group when there are at most 2 * GROUPS_SHOWN,
    else the GROUPS_SHOWN largest and the GROUPS_SHOWN most dropped (`group_count` says how many there are in all).
    `fraction_scope` says which rows the fraction rules counted together ("all rows", or "each <per> group"),
    None without fraction rules.
    """

    rows: int
    kept: int
    by_rule: dict[str, int]  # decided_by -> rows, in rule order, `kept` last
    fraction_scope: str | None
    breakdown_by: str
    group_count: int
    breakdown: list[GroupCounts]
    before: ScoreStats  # every row with a score
    after: ScoreStats  # the kept rows with a score

    @classmethod
    def of(cls, counts: pa.Table, before: ScoreStats, after: ScoreStats, config: FilterConfig) -> FilterSummary:
        """From `rule_counts` over all the rows (in any number of parts) and the scores' statistics."""
        table = groups_table(counts)
        totals = {rule: int(pc.sum(table[rule]).as_py() or 0) for rule in (*RULES, KEPT)}
        scope = (f"each {config.per} group" if config.per else "all rows") if config.uses_fractions else None
        groups = [
            GroupCounts(row["group"], row["rows"], row[KEPT], {rule: row[rule] for rule in RULES if row[rule]})
            for row in _shown(table).to_pylist()
        ]
        return cls(
            rows=sum(totals.values()),
            kept=totals[KEPT],
            by_rule={rule: n for rule, n in totals.items() if n},
            fraction_scope=scope,
            breakdown_by=config.per or "shard",
            group_count=table.num_rows,
            breakdown=groups,
            before=before,
            after=after,
        )

    @property
    def dropped(self) -> int:
        return self.rows - self.kept

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"dropped": self.dropped}

    def lines(self) -> list[str]:
        rules = ", ".join(f"{rule} {count}" for rule, count in self.by_rule.items())
        lines = [
            f"kept {self.kept} of {self.rows} rows ({self.dropped} dropped); decided by: {rules}",
            f"scores before: {self.before.line()}",
            f"scores after:  {self.after.line()}",
            f"breakdown by {self.breakdown_by}"
            + (f" (fractions counted over {self.fraction_scope})" if self.fraction_scope else "")
            + (
                f", the largest and the most dropped of {self.group_count} groups"
                if self.group_count > len(self.breakdown)
                else ""
            )
            + ":",
        ]
        for counts in self.breakdown:
            dropped = ", ".join(f"{rule} {n}" for rule, n in counts.dropped_by.items()) or "none"
            group = NULL_GROUP if counts.group is None else counts.group
            lines.append(f"  {group}: {counts.rows} rows, kept {counts.kept}, dropped: {dropped}")
        return lines


def groups_table(counts: pa.Table) -> pa.Table:
    """One row per group (sorted, null last): its rows, kept, and a column of rows per rule that dropped some."""
    merged = merge_counts([counts])
    groups = pc.unique(merged["group"])
    order = pc.sort_indices(groups)
    groups = groups.take(order)
    at = pc.index_in(merged["group"], value_set=groups, skip_nulls=False).to_numpy(zero_copy_only=False)
    columns: dict[str, Any] = {"group": groups}
    rows = merged["rows"].to_numpy()
    for rule in (KEPT, *RULES):
        mine = _mask_equal(merged["rule"], rule)
        column = np.zeros(len(groups), dtype=np.int64)
        np.add.at(column, at[mine], rows[mine])
        columns[rule] = column
    columns["rows"] = sum(columns[rule] for rule in (KEPT, *RULES))
    names = ["group", "rows", KEPT, *RULES]
    return pa.table({name: columns[name] for name in names})


def _shown(table: pa.Table) -> pa.Table:
    if table.num_rows <= 2 * GROUPS_SHOWN:
        return table
    dropped = pc.subtract(table["rows"], table[KEPT])
    largest = pc.sort_indices(table.append_column("d", dropped), [("rows", "descending"), ("group", "ascending")])
    most_dropped = pc.sort_indices(table.append_column("d", dropped), [("d", "descending"), ("group", "ascending")])
    picked = list(dict.fromkeys([*largest.to_pylist()[:GROUPS_SHOWN], *most_dropped.to_pylist()[:GROUPS_SHOWN]]))
    return table.take(pa.array(picked))


def _mask_equal(values: pa.ChunkedArray | pa.Array, text: str) -> np.ndarray:
    return pc.fill_null(pc.equal(values, text), False).to_numpy(zero_copy_only=False).astype(bool)


def order_keys(values: np.ndarray) -> np.ndarray:
    """float32 values as uint32 keys that sort in the same order."""
    bits = values.view(np.uint32)
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31)).astype(np.uint32)


def from_order_keys(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys >> 31 == 1, keys & np.uint32(0x7FFFFFFF), ~keys).astype(np.uint32)
    return bits.view(np.float32)
