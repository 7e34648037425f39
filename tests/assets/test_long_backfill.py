"""A 400-day backfill in one run, through Dagster over a real Spark Connect server.

Seen before issue 12: a 215-day backfill failed in the check trending_batch:speed_matches_batch
with a protobuf DecodeError, a condition per day OR-ed into a plan deeper than Spark Connect
parses. Here a few plays a day over 400 complete days (and a few minutes of the day running)
go through `lambda-arch run` in a child process (speed_job, then batch_job over the whole range
as one run with the partition-range tags, every check included, then serving_job); every check
must pass and the served answers equal a plain-Python recomputation from the events sent.

The days end yesterday (wall clock), so the batch freshness checks have their latest
partition too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.ingest.schema import DISCOVERY_SOURCES
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.runtime.spark_connect import ConnectServer
from lambda_arch.serving.answers import MAX_WINDOW_MIN
from tests.connect_helpers import connect_server

CHILD = Path(__file__).with_name("long_backfill_child.py")
DAYS = 400
NIGHT_OWL = 100  # a member whose session crosses every midnight
GAP = timedelta(minutes=30)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def traffic(first: date, days: int, now: datetime) -> list[dict[str, Any]]:
    """Four plays a day: two in one session at 23:00 and 23:20, one at 23:50 whose session
    ends at 00:10 the next day; then two plays five minutes ago (the day running)."""
    events = []
    for n in range(days):
        day = first + timedelta(days=n)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        source = DISCOVERY_SOURCES[n % len(DISCOVERY_SOURCES)]
        member, title = n % 11, n % 7
        for suffix, at, who, what, country in (
            # Two hours a day (23 and 0): the landing registers 800 hour partitions, not 1,200.
            ("a", timedelta(hours=23), member, title, "US"),
            ("b", timedelta(hours=23, minutes=20), member, title, "US"),
            ("c", timedelta(hours=23, minutes=50), NIGHT_OWL, 3, "FR"),
            ("d", timedelta(hours=24, minutes=10), NIGHT_OWL, 3, "FR"),
        ):
            events.append(
                {
                    "event_id": f"{day}-{suffix}",
                    "event_type": "play_start",
                    "event_time": start + at,
                    "member_id": who,
                    "title_id": what,
                    "country": country,
                    "discovery_source": source,
                }
            )
    recent = minute_of(now) - timedelta(minutes=5)
    for suffix in ("y", "z"):
        events.append(
            {
                "event_id": f"now-{suffix}",
                "event_type": "play_start",
                "event_time": recent,
                "member_id": 999,
                "title_id": 9,
                "country": "DE",
                "discovery_source": DISCOVERY_SOURCES[0],
            }
        )
    return sorted(events, key=lambda e: e["event_time"])


def expected_trending(events: list[dict[str, Any]], as_of: datetime, window: int) -> list:
    start = as_of - timedelta(minutes=window)
    plays = Counter(e["title_id"] for e in events if start <= e["event_time"] < as_of)
    return sorted(plays.items(), key=lambda item: (-item[1], item[0]))


def expected_discovery(events: list[dict[str, Any]], as_of: datetime, window: int) -> list:
    start = as_of - timedelta(minutes=window)
    plays = Counter(e["discovery_source"] for e in events if start <= e["event_time"] < as_of)
    total = sum(plays.values())
    ordered = sorted(plays.items(), key=lambda item: (-item[1], item[0]))
    return [(source, count, round(count / total, 4)) for source, count in ordered]


def expected_sessions(events: list[dict[str, Any]], member: int, before: datetime) -> list:
    """(title, start, end, events) of the member's sessions that ended before `before`."""
    times: dict[int, list[datetime]] = defaultdict(list)
    for event in events:
        if event["member_id"] == member:
            times[event["title_id"]].append(event["event_time"])
    sessions = []
    for title, moments in times.items():
        moments.sort()
        current = [moments[0]]
        for moment in moments[1:]:
            if moment - current[-1] >= GAP:
                sessions.append((title, current[0], current[-1], len(current)))
                current = [moment]
            else:
                current.append(moment)
        sessions.append((title, current[0], current[-1], len(current)))
    return sorted(s for s in sessions if s[2] < before)


@pytest.fixture
def connect_home(tmp_path: Path) -> Iterator[tuple[Settings, ConnectServer]]:
    """A Connect server of this test's own, with the home the child's runs use."""
    with connect_server(tmp_path / "home", sys.executable) as server:
        yield server.settings, server


