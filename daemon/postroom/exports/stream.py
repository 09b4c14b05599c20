"""Running an export: a kind's rows in a date range, written by one writer, handed out as text
chunks of a few hundred rows each as they are read, and counted in the metrics. What the CLI and
the HTTP route both stream; neither holds more than one chunk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from postroom.exports.model import DateRange, ExportKind, Row
from postroom.exports.writers import ExportWriter
from postroom.metrics import Metrics

ROWS_PER_CHUNK = 500
# Rows written so far; called after each chunk.
RowsWritten = Callable[[int], None]


def no_progress(_written: int) -> None:
    return None


async def export_chunks(
    kind: ExportKind, span: DateRange, writer: ExportWriter, metrics: Metrics, *, surface: str,
    rows_per_chunk: int = ROWS_PER_CHUNK, progress: RowsWritten = no_progress,
) -> AsyncGenerator[str, None]:  # fmt: skip
    """The export as text, chunk by chunk: the first chunk carries the header (CSV) and the first
    rows, so a caller that waits for it learns of a database that cannot be read before it has
    answered anything. `surface` (cli, http) labels the metrics."""
    metrics.exports.labels(kind.name, writer.name, surface).inc()
    columns = kind.column_names
    pending = writer.header(columns)
    batch: list[Row] = []
    written = 0
    rows = kind.rows(span)
    try:
        async for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"export kind {kind.name}: a row of {len(row)} values for {len(columns)} columns")
            batch.append(row)
            if len(batch) >= rows_per_chunk:
                text = pending + writer.rows(columns, batch)
                pending, written = "", written + len(batch)
                metrics.export_rows.labels(kind.name).inc(len(batch))
                batch.clear()
                yield text
                progress(written)
    finally:
        # An export abandoned half-way (a client gone) stops reading the database at once.
        close = getattr(rows, "aclose", None)
        if close is not None:
            await close()
    if batch:
        metrics.export_rows.labels(kind.name).inc(len(batch))
        written += len(batch)
    yield pending + writer.rows(columns, batch)
    progress(written)
