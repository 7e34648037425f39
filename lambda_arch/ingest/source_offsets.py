"""Offsets of the `lambda_kafka` source: as Spark keeps them, how much a batch admits, where a
run resumes (after the data-loss check), and what a streaming checkpoint holds.

Spark keeps `{"<partition>": next offset, ..., "topicId": "<uuid>"}`: the topic id (when the
broker reports one) names the incarnation of the topic the offsets belong to. A run whose
offsets name another incarnation than the broker's (a restarted in-memory broker, a deleted and
recreated topic) reads the new one from its start: its offsets say nothing about the new one,
and going on from them would skip its first records (or fail on them). What was lost with the
old incarnation is counted by `lambda_arch.ingest.incarnations`, outside the source.

The checkpoint readers need no Spark: the Kafka-lag sensor and the speed layer's run metadata
use them before a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambda_arch.ingest.kafka_offsets import (
    Gap,
    KafkaDataLossError,
    KafkaOffsetsError,
    TopicBounds,
    check_data_loss,
    describe_gaps,
    find_data_loss,
    partitions_of,
    topic_bounds,
)
from lambda_arch.ingest.kafka_options import CONTINUE_HINT, EARLIEST, LATEST, SourceOptions

log = logging.getLogger("lambda_arch.ingest.source_offsets")


TOPIC_ID_KEY = "topicId"


def encode_offsets(offsets: Mapping[int, int], topic_id: str | None = None) -> dict[str, int | str]:
    """Offsets as Spark stores them: JSON keys are text; sorted so equal offsets compare equal;
    the topic id (when known) under TOPIC_ID_KEY."""
    encoded: dict[str, int | str] = {str(p): int(offsets[p]) for p in sorted(offsets)}
    if topic_id:
        encoded[TOPIC_ID_KEY] = topic_id
    return encoded


def decode_offsets(offsets: Mapping[str, Any] | None) -> dict[int, int]:
    """The partition offsets of encode_offsets' form (the topic id left out)."""
    return {int(p): int(o) for p, o in (offsets or {}).items() if str(p).lstrip("-").isdigit()}


def offsets_topic_id(offsets: Mapping[str, Any] | None) -> str | None:
    """The topic id stored with offsets (None: stored before ids were kept, or none reported)."""
    found = (offsets or {}).get(TOPIC_ID_KEY)
    return str(found) if found else None


def new_incarnation(stored: str | None, current: str | None) -> bool:
    """Whether offsets of topic id `stored` belong to an older incarnation than `current`.

    Unknown on either side (old checkpoints, brokers without topic ids) is not a new one: the
    offsets are then checked as before (below the earliest or beyond the end is data loss).
    """
    return stored is not None and current is not None and stored != current


def admit(start: Mapping[int, int], end: Mapping[int, int], max_rows: int | None) -> dict[int, int]:
    """End offsets of the next batch: everything up to end, or at most max_rows in all.

    The cap is shared in proportion to each partition's backlog (largest remainder, so the batch
    holds exactly max_rows), as Spark's Kafka source does: partitions then advance evenly in time,
    which keeps an event-time watermark from outrunning a busy partition.
    """
    available = {p: max(0, end[p] - start.get(p, end[p])) for p in end}
    total = sum(available.values())
    if max_rows is None or total <= max_rows:
        return dict(end)
    shares = {p: available[p] * max_rows / total for p in available}
    taken = {p: int(shares[p]) for p in shares}
    leftover = max_rows - sum(taken.values())
    for p in sorted(shares, key=lambda p: (taken[p] - shares[p], p))[:leftover]:
        taken[p] += 1
    return {p: start.get(p, end[p]) + taken[p] if available[p] else end[p] for p in end}


def resolve_offsets(
    spec: str | dict[int, int], earliest: Mapping[int, int], end: Mapping[int, int]
) -> dict[int, int]:
    """Offsets for earliest | latest | {partition: offset or -2/-1}; unnamed partitions: earliest."""
    if spec == "earliest":
        return dict(earliest)
    if spec == "latest":
        return dict(end)
    assert isinstance(spec, dict)
    resolved = dict(earliest)
    for partition, offset in spec.items():
        if offset == EARLIEST:
            resolved[partition] = earliest.get(partition, 0)
        elif offset == LATEST:
            resolved[partition] = end.get(partition, 0)
        else:
            resolved[partition] = offset
    return resolved


