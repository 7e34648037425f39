"""Bounded speed tables: removing micro-batch folders the batch layer covers.

Each speed micro-batch N writes `<table>/batch_id=<N>/` (foreachBatch, a plain Parquet write:
no file sink and so no `_spark_metadata` log that could name a removed file; the streaming
checkpoint holds offsets, commits and state only). Once serving has read batch N and every row
of it is older than the batch watermark minus `LAMBDA_ARCH_SPEED_RETENTION_HOURS`, the folder
serves nobody: serving keeps only speed rows at or after the batch watermark and never reads a
batch id at or below the last one it has read (`lambda_arch.serving.refresh` decides and calls
`remove_batches`). Folders are removed, not compacted: a compacted day would still grow with
the days, and a removed folder is never needed again.

Before removing, the time below which speed rows may be gone is recorded next to the speed
state (`_state/<query>.retention.json`, `removed_before`); the speed-vs-batch check compares
the layers only from there on (`cut_ranges`). Spark readers of the speed tables ignore a file
removed between their listing and their read (`ignoreMissingFiles`): its rows are older than
anything they compare.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pyarrow.fs as pafs

from lambda_arch.common.files import read_text, write_text
from lambda_arch.common.storage import pyarrow_filesystem
from lambda_arch.common.times import format_time, parse_optional_time

RETENTION_SUFFIX = ".retention"


def retention_file(speed_root: str, query: str) -> str:
    """Where a speed query's removal horizon is recorded."""
    return f"{speed_root.rstrip('/')}/_state/{query}{RETENTION_SUFFIX}.json"


def removed_before(speed_root: str, query: str) -> datetime | None:
    """The time before which a speed query's rows may have been removed (None: none removed)."""
    text = read_text(retention_file(speed_root, query))
    return None if text is None else parse_optional_time(json.loads(text).get("removed_before"))


def record_removed_before(speed_root: str, query: str, moment: datetime) -> datetime:
    """Move the removal horizon forward to `moment` (never back); returns the horizon."""
    current = removed_before(speed_root, query)
    if current is not None and current >= moment:
        return current
    document = {"query": query, "removed_before": format_time(moment.astimezone(UTC))}
    write_text(retention_file(speed_root, query), json.dumps(document, indent=1) + "\n")
    return moment


def batch_folder(table: str, batch_id: int) -> str:
    return f"{table.rstrip('/')}/batch_id={batch_id}"


def remove_batches(table: str, batch_ids: Iterable[int]) -> int:
    """Delete the `batch_id=<N>` folders of a speed table (local or S3); one already gone is
    fine. Returns the folders deleted."""
    removed = 0
    for batch_id in batch_ids:
        filesystem, path = pyarrow_filesystem(batch_folder(table, batch_id))
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            continue
        filesystem.delete_dir(path)
        removed += 1
    return removed


def cut_ranges(
    ranges: Sequence[tuple[datetime, datetime]], horizon: datetime | None
) -> list[tuple[datetime, datetime]]:
    """The parts of half-open time ranges at or after `horizon` (all of them when None)."""
    if horizon is None:
        return list(ranges)
    return [(max(start, horizon), end) for start, end in ranges if end > max(start, horizon)]
