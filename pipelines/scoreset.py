"""Reading a score set: every `*.parquet` that `piqa score` wrote under an output folder/prefix, as one table.

Score files are read whole, in name order, and concatenated; files written by bundles with and without LIQE
differ in columns, and the missing ones come back as nulls. Two readers give the same table:
- `read_score_set(..., use_ray=False)`: this process, with the files fetched concurrently (the CLI);
- `read_score_set(..., use_ray=True)`: Ray Data tasks, one per batch of files, for thousands of score files
  on a cluster (`python -m jobs.filter`). The rows still meet on the driver: rules such as "the best 10 %
  of each group" need every score of a group in one place. Only the score columns travel, never images.
"""

from __future__ import annotations

import functools
import io
import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipelines.storage import Storage, StorageError, reason
from pipelines.writer import MANIFEST
from piqa_model.calibration import RAW_SCALE
from piqa_model.errors import PiqaError

REQUIRED_COLUMNS = ("key", "source", "shard", "status", "score")
FILES_PER_RAY_TASK = 64
FILES_PER_TASK = 256  # of the tasks that read score files' footers or samples


class ScoreSetError(PiqaError, ValueError):
    """A score file or metadata table does not have the columns it needs."""


def list_parquet(uri: str, storage: Storage) -> list[str]:
    """URIs of the `*.parquet` files directly under `uri` (or `uri` itself when it is one), sorted by name.

    Hidden and underscore-prefixed files (temporaries, `_manifest.json` companions) are skipped.
    """
    fs, root = storage.filesystem(uri)
    try:
        if fs.isfile(root):
            return [storage.uri(fs, root)]
        if not fs.isdir(root):
            raise StorageError(f"{uri} does not exist")
        uris = storage.list_visible(uri, "*.parquet")
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot list {uri}: {type(exc).__name__}: {exc}") from None
    if not uris:
        raise StorageError(f"{uri} holds no .parquet files")
    return uris


def read_parquet_files(uris: list[str], storage: Storage) -> pa.Table:
    """The tables of `uris`, concatenated in the given order (columns missing from a file become nulls)."""
    if not uris:
        raise StorageError("no .parquet files to read")
    fs, _ = storage.filesystem(uris[0])
    paths = [storage.filesystem(uri)[1] for uri in uris]
    try:
        payloads = storage.reading(lambda: fs.cat(paths, on_error="raise"))  # concurrent on object stores
    except Exception as exc:
        raise StorageError(f"cannot read {len(uris)} parquet files: {type(exc).__name__}: {exc}") from None
    tables = []
    for uri, path in zip(uris, paths, strict=True):
        try:
            tables.append(pq.read_table(io.BytesIO(payloads[path])))
        except Exception as exc:
            raise ScoreSetError(f"{uri} is not a readable parquet file: {exc}") from None
    return pa.concat_tables(tables, promote_options="default")


def read_footers(uris: list[str], *, storage: Storage) -> tuple[list[int], dict[str, pa.Field]]:
    """Each score file's rows, and the columns of them all (the first file's type of each), from their footers;
    a file without the score columns is an error."""
    rows: list[int] = []
    columns: dict[str, pa.Field] = {}
    for uri in uris:
        fs, path = storage.filesystem(uri)
        try:
            num_rows, schema = storage.reading(functools.partial(_footer, fs, path))
            rows.append(num_rows)
        except Exception as exc:
            raise ScoreSetError(f"{uri} is not a readable parquet file: {reason(exc)}") from None
        _check_required(schema.names, uri)
        columns |= {field.name: field for field in schema if field.name not in columns}
    return rows, columns


def _footer(fs: AbstractFileSystem, path: str) -> tuple[int, pa.Schema]:
    with fs.open(path, "rb") as handle:
        file = pq.ParquetFile(handle)
        return file.metadata.num_rows, file.schema_arrow


def read_sample(uris: list[str], *, storage: Storage, every: int) -> pa.Table:
    """Rows 0, every, 2 * every, ... of each score file (all of them for `every` 1), concatenated."""
    tables = []
    for uri in uris:
        table = read_parquet_files([uri], storage)
        tables.append(table.take(pa.array(range(0, table.num_rows, every))))
    return pa.concat_tables(tables, promote_options="default")


