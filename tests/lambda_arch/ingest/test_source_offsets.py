"""Offsets of the lambda_kafka source: Spark's encoding, admission control, start offsets, and
reading a streaming checkpoint without Spark (the data-loss paths run in test_kafka_source)."""

from __future__ import annotations

import json
from pathlib import Path

from lambda_arch.ingest.kafka_options import EARLIEST, LATEST
from lambda_arch.ingest.source_offsets import (
    admit,
    checkpoint_offsets,
    decode_offsets,
    encode_offsets,
    resolve_offsets,
)

# Admission control -----------------------------------------------------------------------------


def test_admit_caps_batches_in_proportion_to_backlog() -> None:
    start = {0: 0, 1: 100, 2: 50}
    end = {0: 600, 1: 400, 2: 50}
    capped = admit(start, end, 300)
    assert sum(capped[p] - start[p] for p in end) == 300
    assert capped == {0: 200, 1: 200, 2: 50}  # 600:300 backlog -> 200:100
    assert admit(start, end, 10_000) == end
    assert admit(start, end, None) == end
    assert admit({}, {0: 5}, 3) == {0: 5}  # a new partition's start defaults to its end
    odd = admit({0: 0, 1: 0, 2: 0}, {0: 1, 1: 1, 2: 1}, 2)
    assert sum(odd.values()) == 2


def test_offsets_round_trip_as_spark_stores_them() -> None:
    encoded = encode_offsets({2: 7, 0: 3})
    assert encoded == {"0": 3, "2": 7} and list(encoded) == ["0", "2"]
    assert decode_offsets(json.loads(json.dumps(encoded))) == {0: 3, 2: 7}
    assert decode_offsets(None) == {}


def test_resolve_offsets_of_earliest_latest_and_json() -> None:
    earliest, end = {0: 2, 1: 0}, {0: 10, 1: 6}
    assert resolve_offsets("earliest", earliest, end) == earliest
    assert resolve_offsets("latest", earliest, end) == end
    # Unnamed partitions start at their earliest offset; -2/-1 are Spark's markers.
    assert resolve_offsets({1: LATEST}, earliest, end) == {0: 2, 1: 6}
    assert resolve_offsets({0: EARLIEST, 1: 4}, earliest, end) == {0: 2, 1: 4}


def _checkpoint(root: Path, batches: dict[int, str], committed: list[int]) -> Path:
    (root / "offsets").mkdir(parents=True)
    (root / "commits").mkdir()
    for batch, entry in batches.items():
        (root / "offsets" / str(batch)).write_text(f'v1\n{{"batchWatermarkMs":0}}\n{entry}\n')
    for batch in committed:
        (root / "commits" / str(batch)).write_text("v1\n{}\n")
    return root


def test_checkpoint_offsets_are_the_last_committed_batch(tmp_path: Path) -> None:
    assert checkpoint_offsets(tmp_path / "none") is None
    root = _checkpoint(tmp_path / "c", {0: '{"0":5,"1":3}', 1: '{"0":9,"1":4}'}, [0])
    # Batch 1 is planned but not committed: a restart redoes it, so the query stands at 0's end.
    assert checkpoint_offsets(root) == {0: 5, 1: 3}
    assert checkpoint_offsets(f"file://{root}") == {0: 5, 1: 3}
    (root / "commits" / "1").write_text("v1\n{}\n")
    assert checkpoint_offsets(root) == {0: 9, 1: 4}


def test_a_checkpoint_without_commits_has_no_offsets(tmp_path: Path) -> None:
    root = _checkpoint(tmp_path / "c", {0: '{"0":5}'}, [])
    assert checkpoint_offsets(root) is None
    other = _checkpoint(tmp_path / "d", {0: "-"}, [0])
    assert checkpoint_offsets(other) is None