@pytest.mark.slow  # about 6 minutes on 2 shared cores: a `lambda-arch run` of 400 days
@pytest.mark.timeout(1800)
def test_a_400_day_backfill_is_one_run_over_connect_with_every_check_passing(
    connect_home: tuple[Settings, ConnectServer], broker: EmbeddedBroker, topic: str
) -> None:
    settings, server = connect_home
    now = datetime.now(UTC)
    # Days complete once the landing watermark (latest event - 10 min) has passed their end.
    last = (minute_of(now) - timedelta(minutes=15)).date() - timedelta(days=1)
    first = last - timedelta(days=DAYS - 1)
    events = traffic(first, DAYS, now)
    ensure_topic(broker.bootstrap_servers, topic, 2)
    producer = make_producer(broker.bootstrap_servers)
    for event in events:
        document = {**event, "event_time": event["event_time"].strftime("%Y-%m-%dT%H:%M:%SZ")}
        producer.send(topic, value=json.dumps(document).encode())
    producer.flush()
    producer.close()

    watermark = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    # Windows of the longest length the API takes, end to end over the 400 days, then the
    # window ending now (batch then speed), one across the batch watermark and one hour.
    day_one = datetime(first.year, first.month, first.day, tzinfo=UTC)
    longest = timedelta(minutes=MAX_WINDOW_MIN)
    windows = [(day_one + n * longest, MAX_WINDOW_MIN) for n in range(1, DAYS // 31 + 1)]
    windows += [
        (minute_of(now), MAX_WINDOW_MIN),
        (watermark + timedelta(minutes=30), 120),
        (day_one + timedelta(hours=23, minutes=10), 60),
    ]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LAMBDA_ARCH_")
        and name not in ("KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE", "DAGSTER_HOME")
    }
    env.update(
        LAMBDA_ARCH_HOME=str(settings.home),
        LAMBDA_ARCH_SPARK_CONNECT_PORT=str(server.port),
        SPARK_REMOTE=server.url,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        LAMBDA_ARCH_TOPIC=topic,
        LAMBDA_ARCH_START_DATE=first.isoformat(),
    )
    query = json.dumps([(t.isoformat(), w) for t, w in windows])
    done = subprocess.run(
        [sys.executable, str(CHILD), query, str(NIGHT_OWL)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    batch_run = result["runs"]["batch_job"]
    print(f"\n{DAYS}-day run: {result['run_s']} s in all")
    for job, run in result["runs"].items():
        print(f"  {job}: {run['seconds']} s, steps {run['steps']}")
    assert result["exit"] == 0, result["output"]
    assert f"recomputing {first} .. {last}" in result["output"]
    assert batch_run["status"] == "SUCCESS"
    assert batch_run["tags"] == {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }

    batch_checks = [c for c in result["checks"] if c["job"] == "batch_job"]
    failed = [c for c in result["checks"] if not c["passed"]]
    assert not failed, failed
    names = {c["check"] for c in batch_checks}
    assert "trending_batch:speed_matches_batch" in names
    assert {"play_events_clean:clean_events_expectations"} <= names
    # One reconciliation per count view (issue 13); trending's is judged here.
    reconciled = next(c for c in batch_checks if c["check"] == "trending_batch:speed_matches_batch")
    # Every play of the 400 days is in both layers' buckets (the first day's 00:10 play and
    # the last day's 00:10 play lie before and after the range).
    assert reconciled["metadata"]["batch_plays"] == 4 * DAYS - 1
    assert reconciled["metadata"]["speed_plays"] == 4 * DAYS - 1

    plays = [e for e in events if e["event_type"] == "play_start"]
    for (as_of, window), trending, discovery in zip(
        windows, result["trending"], result["discovery"], strict=True
    ):
        assert [(t["title_id"], t["plays"]) for t in trending["titles"]] == expected_trending(
            plays, as_of, window
        ), (as_of, window)
        assert [
            (s["discovery_source"], s["plays"], s["share"]) for s in discovery["sources"]
        ] == expected_discovery(plays, as_of, window), (as_of, window)
    assert result["trending"][-3]["batch_watermark"] == watermark.strftime("%Y-%m-%dT%H:%M:%SZ")

    served = [
        (
            s["title_id"],
            datetime.fromisoformat(s["session_start"]),
            datetime.fromisoformat(s["session_end"]),
            s["events"],
        )
        for s in result["sessions"]
    ]
    # The sessions the batch layer owns: every midnight-crossing one but the last.
    settled = [s for s in served if s[2] < watermark]
    assert settled == expected_sessions(plays, NIGHT_OWL, watermark)
    assert len(settled) == DAYS - 1
