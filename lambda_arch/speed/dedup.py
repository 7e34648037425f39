"""The counts query's own lateness and deduplication, versioned by micro-batch id.

The one speed query lands every record it reads (late and repeated ones included) and counts
each event once, from the same micro-batch. Spark's stateful dedup cannot serve both: it drops
late and repeated rows before the batch reaches the sink. So the sink does it itself:

- **Late**: an event older than the watermark its micro-batch applies is not counted. That
  watermark is Spark's (`withWatermark` on the stream: newest event time of the earlier
  batches minus the lateness), read from the checkpoint's offset log (`batch_watermark`), so a
  retried batch applies the same one.
- **Counted types only**: only events of a type some view counts (`event_types`; play_start for
  the built-in views) are deduplicated and remembered; the others are landed and left out.
  A view declared with a type no earlier view counted starts without remembered ids of it: a
  copy arriving within the lateness of an event read before the declaration is counted again
  by the speed layer, until the batch layer recomputes that day.
- **Repeated**: an event_id counted before is not counted again. The ids counted by batch N are
  kept in `<speed root>/_dedup/batch_id=N/` (event_id, event_time); batch N reads the ids of
  batches below N only, so a retry of N (after a crash) decides exactly as the first attempt.
  Within a batch the earliest copy by (event_time, partition, offset) is counted
  (`views.transforms.deduplicate`, the batch layer's rule).
- **Expiry**: an id is kept while the watermark has not passed its event_time plus the
  lateness (Spark's `dropDuplicatesWithinWatermark` rule): a copy arriving later than that is
  older than the watermark, late, and never counted.
- **Compaction**: after COMPACT_AFTER deltas a batch writes `snapshot=N/` (every live id up to
  N) instead; a batch deletes the folders older than the newest snapshot below it, which no
  retry reads again.

`_dedup/stats/N.json` holds what batch N saw (valid, late, duplicates, counted): the run's
report reads its late events there (`read_stats`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_arch.common.files import read_text, write_text
from lambda_arch.common.storage import hadoop_uri, pyarrow_filesystem
from lambda_arch.views.transforms import deduplicate

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Deltas between snapshots: a batch reads at most this many small folders plus one snapshot.
COMPACT_AFTER = 16
# Stats files kept behind the newest batch (a run reports the late events of its batches).
STATS_KEPT = 1000
STATE_SCHEMA = "event_id string, event_time timestamp"
_FOLDER = re.compile(r"^(?P<kind>batch_id|snapshot)=(?P<batch>\d+)$")


@dataclass(frozen=True)
class BatchStats:
    """What one micro-batch's deduplication saw."""

    batch_id: int
    valid: int  # valid events read
    late: int  # older than the batch's watermark: not counted
    duplicates: int  # event_id counted before (or twice in the batch): not counted again
    counted: int  # new events, counted by every view
    uncounted: int = 0  # on time, of a type no view counts: neither counted nor remembered


@dataclass(frozen=True)
class BatchTotals:
    """A micro-batch's valid events, how many are late, and how many on-time ones are of a
    counted type (one Spark job: `DedupState.totals`)."""

    valid: int
    late: int
    counted_types: int


@dataclass(frozen=True)
class Admission:
    """A batch's decision (`DedupState.decide`): the events to count, persisted, and what
    `DedupState.record` needs to remember them."""

    batch_id: int
    counted: DataFrame  # persisted: unpersist when the batch is done
    counted_n: int
    seen: DataFrame  # the live ids of the earlier batches
    earlier: tuple[tuple[int, str], ...]  # the state folders of the earlier batches
    kind: str  # what the batch writes: `batch_id` (its new ids) or `snapshot` (every live id)

    def stats(self, totals: BatchTotals) -> BatchStats:
        return BatchStats(
            self.batch_id,
            totals.valid,
            totals.late,
            totals.counted_types - self.counted_n,
            self.counted_n,
            totals.valid - totals.late - totals.counted_types,
        )


