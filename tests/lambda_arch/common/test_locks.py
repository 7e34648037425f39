"""The one lock mechanism: exclusive and shared file locks, waits recorded, across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.locks import LockBusyError, file_lock

HOLD_S = 1.5


def hold_in_child(path: Path, seconds: float, *, shared: bool = False) -> subprocess.Popen[str]:
    """A child process holding the lock for `seconds`; returns once it holds it."""
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from lambda_arch.common.locks import file_lock
        with file_lock(Path({str(path)!r}), timeout_s=0, owner="child", shared={shared}):
            print("held", flush=True)
            time.sleep({seconds})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_waits_and_records_for_whom(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    child = hold_in_child(path, HOLD_S)
    heard: list[str] = []
    with file_lock(
        path, timeout_s=30, owner="test", on_wait=lambda holder, _: heard.append(holder)
    ) as hold:
        assert hold.waited_s >= HOLD_S / 2
        assert hold.waited_for is not None and hold.waited_for.startswith("child pid ")
        assert heard and heard[0].startswith("child pid ")
        assert path.read_text().startswith("test pid ")
    assert hold.released_at is not None and hold.released_at >= hold.acquired_at
    assert child.wait(10) == 0
    metadata = hold.metadata()
    assert metadata["lock_waited_s"] >= HOLD_S / 2 and "lock_released_at" in metadata


def test_readers_share_and_a_writer_excludes_them(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    child = hold_in_child(path, HOLD_S, shared=True)
    with file_lock(path, timeout_s=0, shared=True) as hold:  # readers side by side
        assert hold.waited_for is None and hold.waited_s < 1
    with pytest.raises(LockBusyError), file_lock(path, timeout_s=0.3):
        pass
    assert child.wait(10) == 0
    failures: list[BaseException] = []

    def read() -> None:
        try:
            with file_lock(path, timeout_s=0.2, shared=True):
                pass
        except LockBusyError as error:
            failures.append(error)

    with file_lock(path, timeout_s=0):  # a writer excludes readers, threads of it too
        thread = threading.Thread(target=read)
        thread.start()
        thread.join(10)
    assert len(failures) == 1


def test_batch_writes_of_one_lake_wait_for_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_days holds the lake's batch-writer lock around the whole computation: a run
    writing the lake (here a child holding its lock) makes the next one wait, and it says so.
    (The computation is replaced by a recorder: this is about the lock, not Spark.)"""
    lake, locks = Lake(str(tmp_path / "warehouse")), tmp_path / "locks"
    path = batch.batch_lock_path(locks, lake)
    computed_while_held: list[str] = []

    def compute(spark: object, lake: Lake, days: object, *tables_and_views: object) -> list:
        computed_while_held.append(path.read_text())  # our holder line: we hold the lock
        return []

    monkeypatch.setattr(batch, "compute_tables", compute)
    child = hold_in_child(path, HOLD_S)
    said: list[str] = []
    started = time.monotonic()
    write = batch.write_days(None, lake, [], lock_dir=locks, owner="run b", log=said.append)  # type: ignore[arg-type]
    assert time.monotonic() - started >= HOLD_S / 2
    assert write.results == [] and write.lock.waited_s >= HOLD_S / 2
    assert len(computed_while_held) == 1 and computed_while_held[0].startswith("run b pid ")
    assert any("being written by child pid" in line for line in said), said
    assert any(line.startswith("waited ") for line in said), said
    assert child.wait(10) == 0
    # Another lake (database) has a lock of its own.
    other = Lake(str(tmp_path / "warehouse"), "other_db")
    assert batch.batch_lock_path(locks, other) != batch.batch_lock_path(locks, lake)
