"""Refreshing the store from the lake, against an independent recomputation, on traffic landed
from a real broker through real Spark speed and batch runs: windows wholly in batch, wholly in
speed and straddling the batch watermark, before and after late events are absorbed; duplicates
and malformed records included. Also concurrent refreshes, the batch watermark of contiguous
days, and which speed micro-batches count as committed."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambda_arch.batch import layer as batch
from lambda_arch.common.config import Settings
from lambda_arch.common.locks import file_lock
from lambda_arch.ingest.schema import PlayEvent
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.serving import answers
from lambda_arch.serving.refresh import (
    committed_batches,
    contiguous_watermark,
    pending_views,
    refresh_lock_path,
    refresh_view,
)
from lambda_arch.serving.store import ServingStore, iso
from lambda_arch.speed import layer as speed
from lambda_arch.speed.layer import (
    run_landing,
    run_sessions_speed,
)
from lambda_arch.views.spec import VIEWS
from tests.lambda_arch.serving.oracle import (
    Oracle,
    assert_rollups_agree,
    clean,
    plays_between,
    public,
    utc,
)
from tests.lambda_arch.serving.pipeline import (
    DAY,
    LATE_RECORDS,
    MIDNIGHT,
    Pipeline,
    new_pipeline,
    traffic,
)

COUNTRIES = [None, "US", "BR"]
# (as-of, window): wholly batch, ending at the watermark, straddling it (short and long),
# wholly speed, an empty stretch before the traffic, and a time given with an offset.
GRID = [
    (utc(22, 30, day=1), 60),
    (MIDNIGHT, 60),
    (utc(0, 30), 90),
    (utc(3, 0), 600),
    (utc(2, 45), 45),
    (utc(12, 0, day=1), 60),
    (datetime.fromisoformat("2026-03-02T02:17:41+02:00"), 30),
]


def assert_answers_match(store: ServingStore, oracle: Oracle) -> int:
    """Every (country, as-of, window) of the grid, trending and discovery; sessions of every
    member. Returns how many answers were compared."""
    compared = 0
    for country, (as_of, window) in itertools.product(COUNTRIES, GRID):
        got = answers.trending(store, country=country, as_of=as_of, window=window, limit=8)
        want = oracle.trending(as_of.astimezone(UTC), window, country, 8)
        assert got["titles"] == want, (country, as_of, window)
        assert got["as_of"] == iso(as_of.astimezone(UTC).replace(second=0, microsecond=0))
        assert got["batch_watermark"] == iso(oracle.batch_watermark)
        got = answers.discovery(store, country=country, as_of=as_of, window=window)
        assert got["sources"] == oracle.discovery(as_of.astimezone(UTC), window, country)
        compared += 2
    members = {e.member_id for e in oracle.speed_events + oracle.batch_events}
    for member in sorted(members):
        served = answers.sessions(store, member_id=member)["sessions"]
        must, may = oracle.sessions(member)
        for session in map(public, must):
            assert session in served, (member, session)
        allowed = [public(s) for s in must + may]
        assert all(session in allowed for session in served), member
        compared += 1
    assert_rollups_agree(store)
    return compared


def test_serving_equals_an_independent_recomputation_before_and_after_late_data(
    pipeline: Pipeline,
) -> None:
    on_time = traffic()
    pipeline.send(on_time)
    pipeline.speed_pass()
    # Nothing computed in batch yet: every answer comes from the speed layer.
    pipeline.refresh()
    speed_watermark = pipeline.store.view_state("trending").speed_watermark
    assert speed_watermark is not None and speed_watermark > utc(3, 30)
    everything = clean(pipeline.sent)
    assert assert_answers_match(
        pipeline.store, Oracle(everything, everything, None, speed_watermark)
    )

    # The day before midnight is complete: batch before the watermark, speed after.
    pipeline.compute(DAY)
    reports = pipeline.refresh()
    assert [r.batch_days_loaded for r in reports] == [["2026-03-01"]] * len(pipeline.store.specs)
    assert all(r.batch_watermark == MIDNIGHT for r in reports)
    assert reports[0].speed_rows_pruned > 0  # speed buckets before midnight are gone
    assert (
        answers.trending(pipeline.store, as_of=utc(3, 0))["batch_watermark"]
        == "2026-03-02T00:00:00Z"
    )
    assert assert_answers_match(
        pipeline.store, Oracle(everything, everything, MIDNIGHT, speed_watermark)
    )

    # Late plays land; the speed layer leaves them out, the computed day is stale but served.
    pipeline.send(LATE_RECORDS)
    pipeline.speed_pass()
    assert batch.stale_days(pipeline.lake, [DAY]) == [DAY]
    reports = pipeline.refresh()
    assert all(not r.batch_days_loaded for r in reports)
    assert assert_answers_match(
        pipeline.store, Oracle(everything, everything, MIDNIGHT, speed_watermark)
    )

    # The day is recomputed: the late plays before midnight are served, those after are not.
    pipeline.compute(DAY)
    reports = pipeline.refresh()
    assert [r.batch_days_loaded for r in reports] == [["2026-03-01"]] * len(pipeline.store.specs)
    with_late = clean(pipeline.sent)
    oracle = Oracle(with_late, everything, MIDNIGHT, speed_watermark)
    assert assert_answers_match(pipeline.store, oracle)
    # The grid does see the late plays (else the comparison above proves nothing about them).
    before_late = Oracle(everything, everything, MIDNIGHT, speed_watermark)
    assert oracle.trending(utc(22, 30, day=1), 60, "BR", 8) != before_late.trending(
        utc(22, 30, day=1), 60, "BR", 8
    )

    # A refresh with nothing new changes nothing and reads nothing.
    before = answers.trending(pipeline.store, as_of=utc(3, 0), window=600)
    again = pipeline.refresh()
    assert all(not r.batch_days_loaded and r.speed_batches_read == 0 for r in again)
    assert answers.trending(pipeline.store, as_of=utc(3, 0), window=600) == before
    assert not pending_views(pipeline.settings, pipeline.store)


def test_concurrent_refreshes_add_each_micro_batch_once(served: Pipeline, tmp_path: Path) -> None:
    """A sensor's run and `lambda-arch run` may refresh at the same time."""
    store = ServingStore(tmp_path / "second.sqlite3")
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            for view in store.specs:
                refresh_view(served.settings, store, view, served.lake)
        except BaseException as error:  # surfaced below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for as_of, window in GRID:
        assert answers.trending(store, as_of=as_of, window=window) == answers.trending(
            served.store, as_of=as_of, window=window
        )
        assert answers.discovery(store, as_of=as_of, window=window) == answers.discovery(
            served.store, as_of=as_of, window=window
        )
    rows = {view: summary["rows"] for view, summary in served.store.summary().items()}
    assert rows == {view: summary["rows"] for view, summary in store.summary().items()}


