"""Refreshing the serving store from the lake (`refresh_view`), and telling when it is behind.

A refresh reads the lake with pyarrow, no Spark: batch days whose state changed since the store
loaded them (recomputed days, late data), and the speed micro-batches committed since the last
refresh (a micro-batch is read only once Spark's commit log has it, so a half-written retry is
never ingested). It is incremental: its cost follows what changed. It then sets the batch
watermark (the end of the last contiguous computed day), prunes the speed rows that watermark
covers, and records the speed watermark, all in one write transaction of the store.

In that transaction it also removes the speed micro-batch folders nothing needs any more
(`lambda_arch.speed.retention`): batches it read in an earlier, committed refresh whose rows are
all older than the batch watermark minus `LAMBDA_ARCH_SPEED_RETENTION_HOURS`. It reads only batch
ids above the last one it read, so a removed folder is never looked for again; a rebuild (a
restarted checkpoint, a batch watermark that moved back) reads the folders left, and the rows of
removed ones it would have kept are none as long as the watermark has not moved back by more
than the retention.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.common.locks import file_lock, lock_path
from lambda_arch.common.storage import pyarrow_filesystem
from lambda_arch.common.times import parse_optional_time
from lambda_arch.ingest.source_offsets import latest_commit as source_latest_commit
from lambda_arch.serving.store import (
    MICROS,
    ServingStore,
    dimensions_of,
    drop_batch_day,
    epoch_micros,
    epoch_seconds,
    forget_speed_batches,
    insert_speed,
    iso,
    parse_iso,
    prune_speed,
    record_speed_batches,
    replace_batch_day,
    speed_batches_before,
    speed_batches_held,
)
from lambda_arch.speed import layer as speed
from lambda_arch.speed import retention
from lambda_arch.views.spec import SESSIONS, ViewSpec


@dataclass
class RefreshReport:
    """What one refresh of a view did (Dagster metadata: plain numbers)."""

    view: str
    batch_days_loaded: list[str] = field(default_factory=list)
    batch_days_dropped: list[str] = field(default_factory=list)
    batch_rows_loaded: int = 0
    speed_batches_read: int = 0
    speed_rows_read: int = 0
    speed_rows_pruned: int = 0
    speed_rebuilt: bool = False
    speed_folders_removed: int = 0
    speed_folders_kept: int = 0
    batch_watermark: datetime | None = None
    speed_watermark: datetime | None = None
    duration_s: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The report as a materialization's metadata, with both watermarks' lag from now."""
        now = datetime.now(UTC)
        metadata: dict[str, Any] = {
            "batch_days_loaded": len(self.batch_days_loaded),
            "batch_rows_loaded": self.batch_rows_loaded,
            "speed_micro_batches_read": self.speed_batches_read,
            "speed_rows_read": self.speed_rows_read,
            "speed_rows_pruned": self.speed_rows_pruned,
            "speed_folders_removed": self.speed_folders_removed,
            "speed_folders_kept": self.speed_folders_kept,
            "duration_s": round(self.duration_s, 3),
            "batch_watermark": iso(self.batch_watermark) or "",
            "speed_watermark": iso(self.speed_watermark) or "",
            **{f"rows_{table}": count for table, count in self.rows.items()},
        }
        if self.batch_days_loaded:
            metadata["batch_days"] = ", ".join(self.batch_days_loaded)
        if self.speed_watermark is not None:
            metadata["speed_watermark_lag_s"] = round(
                (now - self.speed_watermark).total_seconds(), 1
            )
        if self.batch_watermark is not None:
            metadata["batch_watermark_lag_h"] = round(
                (now - self.batch_watermark).total_seconds() / 3600, 2
            )
        return metadata


def computed_batch_days(lake: Lake, table: str) -> dict[date, str]:
    """Days the batch layer has computed for `table`, each with a version of its computation:
    the modification time of the day's state file, which every (re)computation rewrites last.
    One listing, no file read per day (a year of days is one request on S3, not 365)."""
    filesystem, base = pafs.FileSystem.from_uri(lake.location("_batch_state"))
    infos = filesystem.get_file_info(pafs.FileSelector(f"{base}/{table}", allow_not_found=True))
    days: dict[date, str] = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        try:
            day = date.fromisoformat(info.base_name.removesuffix(".json"))
        except ValueError:
            continue
        days[day] = str(info.mtime_ns)
    return days


