"""A count view declared in a home that already holds computed days and speed deltas: the batch
layer owes it every complete day, the speed layer fills it from the landed events the counts
query read before, and both are then exact against plain Python. Removing the declaration
leaves the other views untouched.

Real broker, real Spark; the references are the plain-Python models of test_layer and
test_transforms (generated traffic with duplicates, late and malformed records).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.schema import PlayEvent
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.speed.counts import REGISTRY, read_registry
from lambda_arch.speed.layer import (
    SpeedPaths,
    read_speed_state,
    read_trending_speed,
    read_view_speed,
    run_counts_speed,
    run_landing,
)
from lambda_arch.views.declarations import BUILT_IN, declared_views, load_views_file
from tests.lambda_arch.speed.test_layer import (
    KafkaTopic,
    Model,
    keyed,
    new_topic,
    ref_view,
    settings_for,
    views_file,
)
from tests.lambda_arch.views.test_transforms import counts_of, event, ref_dedup, ref_trending

DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)


def wave(start: datetime, count: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    """Generated records from `start` (about 0.5 per second) with duplicates, late and
    malformed ones."""
    config = TrafficConfig(
        seed=seed,
        start=start,
        events_per_second=0.5,
        duplicate_rate=0.08,
        late_rate=0.05,
        malformed_rate=0.04,
        members=20,
        titles=8,
    )
    records = []
    for record in generate(config):
        records.append((record.key, record.value))
        if len(records) == count:
            return records
    raise AssertionError("the generator ended early")


def clock(event_id: str, moment: datetime) -> list[tuple[bytes | None, bytes]]:
    """One play at `moment`: moves the landing watermark (completes the days before)."""
    return keyed([event(event_id, moment, member=99, title=1, kind="play_start")])


def home_settings(tmp_path: Path, kafka: KafkaTopic, views: Path | None) -> Settings:
    database = f"added_{uuid.uuid4().hex[:10]}"
    base = settings_for(tmp_path / "home", kafka, 120, views)
    return base.model_copy(update={"database": database})


def batch_counts(spark, lake: Lake, table: str, day: date) -> Counter:
    return counts_of(batch.read_batch_view(spark, lake, table, [day]).drop("dt"))


def on_day(events: list[PlayEvent], day: date) -> list[PlayEvent]:
    return [e for e in events if e.event_time.astimezone(UTC).date() == day]


def test_a_view_added_later_is_exact_in_batch_and_speed_after_its_fill(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic)
    plain = home_settings(tmp_path, kafka, None)
    conf = views_file(tmp_path / "conf")
    declared = plain.model_copy(update={"views_file": conf})
    (view,) = load_views_file(conf)
    paths = SpeedPaths.from_settings(plain)
    lake = Lake.from_settings(plain)
    model = Model()

    # The home before the view: day 1's traffic landed, counted by the speed layer (built-in
    # views only) and computed by the batch layer.
    kafka.send(wave(datetime(2026, 3, 1, 22, 0, tzinfo=UTC), 300, seed=31))
    kafka.send(clock("clock-1", datetime(2026, 3, 2, 0, 30, tzinfo=UTC)))
    first = run_landing(spark, plain, lake)  # the counts query: it lands and counts
    model.apply(first, kafka.records)
    owed = batch.plan(plain, lake)
    assert owed.missing == [DAY1]
    batch.compute_days(spark, lake, owed.missing, lock_dir=plain.home / "locks")
    assert batch.plan(plain, lake).missing == []
    assert read_registry(paths.state_file(REGISTRY)) == {v.name: -1 for v in BUILT_IN}
    trending_day1 = batch_counts(spark, lake, "trending_batch", DAY1)
    # One more micro-batch before the view is declared.
    kafka.send(clock("ahead", datetime(2026, 3, 2, 0, 31, tzinfo=UTC)))
    ahead = run_counts_speed(spark, plain, paths)
    model.apply(ahead, kafka.records)
    assert ahead.events_read == 1
    before = list(kafka.records)

    # The view is declared: the batch layer owes it every complete day.
    assert batch.plan(declared, lake).missing == [DAY1]
    # More traffic, on day 2, then the speed layer with the view: filled, then counted.
    kafka.send(wave(datetime(2026, 3, 2, 0, 40, tzinfo=UTC), 200, seed=32))
    kafka.send(clock("clock-2", datetime(2026, 3, 3, 0, 30, tzinfo=UTC)))
    # The fill reads the lake: the counts query landed every record it read before.
    counted_before = len(model.counted)
    second = run_counts_speed(spark, declared, paths)
    model.apply(second, kafka.records)
    assert second.events_read == len(kafka.records) - len(before)
    landed = read_speed_state(paths, "landing")
    assert landed is not None and landed["offsets"] == {
        str(p): o for p, o in second.offsets.items()
    }
    assert batch.landing_watermark(plain) == datetime(2026, 3, 3, 0, 20, tzinfo=UTC)

    # Speed: what the counts query read before the view existed, from the lake (each event_id
    # once, late ones included), plus what it counted since, by the contract's rules.
    filled = ref_dedup(before)
    want = ref_view(view, filled) + ref_view(view, model.counted[counted_before:])
    assert counts_of(read_view_speed(spark, paths, view)) == want
    assert sum(ref_view(view, model.counted[counted_before:]).values()) > 0
    assert sum(ref_view(view, filled).values()) > 0
    folders = sorted(p.name for p in (Path(paths.table(f"{view.name}_speed"))).iterdir())
    last_before = max(b.batch_id for b in ahead.batches)
    assert folders[0] == f"batch_id={last_before}"  # one folder for the fill, then the query's
    registry = read_registry(paths.state_file(REGISTRY))
    assert registry[view.name] == last_before
    state = read_speed_state(paths, f"{view.name}_speed")
    assert state is not None and state["offsets"] == {str(p): o for p, o in second.offsets.items()}
    # The built-in views are as if nothing had been declared.
    assert counts_of(read_trending_speed(spark, paths)) == ref_trending(model.counted)

    # Batch: both complete days owed (day 1 for the view, day 2 for everything), then exact.
    owed = batch.plan(declared, lake)
    assert owed.missing == [DAY1, DAY2]
    views = declared_views(conf)
    batch.compute_days(spark, lake, owed.missing, lock_dir=plain.home / "locks", count_views=views)
    assert batch.plan(declared, lake).missing == []
    clean = ref_dedup(kafka.records)
    for day in (DAY1, DAY2):
        events = on_day(clean, day)
        assert batch_counts(spark, lake, f"{view.name}_batch", day) == ref_view(view, events)
        assert batch_counts(spark, lake, "trending_batch", day) == ref_trending(events)
    assert batch_counts(spark, lake, "trending_batch", DAY1) == trending_day1

    # The declaration removed: the other views go on untouched, the view's folders stay.
    kafka.send(clock("clock-3", datetime(2026, 3, 3, 0, 31, tzinfo=UTC)))
    third = run_counts_speed(spark, plain, paths)
    model.apply(third, kafka.records)
    assert view.name not in read_registry(paths.state_file(REGISTRY))
    assert counts_of(read_trending_speed(spark, paths)) == ref_trending(model.counted)
    assert counts_of(read_view_speed(spark, paths, view)) == want
    assert datetime(2026, 3, 3, 0, 31, tzinfo=UTC) - timedelta(minutes=10) == third.watermark
