"""The filter job: a score set and rules in; manifests, a summary and optionally new tars and a report out.

Score once, filter many times: the rules (`pipelines.filtering`) run on the Parquet scores alone, and only
the optional resharding and the report's thumbnails read images again. No process holds the score set: the
work is passes over batches of score files, each a function of one batch (`pipelines.tasks`: threads here, or
Ray tasks with `use_ray`), and the driver keeps only sums: counts per group, score sketches, the cuts.

0. footers: each score file's rows and columns (a `--per` column no file has fails here, before any work);
   the files are cut into batches of at most `block_rows` rows (a bigger file is a batch of its own).
1. count, per batch: rules 1-4; the score sketches; with fraction rules, the eligible rows spilled under
   `OUT/_work/` in rank order, and their count per group.
2. cut (fraction rules only): groups of at most `block_rows` eligible rows go, whole, into partitions of at most
   that many rows; each partition ranks its rows and finds its groups' cut rows (`filtering.cut_rows`). A bigger
   group's cuts are selected from its spilled rows in three scans, none holding the group: a histogram of the
   scores' order finds the bucket of each cut's rank, a finer one the exact score, then the rows of that score
   (ties) are ranked by key and source. The driver joins the cut rows into one row per group
   (`filtering.cuts_from_rows`).
3. decide, per batch: its rows decided again (`filtering.apply_cuts` for the fraction rules) and its manifest
   parts written; the driver sums the counts.

Under `output` (a folder or prefix), each file committed atomically:
- `kept.parquet`: the kept rows, as `pipelines.filtering.MANIFEST_SCHEMA` plus the scoring model in its
  metadata; one file when the score set is one batch, else a folder of parts (`part-000000.parquet`, ... one
  per batch, in score-file order) and `_parts.json` listing them, written last. Each part is in canonical
  order (shard, key, source). Parquet readers (pyarrow, pandas, Spark, `scoreset.list_parquet`) read either form.
- `dropped.parquet` (`emit_dropped`): the other rows, the same way;
- `summary.json`: the scoring model, the rules, their counts per rule, the largest and most-dropped groups
  (the `per` column, else shard), scores before and after; `groups.parquet`: every group's counts;
- `report.html` (`report`): the score set's page, showing kept vs dropped (`pipelines.report`).
Manifests and summary are deterministic: the same score files, rules and `block_rows` give the same bytes,
whichever runner ran the tasks.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.fetch import SourceFormat
from pipelines.filtering import (
    CANDIDATE_SCHEMA,
    DECIDED_BY,
    ELIGIBLE,
    GROUP,
    KEPT,
    RANK_ORDER,
    FilterConfig,
    apply_cuts,
    candidates,
    canonical,
    check_columns,
    cut_rows,
    cuts_from_rows,
    keep_counts,
    labelled,
    manifest,
    passing_candidates,
    row_decisions,
)
from pipelines.scoreset import (
    FILES_PER_TASK,
    ScoreSetError,
    join_column,
    list_parquet,
    metadata_lookup,
    read_footers,
    read_parquet_files,
    scoring_manifest,
    scoring_model,
)
from pipelines.storage import Storage, reason
from pipelines.summary import (
    BUCKET_SHIFT,
    FilterSummary,
    ScoreSketch,
    from_order_keys,
    groups_table,
    merge_counts,
    order_keys,
    rule_counts,
    summary_groups,
)
from pipelines.tasks import map_tasks
from pipelines.writer import OUTPUT_SCHEMA
from piqa_model.errors import ConfigError

if TYPE_CHECKING:  # resharding and the report import Ray and matplotlib: only a run that asks for them does
    from pipelines.report import ReportConfig
    from pipelines.reshard import ReshardConfig, ReshardSummary

KEPT_FILE, DROPPED_FILE, SUMMARY_FILE, REPORT_FILE = "kept.parquet", "dropped.parquet", "summary.json", "report.html"
GROUPS_FILE, PARTS_FILE, WORK = "groups.parquet", "_parts.json", "_work"
PART_NAME = "part-{:06d}.parquet"
BLOCK_ROWS = 250_000  # the most rows a task holds: a batch of score files, a partition of eligible rows
SPILL_ROW_GROUP = 4_096  # spilled rows are read by group (and score): row groups small enough to skip
SPILLS_PER_TASK = 8  # spill files one selection task scans
BUCKETS = 1 << BUCKET_SHIFT
REPORT_COLUMNS = ("face_box",)


@dataclass(frozen=True)
class FilterJobConfig:
    scores: str  # the output folder/prefix of `piqa score`
    output: str  # folder/prefix for the manifests, summary and report
    rules: FilterConfig = field(default_factory=FilterConfig)
    metadata: str | None = None  # Parquet file or folder holding the `rules.per` column, joined by key
    metadata_key: str = "key"
    emit_dropped: bool = False
    reshard: ReshardConfig | None = None  # write the kept samples into WebDataset tars
    report: bool = False
    source_format: SourceFormat = field(default_factory=SourceFormat)
    use_ray: bool = False  # run the passes as Ray tasks (thousands of files on a cluster)
    s3_endpoint: str | None = None
    block_rows: int = BLOCK_ROWS

    def __post_init__(self) -> None:
        if self.metadata and not self.rules.per:
            raise ConfigError("--metadata joins the --per column: name the metadata column to group by with --per")
        if self.block_rows < 1:
            raise ConfigError(f"block_rows must be at least 1, got {self.block_rows}")


@dataclass(frozen=True)
class FilterOutcome:
    summary: FilterSummary
    written: list[str]  # URIs of the manifests, summary and report
    resharded: ReshardSummary | None = None

    def lines(self) -> list[str]:
        lines = self.summary.lines()
        lines += [self.resharded.line()] if self.resharded else []
        return lines + [f"wrote {uri}" for uri in self.written]


@dataclass(frozen=True)
class _Reading:
    """What every task needs to read a batch of score files as the rules see it."""

    rules: FilterConfig
    storage: Storage
    metadata: pa.Table | None  # a `metadata_lookup` for the `per` column
    schema: pa.Schema  # the columns read: what the rules, manifests and report need, as the files have them

    def load(self, uris: list[str]) -> pa.Table:
        """The batch's rows, in file order; a column a file lacks (a bundle without LIQE) is nulls there."""
        import pyarrow.dataset  # imports pandas: not for the CLI's other commands

        fs, _ = self.storage.filesystem(uris[0])
        paths = [self.storage.filesystem(uri)[1] for uri in uris]
        try:
            dataset = pyarrow.dataset.dataset(paths, schema=self.schema, format="parquet", filesystem=fs)
            table = self.storage.reading(dataset.to_table)
        except Exception as exc:
            raise ScoreSetError(f"cannot read the score files {uris[0]} ... {uris[-1]}: {reason(exc)}") from None
        if self.metadata is not None:
            table = join_column(table, self.metadata, self.rules.per)
        check_columns(table.schema, self.rules)
        return table