def changed_days(computed: dict[date, str], held: dict[str, str]) -> list[date]:
    """Computed days whose version the store does not hold (new or recomputed)."""
    return sorted(day for day, version in computed.items() if held.get(day.isoformat()) != version)


def latest_commit(settings: Settings, query: str) -> int | None:
    """The newest micro-batch id in the query's commit log (None: no batch committed)."""
    return source_latest_commit(speed.checkpoint_of(settings, query))


def committed_batches(settings: Settings, query: str, latest: int | None = None) -> list[int]:
    """Micro-batch ids whose output folder is complete: every `batch_id=<N>` folder of the
    query's table up to the newest id in its commit log (`latest`, looked up when None). (The
    commit log itself keeps only the last 100 batches, spark.sql.streaming.minBatchesToRetain,
    so it cannot list them all; folders below the batch watermark may have been removed.)"""
    latest = latest_commit(settings, query) if latest is None else latest
    if latest is None:
        return []
    filesystem, path = pyarrow_filesystem(speed.SpeedPaths.from_settings(settings).table(query))
    folders = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    ids = [
        int(info.base_name.removeprefix("batch_id="))
        for info in folders
        if info.type == pafs.FileType.Directory
        and info.base_name.startswith("batch_id=")
        and info.base_name.removeprefix("batch_id=").isdigit()
    ]
    return sorted(batch_id for batch_id in ids if batch_id <= latest)


def _read_parquet(uri: str, columns: Sequence[str]) -> pa.Table | None:
    """The Parquet files of a folder (hidden ones skipped, as Spark does); None if absent."""
    filesystem, path = pyarrow_filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return None
    dataset = pads.dataset(path, filesystem=filesystem, format="parquet")
    if dataset.schema.names == [] or not dataset.files:
        return None
    return dataset.to_table(columns=list(columns))


def _epoch(column: pa.ChunkedArray, unit: str) -> list[int]:
    """A timestamp column (Spark writes INT96 or micros) as epoch integers in `unit`."""
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    if unit == "s":
        micros = pc.divide(micros, MICROS)
    return micros.to_pylist()


def _store_rows(spec: ViewSpec, table: pa.Table) -> list[tuple[Any, ...]]:
    """Arrow rows of a view as store tuples (without dt), times as integers."""
    if spec is SESSIONS:
        return list(
            zip(
                table.column("member_id").to_pylist(),
                table.column("title_id").to_pylist(),
                _epoch(table.column("session_start"), "us"),
                _epoch(table.column("session_end"), "us"),
                table.column("events").to_pylist(),
                table.column("watched_ms").to_pylist(),
                strict=True,
            )
        )
    return list(
        zip(
            _epoch(table.column("minute"), "s"),
            *(table.column(dimension).to_pylist() for dimension in dimensions_of(spec)),
            table.column("plays").to_pylist(),
            strict=True,
        )
    )


def _cut_value(spec: ViewSpec, watermark: datetime | None) -> int | None:
    """The batch watermark in the unit of the view's time column in the store."""
    if watermark is None:
        return None
    seconds = int(watermark.timestamp())
    return seconds * MICROS if spec is SESSIONS else seconds


def _time_index(spec: ViewSpec) -> int:
    """Where the split column (session_end, minute) is in a `_store_rows` tuple."""
    return 3 if spec is SESSIONS else 0


def _newest(spec: ViewSpec, rows: Sequence[tuple[Any, ...]]) -> int | None:
    """The latest split time of a micro-batch's store rows (None when it has none)."""
    position = _time_index(spec)
    return max((row[position] for row in rows), default=None)


def _removal_cut(settings: Settings, watermark: datetime | None) -> datetime | None:
    """Speed rows before this time are no longer needed: the batch watermark minus the
    retention (None: no batch watermark, keep everything)."""
    if watermark is None:
        return None
    return watermark - timedelta(hours=settings.speed_retention_hours)