def test_a_refresh_waits_its_turn_at_the_refresh_lock(served: Pipeline, tmp_path: Path) -> None:
    """Seen in CI: four refreshes at once on a loaded machine, the last failed with "database is
    locked" after SQLite's 30 s wait. Refreshes queue at a file lock of their own instead."""
    store = ServingStore(tmp_path / "third.sqlite3")
    view = next(iter(store.specs))
    reports: list[object] = []
    with file_lock(refresh_lock_path(served.settings, store), timeout_s=5, owner="test"):
        waiting = threading.Thread(
            target=lambda: reports.append(refresh_view(served.settings, store, view, served.lake))
        )
        waiting.start()
        waiting.join(timeout=2.0)
        assert waiting.is_alive() and not reports  # it waits; it neither fails nor writes
        assert store.view_state(view).speed_last_batch < 0
    waiting.join(timeout=120)
    assert len(reports) == 1
    assert store.view_state(view).speed_last_batch >= 0


def test_the_batch_watermark_is_the_end_of_the_contiguous_days() -> None:
    d = date(2026, 3, 1)
    days = [d, d + timedelta(days=1), d + timedelta(days=3)]
    assert contiguous_watermark(d, days) == datetime(2026, 3, 3, tzinfo=UTC)
    assert contiguous_watermark(d + timedelta(days=1), []) is None
    assert contiguous_watermark(None, days) is None


def test_committed_batches_reach_past_the_commit_log_retention(tmp_path: Path) -> None:
    """Spark keeps only the last ~100 entries of a commit log; every batch folder up to the
    newest commit is complete, the folder still being written (no commit yet) is not."""
    settings = Settings(
        LAMBDA_ARCH_HOME=str(tmp_path / "home"), LAMBDA_ARCH_WAREHOUSE=str(tmp_path / "lake")
    )
    commits = Path(speed.checkpoint_of(settings, speed.TRENDING)) / "commits"
    commits.mkdir(parents=True)
    for batch_id in range(152, 253):
        (commits / str(batch_id)).write_text("v1\n")
    (commits / ".252.crc").write_text("")
    table = Path(speed.SpeedPaths.from_settings(settings).table(speed.TRENDING))
    for batch_id in range(254):
        (table / f"batch_id={batch_id}").mkdir(parents=True)
    assert committed_batches(settings, speed.TRENDING) == list(range(253))
    assert committed_batches(settings, speed.SESSIONS) == []


# Bounded disk: speed folders the batch layer covers are removed ------------------------------