def _columns_read(found: dict[str, pa.Field], config: FilterJobConfig) -> pa.Schema:
    """The columns every batch reads, with the type the score files give each (LIQE's, from the writer's schema,
    when no file has them). A `per` column no file has is an error, unless `--metadata` brings it."""
    if not config.metadata:
        check_columns(pa.schema(found.values()), config.rules)
    wanted = [*config.rules.columns, *(REPORT_COLUMNS if config.report else ())]
    if config.metadata:  # the `per` column comes from the metadata
        wanted.remove(config.rules.per)
    known = [name for name in wanted if name in found or name in OUTPUT_SCHEMA.names]
    return pa.schema([found.get(name) or OUTPUT_SCHEMA.field(name) for name in known])


@dataclass(frozen=True)
class _Spill:
    """A spill file and the range of groups it holds, as `_group_order` keys."""

    uri: str
    first: tuple[int, str]
    last: tuple[int, str]


def _group_order(group: str | None) -> tuple[int, str]:
    """A group's place in the sorted order of groups (null last)."""
    return (1, "") if group is None else (0, group)


def _holding(spills: list[_Spill], first: str | None, last: str | None) -> list[str]:
    """The spill files that may hold rows of the groups from `first` to `last` (in sorted order)."""
    low, high = _group_order(first), _group_order(last)
    return [spill.uri for spill in spills if spill.first <= high and spill.last >= low]


