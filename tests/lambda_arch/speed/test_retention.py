"""The speed tables' removal helpers: folders, the removal horizon, the ranges left to compare."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lambda_arch.speed import retention


def at(hour: int, day: int = 2) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def test_remove_batches_deletes_folders_and_tolerates_missing_ones(tmp_path: Path) -> None:
    table = tmp_path / "speed" / "trending_speed"
    for batch_id in range(4):
        (table / f"batch_id={batch_id}").mkdir(parents=True)
        (table / f"batch_id={batch_id}" / "part-0.parquet").write_bytes(b"x")
    assert retention.remove_batches(str(table), [0, 2, 7]) == 2
    assert sorted(p.name for p in table.iterdir()) == ["batch_id=1", "batch_id=3"]
    assert retention.remove_batches(str(table), [0]) == 0


def test_the_removal_horizon_only_moves_forward(tmp_path: Path) -> None:
    root = str(tmp_path / "speed")
    assert retention.removed_before(root, "trending_speed") is None
    assert retention.record_removed_before(root, "trending_speed", at(0)) == at(0)
    assert retention.record_removed_before(root, "trending_speed", at(0, day=1)) == at(0)
    assert retention.removed_before(root, "trending_speed") == at(0)
    assert retention.removed_before(root, "discovery_speed") is None


def test_cut_ranges_keeps_what_is_at_or_after_the_horizon() -> None:
    ranges = [(at(0, day=1), at(0)), (at(0), at(6))]
    assert retention.cut_ranges(ranges, None) == ranges
    assert retention.cut_ranges(ranges, at(0)) == [(at(0), at(6))]
    assert retention.cut_ranges(ranges, at(3)) == [(at(3), at(6))]
    assert retention.cut_ranges(ranges, at(9)) == []
