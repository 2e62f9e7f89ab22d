"""Parquet files with an image-bytes column (img2dataset's parquet output): one shard per file; key = the key
column, else the row number."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow.parquet as pq

from pipelines.formats.base import ContainerFormat, Record, SourceFormat, shard_error


class ParquetFormat(ContainerFormat):
    name, suffix, empty = "parquet", ".parquet", "no rows in this parquet file"
    settings = ("image_column", "key_column")

    def records(self, payload: bytes, source: str, options: SourceFormat) -> Iterator[Record]:
        try:
            table = pq.read_table(io.BytesIO(payload))
        except Exception as exc:
            yield shard_error(source, f"not a readable parquet file: {exc}")
            return
        image_column, key_column = options.image_column, options.key_column
        if image_column not in table.column_names:
            columns = ", ".join(table.column_names)
            yield shard_error(source, f"no image column '{image_column}' (columns: {columns}); set --image-column")
            return
        images = table.column(image_column).to_pylist()
        keys = table.column(key_column).to_pylist() if key_column in table.column_names else range(len(images))
        for key, data in zip(keys, images, strict=True):
            if data is None:
                yield Record(str(key), source, None, "no image bytes in this row")
            else:
                yield Record(str(key), source, bytes(data))
