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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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
from pipelines.report import ReportConfig, build_report, write_report
from pipelines.reshard import ReshardConfig, ReshardSummary, reshard
from pipelines.scoreset import (
    REQUIRED_COLUMNS,
    ScoreSetError,
    join_column,
    list_parquet,
    metadata_lookup,
    read_parquet_files,
    scoring_manifest,
    scoring_model,
)
from pipelines.storage import Storage
from pipelines.summary import FilterSummary, ScoreSketch, groups_table, merge_counts, rule_counts, summary_groups
from pipelines.tasks import map_tasks
from pipelines.writer import OUTPUT_SCHEMA
from piqa_model.errors import ConfigError

KEPT_FILE, DROPPED_FILE, SUMMARY_FILE, REPORT_FILE = "kept.parquet", "dropped.parquet", "summary.json", "report.html"
GROUPS_FILE, PARTS_FILE, WORK = "groups.parquet", "_parts.json", "_work"
PART_NAME = "part-{:06d}.parquet"
BLOCK_ROWS = 250_000  # the most rows a task holds: a batch of score files, a partition of eligible rows
FILES_PER_COUNT_TASK = 64
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
    """What every task needs to read a score file as the rules see it."""

    rules: FilterConfig
    storage: Storage
    metadata: pa.Table | None  # a `metadata_lookup` for the `per` column
    extra_columns: tuple[str, ...] = ()

    def load(self, uri: str, found: dict[str, pa.Field] | None = None) -> pa.Table:
        """The columns of one score file that the rules, manifests and report read, in canonical order; score
        columns it lacks (a bundle without LIQE) are nulls. The columns it has go into `found`, by name."""
        fs, path = self.storage.filesystem(uri)
        try:
            with fs.open(path, "rb") as handle:
                data = handle.read()
            file = pq.ParquetFile(io.BytesIO(data))
            present = set(file.schema_arrow.names)
            if found is not None:
                found.update((field.name, field) for field in file.schema_arrow)
            wanted = [*self.rules.columns, *self.extra_columns]
            table = file.read(columns=[name for name in wanted if name in present])
        except Exception as exc:
            raise ScoreSetError(f"{uri} is not a readable parquet file: {exc}") from None
        missing = [name for name in REQUIRED_COLUMNS if name not in present]
        if missing:
            raise ScoreSetError(f"{uri} does not look like `piqa score` output: no column(s) {', '.join(missing)}")
        for name in wanted:
            if name not in present and name in OUTPUT_SCHEMA.names:
                table = table.append_column(
                    OUTPUT_SCHEMA.field(name), pa.nulls(table.num_rows, OUTPUT_SCHEMA.field(name).type)
                )
        if self.metadata is not None:
            table = join_column(table, self.metadata, self.rules.per)
        return canonical(table, self.rules)

    def load_all(self, uris: list[str]) -> pa.Table:
        return pa.concat_tables([self.load(uri) for uri in uris], promote_options="permissive")


@dataclass
class _Counts:
    """Pass 1's sums: merged over batches."""

    file_rows: list[int] = field(default_factory=list)
    sizes: list[pa.Table] = field(default_factory=list)  # (group, n) of eligible rows
    samples: list[pa.Table] = field(default_factory=list)  # (group, score) of sampled eligible rows
    before: ScoreSketch = field(default_factory=ScoreSketch)  # every score
    eligible: ScoreSketch = field(default_factory=ScoreSketch)  # the scores of rows passing rules 1-4
    columns: dict[str, pa.Field] = field(default_factory=dict)  # the columns some file has, by name

    def merge(self, other: _Counts) -> None:
        self.file_rows += other.file_rows
        self.sizes = [_sum_sizes([*self.sizes, *other.sizes])]
        self.samples = [pa.concat_tables([_EMPTY_SAMPLE, *self.samples, *other.samples])]
        self.columns |= other.columns
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
    reading = _Reading(config.rules, storage, lookup, REPORT_COLUMNS if config.report else ())
    scoring = scoring_manifest(config.scores, storage)
    work = _join(config.output, WORK)
    try:
        counts = _Counts()
        chunks = [files[start : start + FILES_PER_COUNT_TASK] for start in range(0, len(files), FILES_PER_COUNT_TASK)]
        for counted in map_tasks(_count, chunks, use_ray=config.use_ray, shared={"reading": reading}):
            counts.merge(counted)
        if lookup is None:  # a column no file has is not a score column
            check_columns(pa.schema(counts.columns.values()), config.rules)
        batches = _batches(files, counts.file_rows, config.block_rows)
        cuts, after = None, counts.eligible
        if config.rules.uses_fractions:
            cuts, after = _cuts(batches, counts, reading, work, config)
        outcome = _decide(batches, reading, cuts, counts.before, after, scoring, config)
    finally:
        _clear(work, storage)
    return outcome