@dataclass
class _Counts:
    """Pass 1's sums: merged over batches."""

    sizes: list[pa.Table] = field(default_factory=list)  # (group, n) of eligible rows
    spills: list[_Spill] = field(default_factory=list)  # the eligible rows, with fraction rules
    before: ScoreSketch = field(default_factory=ScoreSketch)  # every score
    eligible: ScoreSketch = field(default_factory=ScoreSketch)  # the scores of rows passing rules 1-4

    def merge(self, other: _Counts) -> None:
        self.sizes = [_sum_sizes([*self.sizes, *other.sizes])]
        self.spills += other.spills
        self.before.merge(other.before)
        self.eligible.merge(other.eligible)


def run_filter(config: FilterJobConfig) -> FilterOutcome:
    """Apply the rules to the score set and write the outputs; fails before writing on a bad input or rule."""
    storage = Storage.from_environment(config.s3_endpoint)
    files = list_parquet(config.scores, storage)
    storage.check_writable(config.output)
    lookup = None
    if config.metadata:
        metadata = read_parquet_files(list_parquet(config.metadata, storage), storage)
        lookup = metadata_lookup(metadata, config.rules.per, config.metadata_key)
    chunks = [files[start : start + FILES_PER_TASK] for start in range(0, len(files), FILES_PER_TASK)]
    file_rows: list[int] = []
    found: dict[str, pa.Field] = {}
    for rows, columns in map_tasks(read_footers, chunks, use_ray=False, shared={"storage": storage}):
        file_rows += rows
        found |= {name: column for name, column in columns.items() if name not in found}
    reading = _Reading(config.rules, storage, lookup, _columns_read(found, config))
    batches = _batches(files, file_rows, config.block_rows)
    scoring = scoring_manifest(config.scores, storage)
    work = _join(config.output, WORK)
    try:
        counts = _Counts()
        shared = {"reading": reading, "work": work}
        for counted in map_tasks(_count, enumerate(batches), use_ray=config.use_ray, shared=shared):
            counts.merge(counted)
        cuts, after = None, counts.eligible
        if config.rules.uses_fractions:
            cuts, after = _cuts(counts, reading, config)
        outcome = _decide(batches, sum(file_rows), reading, cuts, counts.before, after, scoring, config)
    finally:
        _clear(work, storage)
    return outcome


def _count(item: tuple[int, list[str]], *, reading: _Reading, work: str) -> _Counts:
    """Pass 1 over one batch: its sums; with fraction rules, its eligible rows spilled in rank order."""
    number, uris = item
    counts = _Counts()
    table = reading.load(uris)
    decided = row_decisions(table, reading.rules)
    counts.before.add(table["score"])
    counts.eligible.add(table["score"].filter(pa.array(decided == ELIGIBLE)))
    if reading.rules.uses_fractions:
        rows = candidates(table, decided, reading.rules)
        rows = rows.take(pc.sort_indices(rows, RANK_ORDER))
        counts.sizes = [_sum_sizes([rows.group_by(GROUP).aggregate([([], "count_all")])])]
        uri = posixpath.join(work, f"spill-{number:06d}.parquet")
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, row_group_size=SPILL_ROW_GROUP)
        reading.storage.write_atomic(uri, buffer.getvalue())
        if rows.num_rows:
            groups = rows[GROUP]
            counts.spills.append(_Spill(uri, _group_order(groups[0].as_py()), _group_order(groups[-1].as_py())))
    return counts


