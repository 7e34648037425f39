"""Offsets of the `lambda_kafka` source: as Spark keeps them, how much a batch admits, where a
run resumes (after the data-loss check), and what a streaming checkpoint holds.

The checkpoint readers need no Spark: the Kafka-lag sensor and the speed layer's run metadata
use them before a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lambda_arch.ingest.kafka_offsets import (
    Gap,
    KafkaDataLossError,
    KafkaOffsetsError,
    check_data_loss,
    describe_gaps,
    find_data_loss,
    offset_bounds,
    partitions_of,
)
from lambda_arch.ingest.kafka_options import CONTINUE_HINT, EARLIEST, LATEST, SourceOptions

log = logging.getLogger("lambda_arch.ingest.source_offsets")


def encode_offsets(offsets: Mapping[int, int]) -> dict[str, int]:
    """Offsets as Spark stores them: JSON keys are text; sorted so equal offsets compare equal."""
    return {str(p): int(offsets[p]) for p in sorted(offsets)}


def decode_offsets(offsets: Mapping[str, Any] | None) -> dict[int, int]:
    """The inverse of encode_offsets."""
    return {int(p): int(o) for p, o in (offsets or {}).items()}


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
    options: SourceOptions, start: Mapping[int, int], *, reported: set[Gap] | None = None
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(resume offsets, earliest, end) for a batch starting at `start`, after the data-loss check.

    Partitions new on the broker start at their earliest offset. A gap raises KafkaDataLossError
    naming topic, partition and offsets, or with failOnDataLoss=false resumes that partition
    from its earliest offset and logs the gap (once per gap when `reported` is given).
    """
    present = partitions_of(options.bootstrap, options.topic)
    if not present:
        if not start:
            raise KafkaOffsetsError(
                f"topic {options.topic!r} does not exist at {options.bootstrap}"
            )
        earliest, end = {}, {}
    else:
        earliest, end = offset_bounds(options.bootstrap, options.topic, present)
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
    return resume, earliest, end


# Checkpoints (for a Dagster asset or sensor, before a run) ------------------------------------------


def checkpoint_offsets(checkpoint_dir: str | Path, source_index: int = 0) -> dict[int, int] | None:
    """Where a streaming query with this checkpoint resumes: the end of its last committed batch.

    Reads Spark's offset log (`offsets/<batch>`: a version line, a metadata line, then one line
    per source). None when no batch was committed yet.
    """
    root = Path(str(checkpoint_dir).removeprefix("file://").removeprefix("file:"))
    commits = root / "commits"
    if not commits.is_dir():
        return None
    committed = sorted(int(f.name) for f in commits.iterdir() if f.name.isdigit())
    if not committed:
        return None
    lines = (root / "offsets" / str(committed[-1])).read_text().splitlines()
    entry = lines[2 + source_index].strip()
    if not entry or entry == "-":
        return None
    return decode_offsets(json.loads(entry))


def pending_data_loss(checkpoint_dir: str | Path, bootstrap: str, topic: str) -> list[Gap]:
    """Gaps the next streaming run from this checkpoint would hit (for run metadata); [] if none."""
    resume = checkpoint_offsets(checkpoint_dir)
    if not resume:
        return []
    return check_data_loss(bootstrap, topic, resume)