def _count(uris: list[str], *, reading: _Reading) -> _Counts:
    """Pass 1 over some score files, one at a time."""
    counts = _Counts()
    for uri in uris:
        table = reading.load(uri, counts.columns)
        decided = row_decisions(table, reading.rules)
        eligible = decided == ELIGIBLE
        counts.file_rows.append(table.num_rows)
        counts.before.add(table["score"])
        counts.eligible.add(table["score"].filter(pa.array(eligible)))
        if reading.rules.uses_fractions:
            rows = candidates(table, decided, reading.rules)
            counts.sizes.append(rows.group_by(GROUP).aggregate([([], "count_all")]).rename_columns([GROUP, "n"]))
            counts.samples.append(
                rows.select([GROUP, "score"]).take(pa.array(np.arange(0, rows.num_rows, SAMPLE_EVERY)))
            )
    counts.sizes = [_sum_sizes(counts.sizes)]
    counts.samples = [pa.concat_tables([_EMPTY_SAMPLE, *counts.samples])]
    return counts


def _sum_sizes(tables: list[pa.Table]) -> pa.Table:
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


def _plan(sizes: pa.Table, samples: pa.Table, block_rows: int) -> pa.Table:
    """Partitions of the eligible rows: per group (in sorted order) its first partition and, for a group of
    more than `block_rows` rows, the scores that cut it into ranges (best first), one partition each."""
    sizes = sizes.take(pc.sort_indices(sizes, [(GROUP, "ascending")]))
    groups, n = sizes[GROUP].to_pylist(), sizes["n"].to_numpy()
    partition = np.zeros(len(groups), dtype=np.int64)
    splits: list[list[float] | None] = [None] * len(groups)
    current, held = -1, block_rows
    for i, (group, count) in enumerate(zip(groups, n, strict=True)):
        if count > block_rows:
            scores = _sampled_scores(samples, group)
            pieces = math.ceil(count / block_rows)
            cuts = np.unique(np.quantile(scores, np.arange(1, pieces) / pieces)) if scores.size else np.array([])
            splits[i] = sorted(cuts.astype(np.float32).tolist(), reverse=True)
            partition[i] = current + 1
            current += len(splits[i]) + 1
            held = block_rows
            continue
        if held + count > block_rows:
            current, held = current + 1, 0
        partition[i] = current
        held += count
    return pa.table(
        {GROUP: sizes[GROUP], "n": n, "partition": partition, "splits": pa.array(splits, pa.list_(pa.float32()))}
    )


def _sampled_scores(samples: pa.Table, group: str | None) -> np.ndarray:
    mine = pc.is_null(samples[GROUP]) if group is None else pc.fill_null(pc.equal(samples[GROUP], group), False)
    return pc.drop_null(samples["score"].filter(mine)).to_numpy(zero_copy_only=False)


def _partition_of(rows: pa.Table, plan: pa.Table) -> np.ndarray:
    """Each candidate row's partition under `plan`."""
    at = pc.index_in(rows[GROUP], value_set=plan[GROUP], skip_nulls=False).to_numpy(zero_copy_only=False)
    partition = plan["partition"].to_numpy()[at]
    split_groups = np.flatnonzero(pc.is_valid(plan["splits"]).to_numpy(zero_copy_only=False))
    for g in np.intersect1d(split_groups, at):
        mine = np.flatnonzero(at == g)
        ascending = np.array(plan["splits"][int(g)].as_py()[::-1], dtype=np.float32)
        scores = rows["score"].take(pa.array(mine)).to_numpy(zero_copy_only=False)
        better = len(ascending) - np.searchsorted(ascending, scores, side="right")  # cuts above the score
        better[np.isnan(scores.astype(np.float64))] = len(ascending)  # a missing score ranks last
        partition[mine] += better
    return partition


def _spill(item: tuple[int, list[str]], *, reading: _Reading, plan: pa.Table, work: str) -> dict[str, Any]:
    """Pass 2 over one batch: its eligible rows, one row group per partition, in one spill file."""
    number, uris = item
    tables = []
    for uri in uris:
        table = reading.load(uri)
        tables.append(candidates(table, row_decisions(table, reading.rules), reading.rules))
    rows = pa.concat_tables(tables) if tables else CANDIDATE_SCHEMA.empty_table()
    partition = _partition_of(rows, plan)
    order = np.argsort(partition, kind="stable")
    rows, partition = rows.take(pa.array(order)), partition[order]
    present, starts, counts = np.unique(partition, return_index=True, return_counts=True)
    uri = posixpath.join(work, f"spill-{number:06d}.parquet")
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, CANDIDATE_SCHEMA) as writer:
        for start, count in zip(starts, counts, strict=True):
            writer.write_table(rows.slice(int(start), int(count)), row_group_size=int(count))
    reading.storage.write_atomic(uri, buffer.getvalue())
    return {"uri": uri, "partitions": present.tolist(), "rows": counts.tolist()}