BOUNDED_DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
PLAYS_PER_DAY = 24
BATCHES_PER_DAY = 4  # trending's micro-batches per speed pass (backpressure, one partition)


def _payload(event: PlayEvent) -> bytes:
    return json.dumps(
        {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "event_time": iso(event.event_time),
            "member_id": event.member_id,
            "title_id": event.title_id,
            "country": event.country,
            "discovery_source": event.discovery_source,
            "position_ms": 1000 * (event.member_id + event.title_id),
        }
    ).encode()


def _speed_folders(settings: Settings, query: str) -> list[int]:
    table = Path(speed.SpeedPaths.from_settings(settings).table(query))
    return sorted(int(p.name.removeprefix("batch_id=")) for p in table.glob("batch_id=*"))


def test_speed_folders_stay_bounded_and_answers_exact(
    spark: object, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Three days of traffic, a speed pass of several micro-batches per day, the previous day
    computed after each: the folders the batch watermark covers go (the old code kept all),
    and every answer still equals the plain-Python recomputation."""
    # One Kafka partition: micro-batches cut by the backpressure limit follow event time.
    pipeline = new_pipeline(
        spark,
        broker,
        tmp_path,
        partitions=1,
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH=str(PLAYS_PER_DAY // BATCHES_PER_DAY),
        LAMBDA_ARCH_SPEED_RETENTION_HOURS="0",
    )
    settings = pipeline.settings
    one_batch = settings.model_copy(update={"max_events_per_batch": 100_000})
    events: list[PlayEvent] = []
    # The last day ends at noon: its events are after the final batch watermark.
    for n, day in enumerate(BOUNDED_DAYS):
        first = datetime(day.year, day.month, day.day, tzinfo=UTC)
        last = first + timedelta(hours=12 if day == BOUNDED_DAYS[-1] else 24)
        events += sorted(
            plays_between(first, last, seed=10 + n, count=PLAYS_PER_DAY), key=lambda e: e.event_time
        )
    queries = [spec.speed_query for spec in VIEWS.values()]
    assert queries[0] == speed.TRENDING
    last_before: dict[str, int] = {}
    for n, day in enumerate(BOUNDED_DAYS):
        pipeline.send([_payload(e) for e in events if e.event_time.date() == day])
        # The counts query (landing and every view) in many micro-batches, sessions in one.
        run_landing(spark, settings, pipeline.lake)
        run_sessions_speed(spark, one_batch)
        if n:
            pipeline.compute(BOUNDED_DAYS[n - 1])
        pipeline.refresh()
        if day == BOUNDED_DAYS[-2]:
            # The micro-batches after this: the last pass's (the only ones with rows after the
            # final batch watermark, and a few closing sessions of the day before).
            last_before = {q: max(_speed_folders(settings, q), default=-1) for q in queries}

    watermark = datetime(2026, 3, 3, tzinfo=UTC)
    total = {
        q: len(list((Path(speed.checkpoint_of(settings, q)) / "commits").glob("[0-9]*")))
        for q in queries
    }
    for query in queries:
        left = _speed_folders(settings, query)
        # Many micro-batches committed, only about those of the last pass still on disk.
        newest_pass = len([b for b in left if b > last_before[query]])
        assert total[query] >= (3 * BATCHES_PER_DAY if query == speed.TRENDING else 3), total
        assert len(left) <= newest_pass + 2, (query, left, last_before)
        assert all(b > last_before[query] for b in left), (query, left, last_before)
    reports = pipeline.refresh()
    assert all(r.batch_watermark == watermark for r in reports)

    speed_watermark = pipeline.store.view_state("trending").speed_watermark
    assert speed_watermark is not None
    oracle = Oracle(events, events, watermark, speed_watermark)
    compared = 0
    for country, as_of, window in itertools.product(
        [None, "US", "BR"],
        [utc(12, 0, day=1), utc(0, 0, day=3), utc(6, 30, day=3), utc(12, 0, day=3)],
        [60, 600, 1440, 3 * 1440],
    ):
        got = answers.trending(pipeline.store, country=country, as_of=as_of, window=window)
        assert got["titles"] == oracle.trending(as_of, window, country, 10), (country, as_of)
        got = answers.discovery(pipeline.store, country=country, as_of=as_of, window=window)
        assert got["sources"] == oracle.discovery(as_of, window, country), (country, as_of)
        compared += 2
    for member in sorted({e.member_id for e in events}):
        served = answers.sessions(pipeline.store, member_id=member)["sessions"]
        must, may = oracle.sessions(member)
        assert all(public(s) in served for s in must), member
        assert all(s in [public(x) for x in must + may] for s in served), member
    assert compared == 96
    assert_rollups_agree(pipeline.store)
