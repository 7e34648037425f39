"""Kafka lag of the streaming queries: the topic's end offsets against each checkpoint.

Pure arithmetic over offset maps plus one function that asks the broker and reads checkpoints,
so the Dagster sensor stays a thin shell and the rules are tested without Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lambda_arch.ingest.kafka_offsets import topic_bounds
from lambda_arch.ingest.source_offsets import (
    checkpoint_offsets,
    checkpoint_topic_id,
    new_incarnation,
)


@dataclass(frozen=True)
class QueryLag:
    """How far one checkpointed query is behind the topic, per Kafka partition."""

    query: str
    per_partition: dict[int, int]  # records not yet read
    started: bool  # False: no batch committed yet (the query will start from the earliest offset)

    @property
    def total(self) -> int:
        return sum(self.per_partition.values())


@dataclass(frozen=True)
class TopicLag:
    """End offsets of the topic and the lag of every query that reads it."""

    topic: str
    end: dict[int, int]
    earliest: dict[int, int]
    queries: list[QueryLag] = field(default_factory=list)

    @property
    def has_new_data(self) -> bool:
        return any(query.total > 0 for query in self.queries)

    @property
    def max_lag(self) -> int:
        return max((query.total for query in self.queries), default=0)

    @property
    def signature(self) -> str:
        """Changes whenever new records arrive: a run key that requests one run per new data."""
        return "-".join(f"{p}:{o}" for p, o in sorted(self.end.items()))

    def metadata(self) -> dict[str, int | str]:
        """Plain numbers (plotted by the Dagster UI): end offset and worst lag per partition."""
        result: dict[str, int | str] = {
            "topic": self.topic,
            "end_offset_total": sum(self.end.values()),
            "records_on_broker": sum(self.end[p] - self.earliest.get(p, 0) for p in self.end),
            "max_lag": self.max_lag,
        }
        for partition in sorted(self.end):
            result[f"end_offset_p{partition}"] = self.end[partition]
            result[f"lag_p{partition}"] = max(
                (query.per_partition.get(partition, 0) for query in self.queries), default=0
            )
        for query in self.queries:
            result[f"lag_{query.query}"] = query.total
        return result


def partition_lag(
    end: Mapping[int, int],
    earliest: Mapping[int, int],
    checkpoint: Mapping[int, int] | None,
    *,
    renewed: bool = False,
) -> dict[int, int]:
    """Records per partition that a query has still to read: end - max(checkpoint, earliest).

    The one lag rule (sensors, asset metadata, tests). `checkpoint` is where a query stands (a
    checkpoint's or a run's end offsets); a partition it has not read yet, or a checkpoint
    below the earliest retained offset (records deleted by retention), counts only what is
    still on the broker. `renewed` (the checkpoint is of an older incarnation of the topic) and
    a checkpoint beyond the end (a reset broker that reports no topic ids) count every record
    on the broker: the query reads the new incarnation from its start (or, without ids, fails
    on the gap with both offsets unless failOnDataLoss=false, and then reads from the start).
    """
    lag: dict[int, int] = {}
    for partition, last in end.items():
        if (
            renewed
            or checkpoint is None
            or partition not in checkpoint
            or checkpoint[partition] > last
        ):
            lag[partition] = max(0, last - earliest.get(partition, 0))
        else:
            lag[partition] = max(0, last - max(checkpoint[partition], earliest.get(partition, 0)))
    return lag


def measure_lag(bootstrap: str, topic: str, checkpoints: Mapping[str, str | Path]) -> TopicLag:
    """Ask the broker for the topic's offsets and compare them with each query's checkpoint."""
    bounds = topic_bounds(bootstrap, topic)
    earliest, end = bounds.earliest, bounds.end
    queries = []
    for name, folder in checkpoints.items():
        resume = checkpoint_offsets(folder)
        renewed = new_incarnation(checkpoint_topic_id(folder), bounds.topic_id)
        lag = partition_lag(end, earliest, resume, renewed=renewed)
        queries.append(QueryLag(name, lag, resume is not None))
    return TopicLag(topic, dict(end), dict(earliest), queries)
