"""Which count views the one `counts` speed query writes, and the fill of a view added later.

The registry `<speed root>/_state/counts_views.json` names every view whose deltas the counts
query writes, with the micro-batch its folders start at (`from_batch`: -1 for a view counted
from the query's first batch). A declared view missing from it is new: before the query next
starts (under its checkpoint's lock) the view gets one delta folder, `batch_id=<L>` with L the
last committed micro-batch, holding the counts of every landed, deduplicated event with a
Kafka offset below the checkpoint's committed offsets (`fill_deltas`): what the query read
before the view existed. From batch L+1 on the query writes its deltas like any other view's,
so the view's sum is exact for the present too. A view whose declaration was removed is
dropped from the registry (its folders are left alone, other views are untouched); declared
again later, it is filled again from scratch (its old folders are replaced).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_arch.common.files import read_text, write_text
from lambda_arch.views.declarations import CountView
from lambda_arch.views.transforms import count_deltas, deduplicate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lambda_arch.batch.lake import Lake

REGISTRY = "counts_views"


def read_registry(state_file: str) -> dict[str, int]:
    """View name -> the first micro-batch id of its folders (-1: from the query's start)."""
    text = read_text(state_file)
    if text is None:
        return {}
    return {name: int(entry["from_batch"]) for name, entry in json.loads(text)["views"].items()}


def write_registry(state_file: str, registry: Mapping[str, int]) -> None:
    document = {"views": {name: {"from_batch": b} for name, b in sorted(registry.items())}}
    write_text(state_file, json.dumps(document, indent=1) + "\n")


def new_views(views: Iterable[CountView], registry: Mapping[str, int]) -> list[CountView]:
    """The declared views the counts query has not written yet."""
    return [view for view in views if view.name not in registry]


def below_offsets(events: DataFrame, offsets: Mapping[int, int]) -> DataFrame:
    """Landed events whose Kafka position is below `offsets` (partitions not named: none)."""
    if not offsets:
        return events.where(F.lit(False))
    condition = None
    for partition, offset in sorted(offsets.items()):
        term = (F.col("partition") == partition) & (F.col("offset") < offset)
        condition = term if condition is None else condition | term
    return events.where(condition)


def fill_deltas(
    spark: SparkSession, lake: Lake, view: CountView, offsets: Mapping[int, int]
) -> DataFrame:
    """A view's counts of every landed event the counts query read before (offsets below
    `offsets`), each event_id once."""
    from lambda_arch.batch.lake import read_play_events

    events = read_play_events(spark, lake)
    columns = ["event_id", "event_type", "event_time", "partition", "offset", *view.dimensions]
    kept = list(dict.fromkeys(columns))
    return count_deltas(deduplicate(below_offsets(events, offsets).select(*kept)), view)