def _cut(item: dict[str, Any], *, reading: _Reading) -> tuple[pa.Table, ScoreSketch]:
    """Pass 3 over one partition: its cut rows, and the sketch of the scores that pass the fraction rules."""
    tables = []
    for uri, row_group in item["pieces"]:
        fs, path = reading.storage.filesystem(uri)
        with fs.open(path, "rb") as handle:
            tables.append(pq.ParquetFile(handle).read_row_group(row_group))
    rows = pa.concat_tables(tables) if tables else CANDIDATE_SCHEMA.empty_table()
    sizes = item["sizes"]
    passing = ScoreSketch()
    passing.add(rows["score"].filter(pa.array(passing_candidates(rows, sizes, reading.rules))))
    return cut_rows(rows, sizes, reading.rules), passing


def _cuts(
    batches: list[list[str]], counts: _Counts, reading: _Reading, work: str, config: FilterJobConfig
) -> tuple[pa.Table, ScoreSketch]:
    """Passes 2 and 3: every group's cut rows (CUT_SCHEMA), and the sketch of the eligible scores that pass."""
    [sizes] = counts.sizes
    plan = _plan(sizes, pa.concat_tables([_EMPTY_SAMPLE, *counts.samples]), config.block_rows)
    spilled = list(
        map_tasks(
            _spill, enumerate(batches), use_ray=config.use_ray, shared={"reading": reading, "plan": plan, "work": work}
        )
    )
    ranges = pc.fill_null(pc.list_value_length(plan["splits"]), 0).to_numpy()
    partitions = int((plan["partition"].to_numpy() + ranges).max(initial=-1)) + 1
    pieces: list[list[tuple[str, int]]] = [[] for _ in range(partitions)]
    held = np.zeros(partitions, dtype=np.int64)
    for spill in spilled:
        for row_group, (p, n) in enumerate(zip(spill["partitions"], spill["rows"], strict=True)):
            pieces[p].append((spill["uri"], row_group))
            held[p] += n
    found, passing = [], ScoreSketch()
    items = _partition_items(plan, pieces, held)
    for rows, sketch in map_tasks(_cut, items, use_ray=config.use_ray, shared={"reading": reading}):
        found.append(rows)
        passing.merge(sketch)
    found = pa.concat_tables(found) if found else cut_rows(CANDIDATE_SCHEMA.empty_table(), plan, config.rules)
    cuts = cuts_from_rows(plan.select([GROUP, "n"]), found, config.rules)
    return cuts, passing


def _partition_items(plan: pa.Table, pieces: list[list[tuple[str, int]]], held: np.ndarray) -> Iterator[dict[str, Any]]:
    """One pass-3 task per partition: its spill row groups and its groups' sizes, with `offset`: the group's rows
    in the partitions before it (a split group's better score ranges; 0 for whole groups)."""
    first = plan["partition"].to_numpy()  # non-decreasing: `_plan` numbers partitions in group order
    ranges = pc.list_value_length(plan["splits"]).to_numpy(zero_copy_only=False)  # NaN: a whole group
    sizes = plan.select([GROUP, "n"])
    for p in range(len(pieces)):
        last = int(np.searchsorted(first, p, "right")) - 1
        if not np.isnan(ranges[last]) and p <= first[last] + ranges[last]:
            mine = sizes.slice(last, 1).append_column("offset", pa.array([held[first[last] : p].sum()], pa.int64()))
        else:
            start = int(np.searchsorted(first, p, "left"))
            mine = sizes.slice(start, last + 1 - start).append_column(
                "offset", pa.array(np.zeros(last + 1 - start, np.int64))
            )
        yield {"pieces": pieces[p], "sizes": mine}


def _decide_batch(
    item: tuple[int, list[str]], *, reading: _Reading, cuts: pa.Table | None, context: dict[str, Any]
) -> dict[str, Any]:
    """Pass 4 over one batch: its rows decided, its manifest parts written, its counts and refined sketches."""
    number, uris = item
    table = canonical(reading.load_all(uris), reading.rules)
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
        "report": table if reading.extra_columns else None,
    }


def _decide(
    batches: list[list[str]],
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
        report = ReportConfig(
            title="Portrait quality filter: kept vs dropped", group=config.rules.per, source_format=config.source_format
        )
        written.append(_join(config.output, REPORT_FILE))
        page = build_report(pa.concat_tables(report_rows), storage, report, config.scores, scoring)
        write_report(written[-1], page, storage)
    resharded = None
    if config.reshard:
        kept = read_parquet_files(list_parquet(_join(config.output, KEPT_FILE), storage), storage)
        resharded = reshard(kept, config.reshard, storage, config.source_format)
    return FilterOutcome(summary, written, resharded)


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
