"""Refreshing the store from the lake, against an independent recomputation, on traffic landed
from a real broker through real Spark speed and batch runs: windows wholly in batch, wholly in
speed and straddling the batch watermark, before and after late events are absorbed; duplicates
and malformed records included. Also concurrent refreshes, the batch watermark of contiguous
days, and which speed micro-batches count as committed."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambda_arch.batch import layer as batch
from lambda_arch.common.config import Settings
from lambda_arch.serving import answers
from lambda_arch.serving.refresh import (
    committed_batches,
    contiguous_watermark,
    pending_views,
    refresh_view,
)
from lambda_arch.serving.store import ServingStore, iso
from lambda_arch.speed import layer as speed
from lambda_arch.views.spec import VIEWS
from tests.lambda_arch.serving.oracle import Oracle, assert_rollups_agree, clean, public, utc
from tests.lambda_arch.serving.pipeline import (
    DAY,
    LATE_RECORDS,
    MIDNIGHT,
    Pipeline,
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
    assert [r.batch_days_loaded for r in reports] == [["2026-03-01"]] * 3
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
    assert [r.batch_days_loaded for r in reports] == [["2026-03-01"]] * 3
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
            for view in VIEWS:
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
