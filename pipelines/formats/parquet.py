"""Parquet files with an image-bytes column (img2dataset's parquet output): one shard per file; key = the key
column, else the row number.

A file is read one row group at a time, and only its image and key columns; a cell above `max_image_bytes` is an
error row, found from the column's lengths before any cell becomes Python bytes. So a shard costs its own bytes
plus one row group's columns in memory, however many rows it has.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.formats.base import ContainerFormat, Record, SourceFormat, oversize, shard_error


class ParquetFormat(ContainerFormat):
    name, suffix, empty = "parquet", ".parquet", "no rows in this parquet file"
    settings = ("image_column", "key_column")

    def records(self, payload: bytes, source: str, options: SourceFormat) -> Iterator[Record]:
        """The rows of a Parquet file; a row group that cannot be read yields one error row and ends the file."""
        try:
            parquet = pq.ParquetFile(io.BytesIO(payload))
        except (pa.ArrowException, OSError) as exc:
            yield shard_error(source, f"not a readable parquet file: {exc}")
            return
        image_column, key_column = options.image_column, options.key_column
        names = parquet.schema_arrow.names
        if image_column not in names:
            yield shard_error(
                source, f"no image column '{image_column}' (columns: {', '.join(names)}); set --image-column"
            )
            return
        kind = parquet.schema_arrow.field(image_column).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)):
            yield shard_error(
                source, f"image column '{image_column}' holds {kind}, not image bytes; set --image-column"
            )
            return
        keyed = key_column in names
        position = 0
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=[image_column, *([key_column] if keyed else [])])
            except (pa.ArrowException, OSError) as exc:
                key = f"{posixpath.basename(source)}@row-group-{group}"
                yield Record(key, source, None, f"corrupt parquet row group: {exc}")
                return
            images = table.column(image_column)
            if pa.types.is_binary_view(images.type):  # Arrow has no length kernel for views
                images = images.cast(pa.large_binary())
            sizes = pc.binary_length(images).to_pylist()
            keys = table.column(key_column).to_pylist() if keyed else range(position, position + table.num_rows)
            for row, (key, size) in enumerate(zip(keys, sizes, strict=True)):
                if size is None:
                    yield Record(str(key), source, None, "no image bytes in this row")
                elif (refused := oversize(size, options)) is not None:
                    yield Record(str(key), source, None, refused)
                else:
                    yield Record(str(key), source, images[row].as_py())
            position += table.num_rows