def _sum_sizes(tables: list[pa.Table]) -> pa.Table:
    """(group, n) tables summed by group (an aggregate's count column may have any name)."""
    tables = [table.rename_columns([GROUP, "n"]) for table in tables]
    table = (
        pa.concat_tables(tables)
        if tables
        else pa.table({GROUP: pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    )
    return table.group_by(GROUP).aggregate([("n", "sum")]).rename_columns([GROUP, "n"])


def _batches(files: list[str], rows: list[int], block_rows: int) -> list[list[str]]:
    """`files` cut, in order, into runs of at most `block_rows` rows (a bigger file alone)."""
    batches: list[list[str]] = []
    held = block_rows
    for uri, n in zip(files, rows, strict=True):
        if held + n > block_rows:
            batches.append([])
            held = 0
        batches[-1].append(uri)
        held += n
    return batches


@dataclass(frozen=True)
class _Partition:
    where: pa.Expression  # its rows among the spilled ones
    sizes: pa.Table  # (group, n, offset 0) of its groups


def _plan(sizes: pa.Table, block_rows: int) -> tuple[list[_Partition], pa.Table]:
    """Runs of whole groups (in sorted order) of at most `block_rows` eligible rows in all, one partition each,
    and the groups bigger than that, whose cuts `_select_cuts` finds."""
    sizes = sizes.take(pc.sort_indices(sizes, [(GROUP, "ascending")]))
    n = sizes["n"].to_numpy()
    plan: list[_Partition] = []
    start, held = 0, 0
    for i, count in enumerate([*n[n <= block_rows], block_rows + 1]):
        if held + count > block_rows and i > start:
            groups = sizes.filter(pa.array(n <= block_rows)).slice(start, i - start)
            plan.append(
                _Partition(
                    _groups_between(groups[GROUP]),
                    groups.append_column("offset", pa.array(np.zeros(groups.num_rows, np.int64))),
                )
            )
            start, held = i, 0
        held += count
    return plan, sizes.filter(pa.array(n > block_rows))


def _is_group(group: str | None) -> pa.Expression:
    return pc.field(GROUP).is_null() if group is None else pc.field(GROUP) == group


def _groups_between(groups: pa.ChunkedArray) -> pa.Expression:
    """The rows whose group is one of `groups`, a run of the sorted groups (null last)."""
    values = pc.drop_null(groups)
    between = None
    if len(values):
        between = (pc.field(GROUP) >= values[0].as_py()) & (pc.field(GROUP) <= values[-1].as_py())
    if groups.null_count:
        return pc.field(GROUP).is_null() if between is None else between | pc.field(GROUP).is_null()
    return between


def _spilled(uris: list[str], where: pa.Expression, reading: _Reading, columns: list[str] | None = None) -> pa.Table:
    """The spilled rows in `uris` that `where` selects (row groups whose statistics rule them out are skipped)."""
    import pyarrow.dataset  # imports pandas: only for runs with fraction rules

    fs, _ = reading.storage.filesystem(uris[0])
    paths = [reading.storage.filesystem(uri)[1] for uri in uris]
    dataset = pyarrow.dataset.dataset(paths, format="parquet", filesystem=fs)
    return reading.storage.reading(lambda: dataset.to_table(columns=columns, filter=where))


def _cut(item: tuple[pa.Expression, pa.Table, list[str]], *, reading: _Reading) -> tuple[pa.Table, ScoreSketch]:
    """Pass 2 over one partition: its cut rows, and the sketch of the scores that pass the fraction rules."""
    where, sizes, spills = item
    rows = _spilled(spills, where, reading).cast(CANDIDATE_SCHEMA)
    passing = ScoreSketch()
    passing.add(rows["score"].filter(pa.array(passing_candidates(rows, sizes, reading.rules))))
    return cut_rows(rows, sizes, reading.rules), passing


def _scan(uris: list[str], *, reading: _Reading, filters: list[pa.Expression], level: str) -> list[Any]:
    """Pass 2, selection: per filter, over some spill files, a histogram of the selected rows' score order keys
    (`high`: by bucket, index 0 for rows without a score; `low`: the low bits within a bucket) or the rows."""
    results = []
    for where in filters:
        rows = _spilled(uris, where, reading, columns=None if level == "rows" else ["score"])
        if level == "rows":
            results.append(rows.cast(CANDIDATE_SCHEMA))
            continue
        scores = rows["score"]
        keys = order_keys(pc.drop_null(scores).to_numpy(zero_copy_only=False).astype(np.float32))
        if level == "high":
            histogram = np.bincount((keys >> BUCKET_SHIFT).astype(np.int64) + 1, minlength=BUCKETS + 1)
            histogram[0] = scores.null_count
        else:
            histogram = np.bincount((keys & (BUCKETS - 1)).astype(np.int64), minlength=BUCKETS)
        results.append(histogram)
    return results


def _select_cuts(
    huge: pa.Table, reading: _Reading, spills: list[str], config: FilterJobConfig
) -> tuple[pa.Table, ScoreSketch]:
    """The cut rows of the groups too big for one task, selected in three scans of their spilled rows: which
    bucket of the score order holds each cut's rank (by a histogram), which exact score in that bucket (by a
    histogram of the rest of the bits), then the rows of that score, ranked by key and source. Also the buckets
    of the scores that pass, for the summary."""
    chunks = [spills[start : start + SPILLS_PER_TASK] for start in range(0, len(spills), SPILLS_PER_TASK)]

    def scan(filters: list[pa.Expression], level: str) -> list[Any]:
        shared = {"reading": reading, "filters": filters, "level": level}
        merged: list[Any] = []
        for parts in map_tasks(_scan, chunks, use_ray=config.use_ray, shared=shared):
            merged = parts if not merged else [_merged(a, b) for a, b in zip(merged, parts, strict=True)]
        return merged

    groups, n = huge[GROUP].to_pylist(), huge["n"].to_numpy()
    high = scan([_is_group(group) for group in groups], "high")
    passing = ScoreSketch.of_buckets(np.zeros(BUCKETS, np.int64))
    targets = []  # (rule, group position, rank of the cut row, rows above its bucket, its bucket)
    for g in range(len(groups)):
        keeps = {rule: int(k[0]) for rule, k in keep_counts(n[g : g + 1], config.rules).items() if k is not None}
        for rule, keep in keeps.items():
            if 0 < keep < n[g]:
                targets.append((rule, g, keep - 1, *_bucket_of(high[g], keep - 1)))
        passes = min(keeps.values())
        if passes:
            above, bucket = _bucket_of(high[g], passes - 1)
            passing.buckets[bucket + 1 :] += high[g][bucket + 2 :]
            if bucket >= 0:
                passing.buckets[bucket] += passes - above
    passing.count = int(passing.buckets.sum())
    exact = []  # per target: rows above its exact score, and the filter for the rows of that score
    with_score = [t for t in targets if t[4] >= 0]
    lows = scan([_is_group(groups[g]) & _in_bucket(bucket) for _, g, _, _, bucket in with_score], "low")
    for target, low in zip(with_score, lows, strict=True):
        rule, g, rank, above, bucket = target
        within, bits = _bucket_of(np.concatenate([[0], low]), rank - above)
        value = float(from_order_keys(np.array([(bucket << BUCKET_SHIFT) | bits], np.uint32))[0])
        exact.append(
            (target, above + within, _is_group(groups[g]) & (pc.field("score") == pa.scalar(value, pa.float32())))
        )
    for target in targets:
        if target[4] < 0:  # the cut is among the rows without a score
            exact.append((target, target[3], _is_group(groups[target[1]]) & pc.field("score").is_null()))
    found = [CANDIDATE_SCHEMA.empty_table().append_column("rule", pa.array([], pa.string()))]
    for (target, above, _), rows in zip(exact, scan([where for _, _, where in exact], "rows"), strict=True):
        rows = rows.take(pc.sort_indices(rows, [("key", "ascending"), ("source", "ascending")]))
        found.append(rows.slice(target[2] - above, 1).append_column("rule", pa.array([target[0]], pa.string())))
    return pa.concat_tables(found), passing


def _bucket_of(histogram: np.ndarray, rank: int) -> tuple[int, int]:
    """For a histogram whose last index ranks first (`_scan`'s): the rows in the buckets ranking above the one
    holding `rank` (0-based), and that bucket, numbered so that index 0 of the histogram is -1."""
    ends = np.cumsum(histogram[::-1])
    from_top = int(np.searchsorted(ends, rank, "right"))
    return (int(ends[from_top - 1]) if from_top else 0), len(histogram) - 2 - from_top


def _in_bucket(bucket: int) -> pa.Expression:
    low, high = from_order_keys(np.array([bucket << BUCKET_SHIFT, (bucket << BUCKET_SHIFT) | (BUCKETS - 1)], np.uint32))
    return (pc.field("score") >= pa.scalar(low, pa.float32())) & (pc.field("score") <= pa.scalar(high, pa.float32()))


def _merged(first: Any, second: Any) -> Any:
    return first + second if isinstance(first, np.ndarray) else pa.concat_tables([first, second])


def _cuts(counts: _Counts, reading: _Reading, config: FilterJobConfig) -> tuple[pa.Table, ScoreSketch]:
    """Pass 2: every group's cut rows (CUT_SCHEMA), and the sketch of the eligible scores that pass."""
    [sizes] = counts.sizes
    plan, huge = _plan(sizes, config.block_rows)
    found, passing = [cut_rows(CANDIDATE_SCHEMA.empty_table(), sizes, config.rules)], ScoreSketch()
    items = [
        (p.where, p.sizes, _holding(counts.spills, p.sizes[GROUP][0].as_py(), p.sizes[GROUP][-1].as_py())) for p in plan
    ]
    for rows, sketch in map_tasks(_cut, items, use_ray=config.use_ray, shared={"reading": reading}):
        found.append(rows)
        passing.merge(sketch)
    if huge.num_rows:
        holding = dict.fromkeys(
            uri for group in huge[GROUP].to_pylist() for uri in _holding(counts.spills, group, group)
        )
        rows, sketch = _select_cuts(huge, reading, list(holding), config)
        found.append(rows)
        passing.merge(sketch)
    return cuts_from_rows(sizes, pa.concat_tables(found), config.rules), passing


def _decide_batch(
    item: tuple[int, list[str]], *, reading: _Reading, cuts: pa.Table | None, context: dict[str, Any]
) -> dict[str, Any]:
    """Pass 3 over one batch: its rows decided, its manifest parts written, its counts and refined sketches."""
    number, uris = item
    table = canonical(reading.load(uris), reading.rules)
    decided = row_decisions(table, reading.rules)
    if cuts is not None:
        apply_cuts(table, decided, cuts, reading.rules)
    table = labelled(table, decided)
    is_kept = pc.equal(table[DECIDED_BY], KEPT)
    before, after = ScoreSketch(targets=context["before"]), ScoreSketch(targets=context["after"])
    before.add(table["score"])
    after.add(table["score"].filter(is_kept))
    written = {}
    for name, kept in context["manifests"].items():
        part = manifest(table, reading.rules, context["model"], kept=kept)
        uri = (
            _join(context["output"], name)
            if context["single"]
            else _join(context["output"], name, PART_NAME.format(number))
        )
        reading.storage.write_atomic(uri, _parquet_bytes(part))
        written[name] = (posixpath.basename(uri), part.num_rows)
    return {
        "counts": rule_counts(summary_groups(table, reading.rules), table[DECIDED_BY]),
        "before": before,
        "after": after,
        "written": written,
        "report": table.take(pa.array(range(0, table.num_rows, every))) if (every := context["report_every"]) else None,
    }


def _decide(
    batches: list[list[str]],
    rows: int,
    reading: _Reading,
    cuts: pa.Table | None,
    before: ScoreSketch,
    after: ScoreSketch,
    scoring: dict[str, Any],
    config: FilterJobConfig,
) -> FilterOutcome:
    storage = reading.storage
    model = scoring_model(scoring)
    manifests = {KEPT_FILE: True, **({DROPPED_FILE: False} if config.emit_dropped else {})}
    single = len(batches) == 1
    for name in manifests:
        _clear(_join(config.output, name), storage)  # an earlier run's, in either form
    context = {
        "before": before.refined().targets,
        "after": after.refined().targets,
        "manifests": manifests,
        "model": model,
        "output": config.output,
        "single": single,
        "report_every": _report_every(rows, config),  # 0: no report
    }
    counts: list[pa.Table] = []
    refined_before, refined_after = ScoreSketch(targets=context["before"]), ScoreSketch(targets=context["after"])
    parts: dict[str, list[tuple[str, int]]] = {name: [] for name in manifests}
    report_rows = []
    shared = {"reading": reading, "cuts": cuts, "context": context}
    for result in map_tasks(_decide_batch, enumerate(batches), use_ray=config.use_ray, shared=shared):
        counts = [merge_counts([*counts, result["counts"]])]
        refined_before.merge(result["before"])
        refined_after.merge(result["after"])
        for name, part in result["written"].items():
            parts[name].append(part)
        if result["report"] is not None:
            report_rows.append(result["report"])
    summary = FilterSummary.of(counts[0], before.stats(refined_before), after.stats(refined_after), config.rules)
    written = []
    for name in manifests:
        written.append(_join(config.output, name))
        if not single:
            listing = {"parts": [part for part, _ in parts[name]], "rows": sum(rows for _, rows in parts[name])}
            storage.write_atomic(_join(config.output, name, PARTS_FILE), json.dumps(listing, indent=1).encode())
    document = {"scores": config.scores, "metadata": config.metadata, "scoring": model, "rules": config.rules.to_dict()}
    document |= summary.to_dict() | {"groups_file": GROUPS_FILE}
    storage.write_atomic(_join(config.output, GROUPS_FILE), _parquet_bytes(groups_table(counts[0])))
    written.append(_join(config.output, GROUPS_FILE))
    storage.write_atomic(_join(config.output, SUMMARY_FILE), json.dumps(document, indent=2, default=str).encode())
    written.append(_join(config.output, SUMMARY_FILE))
    if config.report:
        from pipelines.report import build_report, write_report

        written.append(_join(config.output, REPORT_FILE))
        table = pa.concat_tables(report_rows)
        page = build_report(table, storage, _report_config(config), config.scores, scoring, sampled_from=rows)
        write_report(written[-1], page, storage)
    resharded = None
    if config.reshard:
        from pipelines.reshard import reshard

        kept = read_parquet_files(list_parquet(_join(config.output, KEPT_FILE), storage), storage)
        resharded = reshard(kept, config.reshard, storage, config.source_format)
    return FilterOutcome(summary, written, resharded)


def _report_every(rows: int, config: FilterJobConfig) -> int:
    """The report is drawn from every n-th row of each batch; 0 without a report."""
    if not config.report:
        return 0
    from pipelines.report import sample_every

    return sample_every(rows, _report_config(config))


def _report_config(config: FilterJobConfig) -> ReportConfig:
    from pipelines.report import ReportConfig

    title = "Portrait quality filter: kept vs dropped"
    return ReportConfig(title=title, group=config.rules.per, source_format=config.source_format)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _clear(uri: str, storage: Storage) -> None:
    """Remove the file or folder at `uri`, if there is one."""
    fs, path = storage.filesystem(uri)
    if fs.exists(path):
        storage.remove([uri], recursive=True)


def _join(prefix: str, *names: str) -> str:
    return posixpath.join(prefix.rstrip("/"), *names)
