"""The filter job: a score set and rules in; manifests, a summary and optionally new tars and a report out.

Score once, filter many times: the rules (`pipelines.filtering`) run on the Parquet scores alone, and only
the optional resharding and the report's thumbnails read images again. Under `output` (a folder or
prefix), each file committed atomically:
- `kept.parquet`: the kept rows, as `pipelines.filtering.MANIFEST_SCHEMA` plus the scoring model in its metadata;
- `dropped.parquet` (`emit_dropped`): the other rows, same schema;
- `summary.json`: the scoring model, the rules, their counts per rule and per group (the `per` column, else
  shard), scores before and after;
- `report.html` (`report`): the score set's page, showing kept vs dropped (`pipelines.report`).
Manifests and summary are deterministic: the same score files and rules give the same bytes, whichever
reader (local or Ray Data) read them.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.fetch import SourceFormat
from pipelines.filtering import FilterConfig, FilterSummary, decide, manifest, summarize
from pipelines.report import ReportConfig, build_report, write_report
from pipelines.reshard import ReshardConfig, ReshardSummary, reshard
from pipelines.scoreset import (
    join_column,
    list_parquet,
    read_parquet_files,
    read_score_set,
    scoring_manifest,
    scoring_model,
)
from pipelines.storage import Storage
from piqa_model.errors import ConfigError

KEPT_FILE, DROPPED_FILE, SUMMARY_FILE, REPORT_FILE = "kept.parquet", "dropped.parquet", "summary.json", "report.html"


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
    use_ray: bool = False  # read the score files with Ray Data (thousands of files on a cluster)
    s3_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.metadata and not self.rules.per:
            raise ConfigError("--metadata joins the --per column: name the metadata column to group by with --per")


@dataclass(frozen=True)
class FilterOutcome:
    summary: FilterSummary
    written: list[str]  # URIs of the manifests, summary and report
    resharded: ReshardSummary | None = None

    def lines(self) -> list[str]:
        lines = self.summary.lines()
        lines += [self.resharded.line()] if self.resharded else []
        return lines + [f"wrote {uri}" for uri in self.written]


def run_filter(config: FilterJobConfig) -> FilterOutcome:
    """Apply the rules to the score set and write the outputs; fails before writing on a bad input or rule."""
    storage = Storage.from_environment(config.s3_endpoint)
    files = list_parquet(config.scores, storage)
    storage.check_writable(config.output)
    scores = read_score_set(config.scores, files, storage, use_ray=config.use_ray)
    if config.metadata:
        metadata = read_parquet_files(list_parquet(config.metadata, storage), storage)
        scores = join_column(scores, metadata, config.rules.per, config.metadata_key)
    decided = decide(scores, config.rules)
    summary = summarize(decided, config.rules)
    scoring = scoring_manifest(config.scores, storage)
    model = scoring_model(scoring)
    kept = manifest(decided, config.rules, model, kept=True)

    outputs = {KEPT_FILE: _parquet_bytes(kept)}
    if config.emit_dropped:
        outputs[DROPPED_FILE] = _parquet_bytes(manifest(decided, config.rules, model, kept=False))
    document = {
        "scores": config.scores,
        "metadata": config.metadata,
        "scoring": model,
        "rules": config.rules.to_dict(),
    }
    outputs[SUMMARY_FILE] = json.dumps(document | summary.to_dict(), indent=2, default=str).encode()
    written = []
    for name, payload in outputs.items():
        written.append(_join(config.output, name))
        storage.write_atomic(written[-1], payload)
    if config.report:
        report = ReportConfig(
            title="Portrait quality filter: kept vs dropped",
            group=config.rules.per,
            source_format=config.source_format,
        )
        written.append(_join(config.output, REPORT_FILE))
        write_report(written[-1], build_report(decided, storage, report, config.scores, scoring), storage)
    resharded = None
    if config.reshard:
        resharded = reshard(kept, config.reshard, storage, config.source_format)
    return FilterOutcome(summary, written, resharded)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _join(prefix: str, name: str) -> str:
    return posixpath.join(prefix.rstrip("/"), name)
