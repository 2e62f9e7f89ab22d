"""The filter job: a score set and rules in; manifests, a summary and optionally new tars and a report out.

Score once, filter many times: the rules (`pipelines.filtering`) run on the Parquet scores alone, and only
the optional resharding and the report's thumbnails read images again. No process holds the score set: the
work is passes over batches of score files, each a function of one batch (`pipelines.tasks`: threads here, or
Ray tasks with `use_ray`), and the driver keeps only sums: counts per group, score sketches, the cuts.

1. count: rules 1-4 on every row; per group its eligible rows; the score sketches; a sample of eligible scores.
   The files are then cut into batches of at most `block_rows` rows (a bigger file is a batch of its own).
2. (fraction rules only) spill: each batch writes its eligible rows under `OUT/_work/`, one Parquet row group
   per partition. A partition is whole groups of at most `block_rows` eligible rows in all, or a score range
   of one bigger group, cut at its sample's quantiles (a range holds all the rows of one score: ties stay
   together).
3. (fraction rules only) cut: each partition ranks its rows and finds its groups' cut rows
   (`filtering.cut_rows`); the driver joins them into one row per group (`filtering.cuts_from_rows`).
4. decide: each batch decides its rows again (`filtering.apply_cuts` for the fraction rules) and writes its
   manifest part; the driver sums the counts.

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
import math
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
from pipelines.summary import FilterSummary, ScoreSketch, groups_table, merge_counts, rule_counts, summary_groups
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
SPILL_ROW_GROUP = 32_768  # spilled rows are read by group and score range: row groups small enough to skip
SAMPLE_EVERY = 256  # of a batch's eligible rows, those at multiples of this are sampled for the partition cuts
REPORT_COLUMNS = ("face_box",)
_EMPTY_SAMPLE = pa.table({GROUP: pa.array([], pa.string()), "score": pa.array([], pa.float32())})


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
            table = dataset.to_table()
        except Exception as exc:
            raise ScoreSetError(f"cannot read the score files {uris[0]} ... {uris[-1]}: {reason(exc)}") from None
        if self.metadata is not None:
            table = join_column(table, self.metadata, self.rules.per)
        check_columns(table.schema, self.rules)
        return table


def _columns_read(footers: list[tuple[int, pa.Schema]], config: FilterJobConfig) -> pa.Schema:
    """The columns every batch reads, with the type some file gives each (LIQE's, from the writer's schema, when
    no file has them). A `per` column no file has is an error, unless `--metadata` brings it."""
    found: dict[str, pa.Field] = {}
    for _, schema in footers:
        found |= {field.name: field for field in schema if field.name not in found}
    if not config.metadata:
        check_columns(pa.schema(found.values()), config.rules)
    wanted = [*config.rules.columns, *(REPORT_COLUMNS if config.report else ())]
    if config.metadata:  # the `per` column comes from the metadata
        wanted.remove(config.rules.per)
    known = [name for name in wanted if name in found or name in OUTPUT_SCHEMA.names]
    return pa.schema([found.get(name) or OUTPUT_SCHEMA.field(name) for name in known])


@dataclass
class _Counts:
    """Pass 1's sums: merged over batches."""

    sizes: list[pa.Table] = field(default_factory=list)  # (group, n) of eligible rows
    samples: list[pa.Table] = field(default_factory=list)  # (group, score) of sampled eligible rows
    spills: list[str] = field(default_factory=list)  # the eligible rows, with fraction rules
    before: ScoreSketch = field(default_factory=ScoreSketch)  # every score
    eligible: ScoreSketch = field(default_factory=ScoreSketch)  # the scores of rows passing rules 1-4

    def merge(self, other: _Counts) -> None:
        self.sizes = [_sum_sizes([*self.sizes, *other.sizes])]
        self.samples = [pa.concat_tables([_EMPTY_SAMPLE, *self.samples, *other.samples])]
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
    footers = [
        footer
        for part in map_tasks(read_footers, chunks, use_ray=False, shared={"storage": storage})
        for footer in part
    ]
    reading = _Reading(config.rules, storage, lookup, _columns_read(footers, config))
    batches = _batches(files, [rows for rows, _ in footers], config.block_rows)
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
        rows = sum(n for n, _ in footers)
        outcome = _decide(batches, rows, reading, cuts, counts.before, after, scoring, config)
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
        counts.samples = [rows.select([GROUP, "score"]).take(pa.array(np.arange(0, rows.num_rows, SAMPLE_EVERY)))]
        uri = posixpath.join(work, f"spill-{number:06d}.parquet")
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, row_group_size=SPILL_ROW_GROUP)
        reading.storage.write_atomic(uri, buffer.getvalue())
        counts.spills.append(uri)
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
    sizes: pa.Table  # (group, n) of its groups
    split: int | None = None  # a score range of a split group: that group's position among the sorted groups