def contiguous_watermark(first_day: date | None, computed: Iterable[date]) -> datetime | None:
    """End of the last day of the unbroken run of computed days from `first_day`."""
    if first_day is None:
        return None
    done, last = set(computed), None
    day = first_day
    while day in done:
        last, day = day, day + timedelta(days=1)
    return batch.day_end(last) if last else None


# How long a refresh waits for another refresh of the same store; a holder that dies releases
# the lock at once (flock), so only a hung refresh makes a waiter give up, naming it.
REFRESH_LOCK_TIMEOUT_S = 1800.0


def refresh_lock_path(settings: Settings, store: ServingStore) -> Path:
    """The lock that refreshes of one serving store take in turn."""
    return lock_path(speed.lock_dir_of(settings), f"{store.path}#refresh")


def refresh_view(
    settings: Settings, store: ServingStore, view: str, lake: Lake | None = None
) -> RefreshReport:
    """Bring one view of the store up to date with the lake: changed batch days, new speed
    micro-batches, the batch watermark (pruning speed rows it covers) and the speed watermark.

    Any view of the store: for a count view `V` (CONTRACT section 9) it reads the batch days of
    `V_batch` (their states in `_batch_state/V_batch/<day>.json`, rows at the version a state
    names), the speed micro-batches `batch_id=<N>` of the speed table `V_speed` up to the newest
    id in the checkpoint `V_speed`'s commit log, and the speed state file `V_speed` (its
    watermark and newest event time).
    """
    started = time.monotonic()
    spec = store.spec(view)
    lake = lake or Lake.from_settings(settings)
    paths = speed.SpeedPaths.from_settings(settings)
    report = RefreshReport(view)

    computed = computed_batch_days(lake, spec.batch_table)
    first_landed = batch.first_landed_day(lake)
    first_day = max(settings.start_date, first_landed) if first_landed else None
    batch_watermark = contiguous_watermark(first_day, computed)
    speed_state = speed.read_speed_state(paths, spec.speed_query) or {}
    speed_watermark = parse_iso(speed_state["watermark"]) if speed_state.get("watermark") else None
    # The newest event time the speed layer has counted: answers default to the minute after it.
    speed_newest = parse_optional_time(speed_state.get("max_event_time"))

    # The whole refresh holds the store's write lock: two refreshes at once (a sensor's run and
    # `lambda-arch run`) would otherwise both add the same speed micro-batches. They queue at a
    # file lock first: SQLite's own wait (30 s) is shorter than a refresh that reads many days,
    # and a refresh that gave up would fail its run with "database is locked".
    with (
        file_lock(refresh_lock_path(settings, store), timeout_s=REFRESH_LOCK_TIMEOUT_S, owner=view),
        store.writing() as connection,
    ):
        held = store.batch_days(view)
        changed = changed_days(computed, held)
        dropped = sorted(set(held) - {d.isoformat() for d in computed})
        loaded: dict[str, tuple[str, list[tuple[Any, ...]]]] = {}
        for day in changed:
            # The version the day's state names, never its folder as a whole: a recompute
            # writes its new version next to the old one before it swaps them.
            _, table = batch.read_day_rows(lake, spec.batch_table, day, spec.columns)
            rows = _store_rows(spec, table) if table is not None else []
            loaded[day.isoformat()] = (computed[day], rows)

        previous = store.view_state(view, connection)
        latest = latest_commit(settings, spec.speed_query)
        committed = committed_batches(settings, spec.speed_query, latest)
        # A checkpoint that restarted (fewer batches than ingested), or a batch watermark that
        # moved back (a day lost its state), needs speed rows the store has pruned: rebuild.
        # (The commit log, not the folders: folders the batch layer covers may be removed.)
        rebuild = (latest is not None and latest < previous.speed_last_batch) or (
            previous.batch_watermark is not None
            and (batch_watermark is None or batch_watermark < previous.batch_watermark)
        )
        rebuild = bool(rebuild) or (latest is None and previous.speed_last_batch >= 0)
        after = -1 if rebuild else previous.speed_last_batch
        new_batches = [b for b in committed if b > after]
        cut = _cut_value(spec, batch_watermark)
        position = _time_index(spec)
        speed_table = paths.table(spec.speed_query)
        speed_rows: list[tuple[Any, ...]] = []
        newest: dict[int, int | None] = {}
        # Folders read before the store remembered micro-batches (older code): read once more
        # for their newest time, so that they too are removed once covered.
        held = set() if rebuild else speed_batches_held(connection, view)
        unknown = [b for b in committed if b <= after and b not in held]
        for batch_id in [*unknown, *new_batches]:
            table = _read_parquet(retention.batch_folder(speed_table, batch_id), spec.columns)
            rows = _store_rows(spec, table) if table is not None else []
            newest[batch_id] = _newest(spec, rows)
            if batch_id <= after:
                continue
            report.speed_rows_read += len(rows)
            speed_rows += [r for r in rows if cut is None or r[position] >= cut]

        for dt in dropped:
            drop_batch_day(connection, spec, dt)
        for dt, (computed_at, rows) in loaded.items():
            report.batch_rows_loaded += replace_batch_day(connection, spec, dt, computed_at, rows)
        if rebuild:
            prune_speed(connection, spec, None)
            forget_speed_batches(connection, view, None)
        insert_speed(connection, spec, speed_rows)
        record_speed_batches(connection, view, newest)
        if cut is not None:
            report.speed_rows_pruned = prune_speed(connection, spec, cut)
        # Only batches an earlier refresh read and committed (ids up to its last one): were
        # this transaction to roll back, the store would still hold their rows.
        removal_cut = _removal_cut(settings, batch_watermark)
        removable = (
            []
            if removal_cut is None or rebuild
            else speed_batches_before(
                connection,
                view,
                _cut_value(spec, removal_cut) or 0,
                previous.speed_last_batch,
            )
        )
        if removable:
            retention.record_removed_before(paths.root, spec.speed_query, removal_cut)
            report.speed_folders_removed = retention.remove_batches(speed_table, removable)
            forget_speed_batches(connection, view, removable)
        report.speed_folders_kept = len(set(committed) - set(removable))
        connection.execute(
            "INSERT OR REPLACE INTO views (view, batch_watermark, speed_watermark, "
            "speed_last_batch, refreshed_at, speed_max_event_time) VALUES (?, ?, ?, ?, ?, ?)",
            (
                view,
                epoch_seconds(batch_watermark) if batch_watermark else None,
                epoch_seconds(speed_watermark) if speed_watermark else None,
                latest if latest is not None else -1,
                iso(datetime.now(UTC)),
                epoch_micros(speed_newest) if speed_newest else None,
            ),
        )
    report.batch_days_loaded = list(loaded)
    report.batch_days_dropped = dropped
    report.speed_batches_read = len(new_batches)
    report.speed_rebuilt = rebuild
    report.batch_watermark = batch_watermark
    report.speed_watermark = speed_watermark
    report.rows = store.row_counts(view)
    report.duration_s = time.monotonic() - started
    return report


def refresh_all(
    settings: Settings, store: ServingStore, lake: Lake | None = None
) -> list[RefreshReport]:
    """Refresh every view of the store (every declared count view, then sessions)."""
    lake = lake or Lake.from_settings(settings)
    return [refresh_view(settings, store, view, lake) for view in store.specs]


def pending_views(settings: Settings, store: ServingStore | None = None) -> dict[str, str]:
    """Views whose store lags the lake, with why: a batch day computed or recomputed since the
    store loaded it, or speed micro-batches committed since the last refresh. Cheap: listings
    and small state files only."""
    store = store or ServingStore.from_settings(settings)
    lake = Lake.from_settings(settings)
    pending: dict[str, str] = {}
    for name, spec in store.specs.items():
        held = store.batch_days(name)
        computed = computed_batch_days(lake, spec.batch_table)
        changed = [day.isoformat() for day in changed_days(computed, held)]
        latest = latest_commit(settings, spec.speed_query)
        last = store.view_state(name).speed_last_batch
        if changed:
            pending[name] = f"batch days {', '.join(changed[:5])}" + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
        elif latest is not None and latest != last:
            pending[name] = f"speed micro-batches {last + 1}..{latest}"
    return pending
