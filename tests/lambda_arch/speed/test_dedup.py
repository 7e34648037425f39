"""The counts query's own dedup state against a plain-Python model of the contract's rules."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lambda_arch.speed import dedup
from lambda_arch.speed.dedup import BatchStats, DedupState

START = datetime(2026, 3, 1, tzinfo=UTC)
LATENESS = timedelta(minutes=10)
SCHEMA = "event_id string, event_type string, event_time timestamp, partition int, offset bigint"


@dataclass(frozen=True)
class Row:
    event_id: str
    event_time: datetime
    partition: int
    offset: int
    event_type: str = "play_start"


class Model:
    """The contract, in plain Python: an event older than the batch's watermark is late; an
    event_id counted before (and not expired: its event_time + lateness not below the
    watermark) is a repeat; within a batch the earliest copy by (time, partition, offset)."""

    def __init__(self, event_types: tuple[str, ...] = ()) -> None:
        self.event_types = event_types  # only these are counted and remembered (empty: all)
        self.seen: dict[str, datetime] = {}
        self.newest: datetime | None = None

    def watermark(self) -> datetime | None:
        return None if self.newest is None else self.newest - LATENESS

    def apply(self, batch: list[Row], batch_id: int) -> tuple[set[str], BatchStats]:
        w = self.watermark()
        on_time = [r for r in batch if w is None or r.event_time >= w]
        typed = [r for r in on_time if not self.event_types or r.event_type in self.event_types]
        live = {i for i, t in self.seen.items() if w is None or t >= w - LATENESS}
        first: dict[str, Row] = {}
        for row in sorted(typed, key=lambda r: (r.event_time, r.partition, r.offset)):
            first.setdefault(row.event_id, row)
        counted = {i: r for i, r in first.items() if i not in live}
        self.seen.update({i: r.event_time for i, r in counted.items()})
        times = [r.event_time for r in batch]
        if times:
            self.newest = max([*times, *([self.newest] if self.newest else [])])
        late = len(batch) - len(on_time)
        stats = BatchStats(
            batch_id,
            len(batch),
            late,
            len(typed) - len(counted),
            len(counted),
            len(on_time) - len(typed),
        )
        return set(counted), stats


def traffic(batches: int, seed: int, heartbeats: float = 0.0) -> list[list[Row]]:
    """Micro-batches of plays moving forward in time, with repeats (also across batches and
    after their expiry), late and out-of-order events; a `heartbeats` share of new events are
    play_heartbeat."""
    rng = random.Random(seed)
    sent: list[Row] = []
    result = []
    offset = 0
    for b in range(batches):
        batch = []
        for _ in range(rng.randint(0, 25)):
            offset += 1
            roll = rng.random()
            if sent and roll < 0.15:  # a repeat of any earlier event, possibly long expired
                old = rng.choice(sent)
                row = Row(old.event_id, old.event_time, rng.randint(0, 2), offset, old.event_type)
            elif roll < 0.25:  # late or nearly: up to 25 minutes behind the batch's time
                moment = START + timedelta(minutes=3 * b) - timedelta(minutes=rng.uniform(0, 25))
                row = Row(f"e{offset}", moment, rng.randint(0, 2), offset)
            else:
                moment = START + timedelta(minutes=3 * b, seconds=rng.uniform(0, 180))
                row = Row(f"e{offset}", moment, rng.randint(0, 2), offset)
            if row.event_id == f"e{offset}" and rng.random() < heartbeats:
                row = Row(row.event_id, row.event_time, row.partition, offset, "play_heartbeat")
            batch.append(row)
        sent += batch
        result.append(batch)
    return result


def frame(spark, batch: list[Row]):
    rows = [(r.event_id, r.event_type, r.event_time, r.partition, r.offset) for r in batch]
    return spark.createDataFrame(rows, SCHEMA)


def admit_as_the_model(
    spark, state: DedupState, model: Model, batch: list[Row], batch_id: int
) -> BatchStats:
    """Admit one batch and check it against the model: the same ids counted, the same stats."""
    watermark = model.watermark()
    want_ids, want_stats = model.apply(batch, batch_id)
    counted, stats = state.admit(frame(spark, batch), batch_id, watermark)
    got_ids = {row.event_id for row in counted.select("event_id").collect()}
    counted.unpersist()
    assert (got_ids, stats) == (want_ids, want_stats), batch_id
    return stats


def folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and "=" in p.name)


def test_admit_equals_the_model_over_many_batches_and_stays_bounded(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedup, "COMPACT_AFTER", 3)
    state = DedupState(str(tmp_path / "dedup"), LATENESS)
    model = Model()
    seen_stats = []
    for batch_id, batch in enumerate(traffic(16, seed=7)):
        seen_stats.append(admit_as_the_model(spark, state, model, batch, batch_id))
        # Compaction: one snapshot and at most COMPACT_AFTER deltas after it.
        assert len(folders(tmp_path / "dedup")) <= 3 + 2, folders(tmp_path / "dedup")
    assert any(s.late for s in seen_stats) and any(s.duplicates for s in seen_stats)
    assert state.read_stats(range(16)) == seen_stats
    assert any(name.startswith("snapshot=") for name in folders(tmp_path / "dedup"))


def test_a_retried_batch_decides_as_its_first_attempt(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after a batch wrote its state and before Spark committed it: the retry reads
    only the earlier batches' state, so its own ids are not repeats."""
    monkeypatch.setattr(dedup, "COMPACT_AFTER", 2)
    state = DedupState(str(tmp_path / "dedup"), LATENESS)
    model = Model()
    for batch_id, batch in enumerate(traffic(5, seed=3)):
        watermark = model.watermark()
        want_ids, want_stats = model.apply(batch, batch_id)
        for _attempt in range(2):
            counted, stats = state.admit(frame(spark, batch), batch_id, watermark)
            got = {row.event_id for row in counted.select("event_id").collect()}
            counted.unpersist()
            assert (got, stats) == (want_ids, want_stats), batch_id


def test_only_the_counted_types_are_deduplicated_and_remembered(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats (no view counts them) are neither counted nor kept in the state: the state
    holds the plays only, and the stats say how many on-time events were of other types."""
    monkeypatch.setattr(dedup, "COMPACT_AFTER", 3)
    state = DedupState(str(tmp_path / "dedup"), LATENESS, event_types=("play_start",))
    model = Model(event_types=("play_start",))
    all_stats = []
    for batch_id, batch in enumerate(traffic(12, seed=5, heartbeats=0.6)):
        all_stats.append(admit_as_the_model(spark, state, model, batch, batch_id))
    assert sum(s.uncounted for s in all_stats) > 0 and sum(s.duplicates for s in all_stats) > 0
    kept = spark.read.parquet(str(tmp_path / "dedup" / "*=*")).select("event_id").collect()
    plays = {r.event_id for batch in traffic(12, seed=5, heartbeats=0.6) for r in batch}
    plays -= {
        r.event_id
        for batch in traffic(12, seed=5, heartbeats=0.6)
        for r in batch
        if r.event_type != "play_start"
    }
    assert kept and {r.event_id for r in kept} <= plays