def resume_offsets(
    options: SourceOptions,
    start: Mapping[int, int],
    *,
    topic_id: str | None = None,
    reported: set[Gap] | None = None,
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(resume offsets, earliest, end) for a batch starting at `start`, after the data-loss check.

    See resume_position, which also says which incarnation of the topic the offsets are of.
    """
    position = resume_position(options, start, topic_id=topic_id, reported=reported)
    return position.resume, position.bounds.earliest, position.bounds.end


@dataclass(frozen=True)
class ResumePosition:
    """Where a batch resumes, the broker's offsets, and whether the topic is a new incarnation."""

    resume: dict[int, int]
    bounds: TopicBounds
    renewed: bool  # the start offsets were of an older incarnation


def resume_position(
    options: SourceOptions,
    start: Mapping[int, int],
    *,
    topic_id: str | None = None,
    reported: set[Gap] | None = None,
) -> ResumePosition:
    """Where a batch starting at `start` (offsets of incarnation `topic_id`) resumes.

    Partitions new on the broker start at their earliest offset. When the broker's topic id is
    not `topic_id`, the topic is a new incarnation: every partition resumes from its earliest
    offset, whatever failOnDataLoss says (nothing on this topic fell out of retention; what the
    old one held is counted outside the source). Otherwise a gap raises KafkaDataLossError naming
    topic, partition and offsets, or with failOnDataLoss=false resumes that partition from its
    earliest offset and logs the gap (once per gap when `reported` is given).
    """
    present = partitions_of(options.bootstrap, options.topic)
    if not present:
        if not start:
            raise KafkaOffsetsError(
                f"topic {options.topic!r} does not exist at {options.bootstrap}"
            )
        bounds = TopicBounds({}, {}, None)
    else:
        bounds = topic_bounds(options.bootstrap, options.topic, present)
    earliest, end = bounds.earliest, bounds.end
    if new_incarnation(topic_id, bounds.topic_id):
        marker = Gap(options.topic, -1, -1, None, None)  # log once per reader
        if reported is None or marker not in reported:
            log.warning(
                "topic %r is a new incarnation (topic id %s, the offsets %s are of %s): reading "
                "it from its earliest offsets %s",
                options.topic,
                bounds.topic_id,
                dict(start),
                topic_id,
                earliest,
            )
            if reported is not None:
                reported.add(marker)
        return ResumePosition(dict(earliest), bounds, True)
    gaps = find_data_loss(start, earliest, end, topic=options.topic)
    if gaps and options.fail_on_data_loss:
        raise KafkaDataLossError(describe_gaps(gaps) + CONTINUE_HINT)
    for gap in gaps:
        if reported is None or gap not in reported:
            log.warning(
                "%s; continuing from the earliest offset (failOnDataLoss=false)", gap.describe()
            )
            if reported is not None:
                reported.add(gap)
    lost = {gap.partition for gap in gaps}
    resume = {p: (earliest[p] if p in lost or p not in start else start[p]) for p in end}
    return ResumePosition(resume, bounds, False)


# Checkpoints (for a Dagster asset or sensor, before a run) ------------------------------------------


def checkpoint_offsets(checkpoint_dir: str | Path, source_index: int = 0) -> dict[int, int] | None:
    """Where a streaming query with this checkpoint resumes: the end of its last committed batch.

    Reads Spark's offset log (`offsets/<batch>`: a version line, a metadata line, then one line
    per source). None when no batch was committed yet.
    """
    entry = _committed_entry(checkpoint_dir, source_index)
    return None if entry is None else decode_offsets(entry)


def checkpoint_topic_id(checkpoint_dir: str | Path, source_index: int = 0) -> str | None:
    """The topic id (incarnation) the checkpoint's committed offsets are of; None if unknown."""
    return offsets_topic_id(_committed_entry(checkpoint_dir, source_index))


def _checkpoint_root(checkpoint_dir: str | Path) -> Path:
    return Path(str(checkpoint_dir).removeprefix("file://").removeprefix("file:"))


def latest_commit(checkpoint_dir: str | Path) -> int | None:
    """The newest micro-batch id in a (local) checkpoint's commit log; None: none committed."""
    commits = _checkpoint_root(checkpoint_dir) / "commits"
    if not commits.is_dir():
        return None
    return max((int(f.name) for f in commits.iterdir() if f.name.isdigit()), default=None)


def batch_watermark(checkpoint_dir: str | Path, batch_id: int) -> datetime | None:
    """The event-time watermark micro-batch `batch_id` applies (Spark writes it in the batch's
    offset log entry before running the batch); None before any watermark was set."""
    path = _checkpoint_root(checkpoint_dir) / "offsets" / str(batch_id)
    metadata = json.loads(path.read_text().splitlines()[1])
    millis = int(metadata.get("batchWatermarkMs") or 0)
    return datetime.fromtimestamp(millis / 1000, UTC) if millis > 0 else None


def _committed_entry(checkpoint_dir: str | Path, source_index: int) -> dict[str, Any] | None:
    latest = latest_commit(checkpoint_dir)
    if latest is None:
        return None
    lines = (_checkpoint_root(checkpoint_dir) / "offsets" / str(latest)).read_text().splitlines()
    entry = lines[2 + source_index].strip()
    if not entry or entry == "-":
        return None
    return json.loads(entry)


def pending_data_loss(checkpoint_dir: str | Path, bootstrap: str, topic: str) -> list[Gap]:
    """Gaps the next streaming run from this checkpoint would hit (for run metadata); [] if none."""
    resume = checkpoint_offsets(checkpoint_dir)
    if not resume:
        return []
    return check_data_loss(bootstrap, topic, resume, topic_id=checkpoint_topic_id(checkpoint_dir))