def _plan(sizes: pa.Table, samples: pa.Table, block_rows: int) -> list[_Partition]:
    """Partitions of the eligible rows: a filter on the spilled rows and its groups' (group, n).

    Groups go in sorted order; a partition is a run of whole groups of at most `block_rows` rows in all, or one
    score range of a bigger group (best first), cut at quantiles of its sampled scores.
    """
    sizes = sizes.take(pc.sort_indices(sizes, [(GROUP, "ascending")]))
    plan: list[_Partition] = []
    run: list[int] = []
    held = 0

    def close_run() -> None:
        if run:
            groups = sizes.slice(run[0], len(run))
            plan.append(_Partition(_groups_between(groups[GROUP]), groups))
            run.clear()

    for i, count in enumerate(sizes["n"].to_numpy()):
        if count > block_rows:
            close_run()
            group = sizes[GROUP][i].as_py()
            scores = _sampled_scores(samples, group)
            pieces = math.ceil(count / block_rows)
            cuts = np.unique(np.quantile(scores, np.arange(1, pieces) / pieces)) if scores.size else np.array([])
            for score_range in _score_ranges(sorted(cuts.astype(np.float32).tolist(), reverse=True)):
                plan.append(_Partition(_is_group(group) & score_range, sizes.slice(i, 1), split=i))
            continue
        if held + count > block_rows:
            close_run()
            held = 0
        run.append(i)
        held += count
    close_run()
    return plan


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


def _score_ranges(cuts: list[float]) -> list[pa.Expression]:
    """Filters for the score ranges between `cuts` (descending), best first: [c1, inf), [c2, c1), ...,
    (-inf, c_last) with the rows without a score. Equal scores fall in one range."""
    score = pc.field("score")
    bounds = [pa.scalar(cut, pa.float32()) for cut in cuts]
    if not bounds:
        return [pc.scalar(True)]
    ranges = [score >= bounds[0]]
    ranges += [(score >= low) & (score < high) for high, low in zip(bounds, bounds[1:], strict=False)]
    return ranges + [(score < bounds[-1]) | score.is_null()]


def _sampled_scores(samples: pa.Table, group: str | None) -> np.ndarray:
    mine = pc.is_null(samples[GROUP]) if group is None else pc.fill_null(pc.equal(samples[GROUP], group), False)
    return pc.drop_null(samples["score"].filter(mine)).to_numpy(zero_copy_only=False)


def _spilled(spills: list[str], where: pa.Expression, reading: _Reading, count_only: bool = False) -> Any:
    import pyarrow.dataset  # imports pandas: only for runs with fraction rules

    fs, _ = reading.storage.filesystem(spills[0])
    dataset = pyarrow.dataset.dataset(
        [reading.storage.filesystem(uri)[1] for uri in spills], format="parquet", filesystem=fs
    )
    if count_only:
        return dataset.count_rows(filter=where)
    return dataset.to_table(filter=where).cast(CANDIDATE_SCHEMA)


def _count_range(where: pa.Expression, *, reading: _Reading, spills: list[str]) -> int:
    """The spilled rows in one score range of a split group."""
    return _spilled(spills, where, reading, count_only=True)


def _cut(item: tuple[pa.Expression, pa.Table], *, reading: _Reading, spills: list[str]) -> tuple[pa.Table, ScoreSketch]:
    """Pass 2 over one partition: its cut rows, and the sketch of the scores that pass the fraction rules."""
    where, sizes = item
    rows = _spilled(spills, where, reading)
    passing = ScoreSketch()
    passing.add(rows["score"].filter(pa.array(passing_candidates(rows, sizes, reading.rules))))
    return cut_rows(rows, sizes, reading.rules), passing


def _cuts(counts: _Counts, reading: _Reading, config: FilterJobConfig) -> tuple[pa.Table, ScoreSketch]:
    """Pass 2: every group's cut rows (CUT_SCHEMA), and the sketch of the eligible scores that pass."""
    [sizes] = counts.sizes
    plan = _plan(sizes, pa.concat_tables([_EMPTY_SAMPLE, *counts.samples]), config.block_rows)
    shared = {"reading": reading, "spills": counts.spills}
    ranges = [partition.where for partition in plan if partition.split is not None]
    range_rows = map_tasks(_count_range, ranges, use_ray=config.use_ray, shared=shared)
    items, above = [], {}  # split group -> its rows in the ranges so far
    for partition in plan:
        offset = 0
        if partition.split is not None:
            offset = above.get(partition.split, 0)
            above[partition.split] = offset + next(range_rows)
        offsets = pa.array([offset] * partition.sizes.num_rows, pa.int64())
        items.append((partition.where, partition.sizes.append_column("offset", offsets)))
    found, passing = [cut_rows(CANDIDATE_SCHEMA.empty_table(), sizes, config.rules)], ScoreSketch()
    for rows, sketch in map_tasks(_cut, items, use_ray=config.use_ray, shared=shared):
        found.append(rows)
        passing.merge(sketch)
    return cuts_from_rows(sizes, pa.concat_tables(found), config.rules), passing


def _decide_batch(
    item: tuple[int, list[str]], *, reading: _Reading, cuts: pa.Table | None, context: dict[str, Any]
) -> dict[str, Any]:
    """Pass 4 over one batch: its rows decided, its manifest parts written, its counts and refined sketches."""
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