@dataclass(frozen=True)
class DedupState:
    """The ids the counts query has counted, under `root` (a folder or an s3:// URI).

    `event_types`: the types the views count (empty: every type). Only those are deduplicated
    and remembered: at the generator's mix (3 % play_start) the state and the anti-join are
    thirty times smaller than for every event."""

    root: str
    lateness: timedelta
    event_types: tuple[str, ...] = ()

    def folders(self) -> list[tuple[int, str]]:
        """(batch id, kind) of every state folder, oldest first; kind `batch_id` or `snapshot`."""
        from pyarrow import fs

        filesystem, path = pyarrow_filesystem(self.root)
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
        found = [
            _FOLDER.match(info.base_name) for info in infos if info.type == fs.FileType.Directory
        ]
        return sorted((int(m["batch"]), m["kind"]) for m in found if m)

    def admit(
        self, events: DataFrame, batch_id: int, watermark: datetime | None
    ) -> tuple[DataFrame, BatchStats]:
        """The events of micro-batch `batch_id` to count (persisted: unpersist when done) and
        what was left out. Records the counted ids as the batch's state."""
        admission = self.decide(events, batch_id, watermark)
        stats = admission.stats(self.totals(events, watermark))
        self.record(admission, stats)
        return admission.counted, stats

    def totals(self, events: DataFrame, watermark: datetime | None) -> BatchTotals:
        """One job over the batch's events (it also fills a cache they are read from)."""
        late = F.lit(False) if watermark is None else F.col("event_time") < watermark
        row = events.agg(
            F.count(F.lit(1)).alias("valid"),
            F.count_if(late).alias("late"),
            F.count_if(~late & self._counted_type()).alias("counted_types"),
        ).first()
        if row is None:
            return BatchTotals(0, 0, 0)
        return BatchTotals(int(row["valid"]), int(row["late"]), int(row["counted_types"]))

    def decide(self, events: DataFrame, batch_id: int, watermark: datetime | None) -> Admission:
        """The batch's new, on-time events of the counted types (one job); `record` it before
        the batch commits. A retry decides as the first attempt: it reads only the state of
        the batches below it."""
        on_time = events if watermark is None else events.where(F.col("event_time") >= watermark)
        first = deduplicate(on_time.where(self._counted_type()))
        earlier = tuple((b, kind) for b, kind in self.folders() if b < batch_id)
        live = _since_snapshot(earlier)
        seen = self._read(events, live, watermark)
        counted = first.join(seen.select("event_id"), "event_id", "left_anti").persist()
        counted_n = counted.count()
        deltas = sum(1 for _, kind in live if kind == "batch_id")
        kind = "snapshot" if deltas >= COMPACT_AFTER else "batch_id"
        return Admission(batch_id, counted, counted_n, seen, earlier, kind)

    def record(self, admission: Admission, stats: BatchStats) -> None:
        """Remember the batch's counted ids (a snapshot of every live id every COMPACT_AFTER
        batches), drop the folders no retry reads again, and keep the batch's stats."""
        ids = admission.counted.select("event_id", "event_time")
        if admission.kind == "snapshot":
            ids = admission.seen.unionByName(ids)
        self._write(ids, admission.kind, admission.batch_id)
        self._prune(admission.earlier, admission.batch_id)
        write_text(self._stats_file(stats.batch_id), json.dumps(asdict(stats)) + "\n")

    def _counted_type(self) -> Column:
        if not self.event_types:
            return F.lit(True)
        return F.col("event_type").isin(*self.event_types)

    def read_stats(self, batch_ids: Iterable[int]) -> list[BatchStats]:
        """The stats of those batches that are still kept."""
        found = []
        for batch_id in batch_ids:
            text = read_text(self._stats_file(batch_id))
            if text is not None:
                found.append(BatchStats(**json.loads(text)))
        return found

    def _read(
        self, events: DataFrame, live: Sequence[tuple[int, str]], watermark: datetime | None
    ) -> DataFrame:
        spark = events.sparkSession
        if not live:
            return spark.createDataFrame([], STATE_SCHEMA)
        paths = [hadoop_uri(self._folder(kind, b)) for b, kind in live]
        ids = spark.read.schema(STATE_SCHEMA).parquet(*paths)
        if watermark is None:
            return ids
        # Expired ids: the watermark passed their event_time + lateness.
        return ids.where(F.col("event_time") >= watermark - self.lateness)

    def _write(self, ids: DataFrame, kind: str, batch_id: int) -> None:
        for other in ("batch_id", "snapshot"):
            if other != kind:
                self._delete(self._folder(other, batch_id))  # left by an earlier attempt
        ids.coalesce(1).write.mode("overwrite").parquet(hadoop_uri(self._folder(kind, batch_id)))

    def _prune(self, earlier: Sequence[tuple[int, str]], batch_id: int) -> None:
        """Delete the folders older than the newest snapshot below `batch_id` (no retry of
        this batch or a later one reads them) and stats files beyond STATS_KEPT."""
        snapshots = [b for b, kind in earlier if kind == "snapshot"]
        if snapshots:
            for b, kind in earlier:
                if b < snapshots[-1]:
                    self._delete(self._folder(kind, b))
        old = batch_id - STATS_KEPT
        if old >= 0 and old % COMPACT_AFTER == 0:
            self._delete_stats_below(old)

    def _delete_stats_below(self, batch_id: int) -> None:
        from pyarrow import fs

        filesystem, path = pyarrow_filesystem(f"{self.root}/stats")
        for info in filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True)):
            stem = info.base_name.removesuffix(".json")
            if stem.isdigit() and int(stem) < batch_id:
                filesystem.delete_file(info.path)

    def _delete(self, location: str) -> None:
        from pyarrow import fs

        filesystem, path = pyarrow_filesystem(location)
        if filesystem.get_file_info(path).type == fs.FileType.Directory:
            filesystem.delete_dir(path)

    def _folder(self, kind: str, batch_id: int) -> str:
        return f"{self.root}/{kind}={batch_id}"

    def _stats_file(self, batch_id: int) -> str:
        return f"{self.root}/stats/{batch_id}.json"


def _since_snapshot(folders: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The newest snapshot and the deltas after it (all folders when there is no snapshot)."""
    snapshots = [i for i, (_, kind) in enumerate(folders) if kind == "snapshot"]
    return list(folders[snapshots[-1] :]) if snapshots else list(folders)
