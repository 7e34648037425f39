"""Incarnations of a topic and the records lost with them.

A topic's incarnation is its Kafka topic id (KIP-516; Tansu and Kafka >= 2.8 report one). A
restarted in-memory broker or a deleted and recreated topic is a new incarnation that starts
every partition at offset 0 again; the `lambda_kafka` source then reads it from its start
(`source_offsets.resume_position`). What the old incarnation held beyond a query's checkpoint is
gone with it, and only a record of the old incarnation's end offsets can say how much that was:

- the ledger (`Settings.topic_ends_file`, `$LAMBDA_ARCH_HOME/broker/topic-ends.json`) keeps per topic the end offsets last
  seen of each incarnation, in the order they were first seen. `lambda-arch up` records them
  every few seconds and once more, marked final, right before it stops its broker (after the
  final landing); `lambda-arch produce` records them after its last record is acknowledged.
- lost = recorded end - checkpoint offset, per partition, for the incarnation the checkpoint is
  of, plus the whole recorded end of every incarnation seen after it that the query never read
  (a broker that was restarted twice in between).

Exact when each of those records is final (taken by `up` as it stopped the broker, after the
traffic it runs had stopped); otherwise a lower bound: records produced after the last periodic
record (up to RECORD_EVERY_S of traffic before a kill -9) are not known to anyone. No record at
all (another home produced, a Kafka cluster recreated the topic): unknown, reported as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambda_arch.common.times import format_time
from lambda_arch.ingest.kafka_offsets import TopicBounds, topic_bounds

# How often `up` records the topic's end offsets (a kill -9 loses at most this much from view).
RECORD_EVERY_S = 5.0
# Incarnations kept per topic (the oldest are dropped).
KEEP = 20


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read-modify-write of a small file
        yield
    finally:
        os.close(fd)


def read_ledger(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per topic, its incarnations in the order first seen: topic_id, end, first_recorded_at,
    recorded_at, final."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    topics = document.get("topics") if isinstance(document, dict) else None
    return topics if isinstance(topics, dict) else {}


def record_ends(
    path: Path, topic: str, topic_id: str, end: Mapping[int, int], *, final: bool = False
) -> None:
    """Merge end offsets of one incarnation into the ledger (largest per partition wins).

    `final`: taken as the broker stops, with nothing left producing. A later record with larger
    ends clears the mark (something was produced after all).
    """
    now = format_time(datetime.now(UTC))
    with _locked(path):
        topics = read_ledger(path)
        entries = topics.setdefault(topic, [])
        entry = next((e for e in entries if e.get("topic_id") == topic_id), None)
        if entry is None:
            entry = {"topic_id": topic_id, "first_recorded_at": now, "end": {}, "final": False}
            entries.append(entry)
        old = {int(p): int(o) for p, o in entry["end"].items()}
        grew = any(int(o) > old.get(int(p), 0) for p, o in end.items())
        merged = {p: max(old.get(p, 0), int(end.get(p, 0))) for p in set(old) | set(end)}
        entry["end"] = {str(p): merged[p] for p in sorted(merged)}
        entry["recorded_at"] = now
        entry["final"] = final or (bool(entry.get("final")) and not grew)
        topics[topic] = entries[-KEEP:]
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"version": 1, "topics": topics}, indent=1) + "\n")
        os.replace(temporary, path)


def record_topic_ends(
    path: Path, bootstrap: str, topic: str, *, final: bool = False
) -> TopicBounds | None:
    """Ask the broker for the topic's end offsets and id and record them; None when the broker
    reports no topic id (nothing to tell incarnations apart by). Raises KafkaOffsetsError when
    the topic does not exist."""
    bounds = topic_bounds(bootstrap, topic)
    if bounds.topic_id is None:
        return None
    record_ends(path, topic, bounds.topic_id, bounds.end, final=final)
    return bounds


@dataclass(frozen=True)
class IncarnationLoss:
    """What a query lost when the topic changed incarnation between two of its runs."""

    topic: str
    previous_id: str  # the incarnation the query's checkpoint is of
    current_id: str
    checkpoint: dict[int, int]  # where the query stood in the previous incarnation
    lost: dict[int, int]  # records known lost, per partition, over every lost incarnation
    incarnations: int  # incarnations the query lost records of (its own, and unread ones)
    recorded: bool  # the checkpoint's incarnation has a record: `lost` counts it
    exact: bool  # recorded, and every record used was final: `lost` is exact

    @property
    def total(self) -> int:
        return sum(self.lost.values())

    @property
    def precision(self) -> str:
        if self.exact:
            return "exact"
        return "lower bound" if self.recorded else "unknown"

    def describe(self, query: str) -> str:
        """One line for logs and alerts."""
        what = {
            "exact": f"{self.total:,} records",
            "lower bound": f"at least {self.total:,} records",
            "unknown": f"an unknown number of records (at least {self.total:,})",
        }[self.precision]
        return (
            f"{query}: topic {self.topic!r} is a new incarnation (topic id {self.current_id}, "
            f"was {self.previous_id}: the broker restarted with memory storage, or the topic "
            f"was recreated); {what} of the old one were never read and are lost; reading the "
            "new one from its start"
        )

    def metadata(self) -> dict[str, int | str]:
        """Flat values for run metadata and alerts."""
        result: dict[str, int | str] = {
            "records_lost": self.total,
            "records_lost_precision": self.precision,
            "lost_incarnations": self.incarnations,
            "previous_topic_id": self.previous_id,
            "topic_id": self.current_id,
        }
        result.update({f"records_lost_p{p}": n for p, n in sorted(self.lost.items())})
        return result


def incarnation_loss(
    ledger: Mapping[str, list[dict[str, Any]]],
    topic: str,
    checkpoint: Mapping[int, int],
    previous_id: str,
    current_id: str,
) -> IncarnationLoss:
    """The loss of a query standing at `checkpoint` of incarnation `previous_id` now that the
    topic is `current_id` (see the module's docstring for what is exact)."""
    entries = list(ledger.get(topic) or [])
    ids = [e.get("topic_id") for e in entries]
    lost: dict[int, int] = {}
    recorded, exact, count = False, True, 1
    if previous_id in ids:
        recorded = True
        index = ids.index(previous_id)
        own = entries[index]
        exact = bool(own.get("final"))
        for p, o in own["end"].items():
            lost[int(p)] = max(0, int(o) - int(checkpoint.get(int(p), 0)))
        # Incarnations seen after it and before the current one: never read at all.
        for entry in entries[index + 1 :]:
            if entry.get("topic_id") in (previous_id, current_id):
                continue
            count += 1
            exact = exact and bool(entry.get("final"))
            for p, o in entry["end"].items():
                lost[int(p)] = lost.get(int(p), 0) + int(o)
    return IncarnationLoss(
        topic=topic,
        previous_id=previous_id,
        current_id=current_id,
        checkpoint=dict(checkpoint),
        lost=dict(sorted(lost.items())),
        incarnations=count,
        recorded=recorded,
        exact=recorded and exact,
    )
