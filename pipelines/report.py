"""A self-contained HTML page about a score set, or about a filter's decisions on it (kept vs dropped).

Everything is inlined so the page works offline and from any folder: the score histogram is a PNG drawn
with matplotlib (Agg backend) and embedded as a data URI, thumbnails are small JPEGs embedded the same way,
and a Content-Security-Policy forbids the page any network access. The page holds: headline counts, the
histogram, thumbnails at score percentiles (lowest, 10 %, median, 90 %, highest) with their scores and face
boxes, counts by status with example errors, per-rule counts (filter reports), and a table per value of
`ReportConfig.group` (when given), of num_faces and of shard, each column once. Thumbnails are re-read from
the original sources (`pipelines.fetch`), five of them whatever the size of the score set; one that cannot
be read shows why instead of failing the report. A score set of more than `ReportConfig.max_rows` rows is
drawn from an even sample of them (`sample_every`), and the page says so: no process holds all rows.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot can be imported anywhere: no display here or on a cluster

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pipelines.fetch import SourceFormat, fetch_records  # noqa: E402
from pipelines.filtering import DECIDED_BY, KEPT, NULL_GROUP, RULES  # noqa: E402
from pipelines.scoreset import (  # noqa: E402
    FILES_PER_TASK,
    list_parquet,
    read_footers,
    read_sample,
    scoring_manifest,
    scoring_model,
)
from pipelines.storage import Storage  # noqa: E402
from pipelines.tasks import map_tasks  # noqa: E402
from piqa_model.errors import PiqaError  # noqa: E402
from piqa_model.images import open_image  # noqa: E402

PERCENTILES = (("lowest", 0.0), ("10 %", 0.1), ("median", 0.5), ("90 %", 0.9), ("highest", 1.0))
ERROR_EXAMPLES = 3
KEPT_COLOR, DROPPED_COLOR, BOX_COLOR = "#2e7d32", "#b0b0b0", "#ffb300"
GROUP_TABLES = ("num_faces", "shard")  # every report tabulates these columns


class ReportError(PiqaError, ValueError):
    """The report cannot be drawn as asked (a group column that the scores lack)."""


@dataclass(frozen=True)
class ReportConfig:
    title: str = "Portrait quality report"
    group: str | None = None  # a column to tabulate first, beside GROUP_TABLES
    thumbnail_size: int = 224  # longest side, pixels
    max_table_rows: int = 200  # per-column tables; the rest is counted, not listed
    max_rows: int = 100_000  # rows the page is drawn from: a bigger score set is sampled evenly (`sample_every`)
    source_format: SourceFormat = field(default_factory=SourceFormat)


def sample_every(rows: int, config: ReportConfig) -> int:
    """Draw a page of `rows` rows from every n-th of them: at most about `config.max_rows`."""
    return max(1, math.ceil(rows / config.max_rows))


def build_report(
    table: pa.Table,
    storage: Storage,
    config: ReportConfig,
    scores_uri: str,
    manifest: dict[str, Any],
    sampled_from: int | None = None,
) -> str:
    """The HTML page for a score table (with a `decided_by` column: a filter report, kept vs dropped).

    `sampled_from`: the rows of the score set when `table` is a sample of it (the page says so).

    `manifest` is the scoring run's (`scoring_manifest`): an untrained model puts a warning on top (scores of
    random weights must not curate anything), and the page says which scale the scores are on.
    """
    if config.group and (
        config.group not in table.column_names or pa.types.is_nested(table.schema.field(config.group).type)
    ):
        columns = ", ".join(
            name for name in table.column_names if not pa.types.is_nested(table.schema.field(name).type)
        )
        raise ReportError(f"cannot group the report by '{config.group}': pick a scalar score column ({columns})")
    filtered = DECIDED_BY in table.column_names
    scored = table.filter(pc.is_valid(table["score"]))
    model = scoring_model(manifest)
    sections = [
        f"<h1>{_text(config.title)}</h1>",
        "" if model["model_trained"] else _UNTRAINED,
        _headline(table, scores_uri, filtered),
        _sample_note(table.num_rows, sampled_from),
        f'<p id="scale">scores: {_text(model["score_scale"])}</p>',
        "<h2>Score distribution</h2>",
        f'<img id="histogram" alt="score histogram" src="{_data_uri(_histogram_png(scored, filtered), "image/png")}">',
        "<h2>Examples at score percentiles</h2>",
        _thumbnails(scored, storage, config, filtered),
        "<h2>Rows by status</h2>",
        _status_table(table),
    ]
    if filtered:
        sections += ["<h2>Rows by deciding rule</h2>", _rule_table(table)]
    for column in dict.fromkeys([*([config.group] if config.group else []), *GROUP_TABLES]):
        sections += [
            f"<h2>Per {_text(column)}</h2>",
            _group_table(table, column, f"per-{column}", config.max_table_rows, filtered),
        ]
    return _PAGE.format(title=_text(config.title), body="\n".join(sections))


def write_report(uri: str, page: str, storage: Storage) -> None:
    storage.write_atomic(uri, page.encode())


def report_score_set(scores_uri: str, output_uri: str, config: ReportConfig, storage: Storage) -> int:
    """Write the page of the score set at `scores_uri` to `output_uri`, drawn from at most about
    `config.max_rows` of its rows (read in this process's threads, a file at a time); returns its rows."""
    files = list_parquet(scores_uri, storage)
    chunks = [files[start : start + FILES_PER_TASK] for start in range(0, len(files), FILES_PER_TASK)]
    footers = map_tasks(read_footers, chunks, use_ray=False, shared={"storage": storage})
    rows = sum(sum(file_rows) for file_rows, _ in footers)
    shared = {"storage": storage, "every": sample_every(rows, config)}
    table = pa.concat_tables(map_tasks(read_sample, chunks, use_ray=False, shared=shared), promote_options="default")
    manifest = scoring_manifest(scores_uri, storage)
    write_report(output_uri, build_report(table, storage, config, scores_uri, manifest, sampled_from=rows), storage)
    return rows


def _headline(table: pa.Table, scores_uri: str, filtered: bool) -> str:
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py() or 0
    facts = [("rows", table.num_rows), ("ok", ok), ("errors", table.num_rows - ok)]
    if filtered:
        kept = pc.sum(pc.equal(table[DECIDED_BY], KEPT)).as_py() or 0
        facts += [("kept", kept), ("dropped", table.num_rows - kept)]
    facts.append(("shards", pc.count_distinct(table["shard"]).as_py()))
    cards = "".join(f'<div class="fact"><b>{value}</b><span>{name}</span></div>' for name, value in facts)
    models = sorted(m for m in table["model"].unique().to_pylist() if m) if "model" in table.column_names else []
    model_line = f" &middot; model {_text(', '.join(models))}" if models else ""
    return f'<p class="where">scores: {_text(scores_uri)}{model_line}</p><div id="facts">{cards}</div>'


def _sample_note(drawn: int, rows: int | None) -> str:
    if rows is None or rows <= drawn:
        return ""
    return (
        f'<p id="sample">drawn from {drawn} of the {rows} rows, evenly spaced in each score file: the counts on '
        "this page are the sample's</p>"
    )


def _histogram_png(scored: pa.Table, filtered: bool) -> bytes:
    figure = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    scores = scored["score"].to_numpy()
    bins = min(40, max(10, len(scores) // 5))
    if len(scores) == 0:
        axes.text(0.5, 0.5, "no scored images", ha="center", va="center", transform=axes.transAxes)
    elif filtered:
        kept = pc.equal(scored[DECIDED_BY], KEPT).to_numpy(zero_copy_only=False)
        axes.hist(
            [scores[kept], scores[~kept]],
            bins=bins,
            stacked=True,
            color=[KEPT_COLOR, DROPPED_COLOR],
            label=[f"kept ({kept.sum()})", f"dropped ({(~kept).sum()})"],
        )
        axes.legend()
    else:
        axes.hist(scores, bins=bins, color="#1565c0")
    axes.set_xlabel("score")
    axes.set_ylabel("images")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _percentile_rows(scored: pa.Table) -> list[tuple[str, dict[str, Any]]]:
    """(label, row) at each percentile of the scored rows, ranked by score then key (halves round up)."""
    if scored.num_rows == 0:
        return []
    ranked = scored.take(
        pc.sort_indices(scored, [("score", "ascending"), ("key", "ascending"), ("source", "ascending")])
    )
    last = ranked.num_rows - 1
    return [(label, ranked.slice(int(q * last + 0.5), 1).to_pylist()[0]) for label, q in PERCENTILES]


def _thumbnails(scored: pa.Table, storage: Storage, config: ReportConfig, filtered: bool) -> str:
    picks = _percentile_rows(scored)
    if not picks:
        return '<p id="percentiles">no scored images</p>'
    originals = _original_bytes([row for _, row in picks], storage, config.source_format)
    cards = []
    for label, row in picks:
        picture = originals[(row["source"], row["key"])]
        if isinstance(picture, bytes):
            picture = _thumbnail(picture, row.get("face_box"), config.thumbnail_size)
        if isinstance(picture, bytes):
            visual = f'<img alt="{_text(row["key"])}" src="{_data_uri(picture, "image/jpeg")}">'
        else:
            visual = f'<div class="missing">image unavailable: {_text(picture)}</div>'
        decision = ""
        if filtered:
            kept = row[DECIDED_BY] == KEPT
            verdict = "kept" if kept else f"dropped by {row[DECIDED_BY]}"
            decision = f'<span class="{"kept" if kept else "dropped"}">{_text(verdict)}</span><br>'
        cards.append(
            f'<figure class="thumb" data-percentile="{_text(label)}">{visual}<figcaption>'
            f"<b>{_text(label)}</b> score {row['score']:.4f}<br>{decision}<code>{_text(row['key'])}</code>"
            "</figcaption></figure>"
        )
    return f'<div id="percentiles">{"".join(cards)}</div>'


def _original_bytes(
    rows: list[dict[str, Any]], storage: Storage, source_format: SourceFormat
) -> dict[tuple[str, str], bytes | str]:
    """The original bytes of each row, or why they cannot be read; each source is read once."""
    keys_by_source: dict[str, list[str]] = {}
    for row in rows:
        keys_by_source.setdefault(row["source"], []).append(row["key"])
    originals: dict[tuple[str, str], bytes | str] = {}
    for source, keys in keys_by_source.items():
        found = fetch_records(source, keys, storage, source_format)
        for key in keys:
            record = found.get(key)
            if record is None:
                originals[(source, key)] = "not found in its source"
            else:
                originals[(source, key)] = record.data if record.data is not None else str(record.error)
    return originals


def _thumbnail(data: bytes, face_box: Sequence[float] | None, size: int) -> bytes | str:
    """A JPEG thumbnail with the face box drawn, or why there is none."""
    try:
        image = open_image(data)
    except Exception as exc:  # the report must not fail on one image
        return f"{type(exc).__name__}: {exc}"
    scale = min(1.0, size / max(image.size))
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    if face_box:
        draw = ImageDraw.Draw(image)
        draw.rectangle([value * scale for value in face_box], outline=BOX_COLOR, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()


def _status_table(table: pa.Table) -> str:
    counts = sorted(pc.value_counts(table["status"]).to_pylist(), key=lambda entry: (-entry["counts"], entry["values"]))
    rows = []
    for entry in counts:
        status = entry["values"]
        examples = ""
        if status != "ok":
            sample = table.filter(pc.equal(table["status"], status)).slice(0, ERROR_EXAMPLES).to_pylist()
            examples = "<br>".join(f"<code>{_text(r['key'])}</code>: {_text(r['error'] or '')}" for r in sample)
        rows.append([_text(status), str(entry["counts"]), examples])
    return _table("statuses", ["status", "rows", "examples"], rows)


def _rule_table(table: pa.Table) -> str:
    counts = {entry["values"]: entry["counts"] for entry in pc.value_counts(table[DECIDED_BY]).to_pylist()}
    rows = [[_text(rule), str(counts[rule])] for rule in (KEPT, *RULES) if rule in counts]
    return _table("rules", ["decided by", "rows"], rows)


def _group_table(table: pa.Table, column: str, table_id: str, limit: int, filtered: bool) -> str:
    columns = {
        "group": table[column],
        "ok": pc.cast(pc.equal(table["status"], "ok"), pa.int64()),
        "score": table["score"],
    }
    aggregations = [([], "count_all"), ("ok", "sum"), ("score", "mean"), ("score", "min"), ("score", "max")]
    if filtered:
        columns["kept"] = pc.cast(pc.equal(table[DECIDED_BY], KEPT), pa.int64())
        aggregations.append(("kept", "sum"))
    stats = pa.table(columns).group_by("group").aggregate(aggregations).to_pylist()
    stats.sort(key=lambda row: (row["group"] is None, row["group"]))
    headers = [column, "rows", "ok", "errors", *(["kept", "dropped"] if filtered else []), "mean", "min", "max"]
    rows = []
    for row in stats[:limit]:
        cells = [_text(NULL_GROUP if row["group"] is None else str(row["group"])), str(row["count_all"])]
        cells += [str(row["ok_sum"]), str(row["count_all"] - row["ok_sum"])]
        if filtered:
            cells += [str(row["kept_sum"]), str(row["count_all"] - row["kept_sum"])]
        cells += [_number(row["score_mean"]), _number(row["score_min"]), _number(row["score_max"])]
        rows.append(cells)
    more = f'<p class="more">{len(stats) - limit} more not shown</p>' if len(stats) > limit else ""
    return _table(table_id, headers, rows) + more


def _table(table_id: str, headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{_text(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _number(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:.4f}"


def _text(value: Any) -> str:
    return html.escape(str(value))


def _data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


_UNTRAINED = (
    '<p id="untrained"><b>Untrained model:</b> these scores come from random weights and mean nothing. '
    "Score again with trained weights (<code>piqa weights import-dnpiqa</code>) before curating with them.</p>"
)
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }}
h1 {{ margin-bottom: 4px; }} h2 {{ margin-top: 28px; border-bottom: 1px solid #ddd; }}
.where {{ color: #666; margin-top: 0; word-break: break-all; }}
#facts {{ display: flex; gap: 12px; }}
.fact {{ background: #f4f6f8; border-radius: 6px; padding: 8px 16px; text-align: center; }}
.fact b {{ display: block; font-size: 22px; }} .fact span {{ color: #666; }}
#histogram {{ max-width: 100%; }}
#percentiles {{ display: flex; gap: 12px; flex-wrap: wrap; }}
.thumb {{ margin: 0; width: 224px; }} .thumb img {{ display: block; max-width: 224px; border-radius: 4px; }}
.thumb figcaption {{ font-size: 12px; margin-top: 4px; }} .thumb code {{ word-break: break-all; }}
.missing {{ width: 224px; height: 160px; background: #eee; color: #a00; font-size: 12px; padding: 8px; }}
.kept {{ color: #2e7d32; font-weight: bold; }} .dropped {{ color: #a00; font-weight: bold; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f4f6f8; }} td code {{ font-size: 12px; }}
.more {{ color: #666; }}
#untrained {{ background: #fdecea; color: #8a1c1c; border: 1px solid #f5c2c0; padding: 8px 12px; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