def read_score_set(uri: str, files: list[str], storage: Storage, use_ray: bool = False) -> pa.Table:
    """Every row of the score files `files` (from `list_parquet(uri)`); see the module docstring for the readers."""
    table = _read_with_ray(files, storage) if use_ray else read_parquet_files(files, storage)
    _check_required(table.column_names, uri)
    return table


def _check_required(columns: list[str], uri: str) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ScoreSetError(f"{uri} does not look like `piqa score` output: no column(s) {', '.join(missing)}")


def _read_with_ray(files: list[str], storage: Storage) -> pa.Table:
    import ray  # a second to import: not for reads in this process

    from pipelines.runtime import ensure_ray

    ensure_ray()
    batches = [files[start : start + FILES_PER_RAY_TASK] for start in range(0, len(files), FILES_PER_RAY_TASK)]
    ds = ray.data.from_items([{"batch": n, "files": batch} for n, batch in enumerate(batches)])
    ds = ds.map_batches(_read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"storage": storage})
    parts = sorted(ds.take_all(), key=lambda row: row["batch"])
    tables = [pq.read_table(io.BytesIO(part["table"])) for part in parts]
    return pa.concat_tables(tables, promote_options="default")


def _read_batch(batch: pa.Table, *, storage: Storage) -> pa.Table:
    """Task: one batch of score files in, one Parquet-encoded table out (Arrow blocks need one schema)."""
    [row] = batch.to_pylist()
    buffer = io.BytesIO()
    pq.write_table(read_parquet_files(row["files"], storage), buffer)
    return pa.table({"batch": [row["batch"]], "table": [buffer.getvalue()]})


def scoring_manifest(uri: str, storage: Storage) -> dict[str, Any]:
    """The `_manifest.json` the last `piqa score` run into `uri` wrote: its model (`model_trained`: False for
    random weights) and its `score_scale`. {} when there is none, or it is not ours: a score set without one is
    given the benefit of the doubt (trained, raw scale)."""
    fs, root = storage.filesystem(uri)
    path = posixpath.join(root, MANIFEST)
    if not fs.isfile(path):
        return {}
    try:
        document = json.loads(storage.read_bytes(posixpath.join(uri.rstrip("/"), MANIFEST)))
    except ValueError:  # not JSON: not a manifest of ours
        return {}
    return document if isinstance(document, dict) else {}


def scoring_model(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a scoring manifest (`scoring_manifest`) says about the model that made the scores: its bundle id
    (`model`, None when unknown), `model_trained` and `score_scale`, with the same benefit of the doubt."""
    return {
        "model": manifest.get("model"),
        "model_trained": manifest.get("model_trained", True),
        "score_scale": manifest.get("score_scale", RAW_SCALE),
    }


def metadata_lookup(metadata: pa.Table, column: str, key: str = "key") -> pa.Table:
    """`metadata` cut to (`key` as text, `column`), for `join_column`.

    Raises ScoreSetError when `metadata` lacks either column or holds a key twice (which of its values would
    apply would be a guess).
    """
    for name in (key, column):
        if name not in metadata.column_names:
            columns = ", ".join(metadata.column_names)
            raise ScoreSetError(f"metadata has no column '{name}' (columns: {columns}); set --metadata-key/--per")
    keys = metadata.column(key).cast(pa.string())
    if pc.count_distinct(keys, mode="all").as_py() != len(keys):
        raise ScoreSetError(f"metadata holds some {key} more than once; keep one row per key")
    return pa.table({"key": keys, column: metadata.column(column)})


def join_column(scores: pa.Table, lookup: pa.Table, column: str) -> pa.Table:
    """`scores` plus `column` from a `metadata_lookup`, matched by key; scores without a metadata row get a null."""
    if column in scores.column_names:
        raise ScoreSetError(f"'{column}' is already a score column; join a differently named metadata column")
    positions = pc.index_in(scores.column("key"), value_set=lookup.column("key"))
    return scores.append_column(column, lookup.column(column).take(positions))
