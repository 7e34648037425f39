"""One lock mechanism for every writer: an flock'ed file per guarded thing in LAMBDA_ARCH_HOME/locks.

The speed layer holds one per streaming checkpoint, the batch layer one per lake (its tables).
Whoever launches a run (a sensor, the schedule, `lambda-arch run`, the UI, `dagster job
backfill`), the code that writes takes the lock, so two writers never overlap.

flock locks belong to the open file, so they exclude other threads of this process as well as
other processes, and the OS releases them when a process dies (no stale locks). Exclusive
holders write who they are into the file, for the messages of those who wait.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_POLL_S = 0.1


class LockBusyError(RuntimeError):
    """The lock stayed held by another holder for the whole timeout."""

    def __init__(self, path: Path, holder: str, waited_s: float) -> None:
        super().__init__(f"lock {path} is held by {holder}; waited {waited_s:g} s")
        self.path = path
        self.holder = holder
        self.waited_s = waited_s


@dataclass
class LockHold:
    """One holding of a lock: how long it took to get, from whom, and when it was held."""

    path: Path
    owner: str
    waited_s: float
    waited_for: str | None  # who held it when this holder started waiting (None: it was free)
    acquired_at: datetime
    released_at: datetime | None = None  # set when the lock is released

    def metadata(self, prefix: str = "lock") -> dict[str, str | float]:
        """Plain values for Dagster metadata and logs."""
        values: dict[str, str | float] = {
            f"{prefix}_waited_s": round(self.waited_s, 3),
            f"{prefix}_acquired_at": self.acquired_at.isoformat(),
        }
        if self.released_at is not None:
            values[f"{prefix}_released_at"] = self.released_at.isoformat()
        if self.waited_for:
            values[f"{prefix}_waited_for"] = self.waited_for
        return values


def lock_path(lock_dir: Path, location: str) -> Path:
    """The lock file of a location: its last path part plus a hash of the whole location."""
    location = str(location).rstrip("/")
    if "://" not in location:
        location = os.path.abspath(location)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", location.rsplit("/", 1)[-1])[:60] or "lock"
    digest = hashlib.sha1(location.encode()).hexdigest()[:12]
    return Path(lock_dir) / f"{base}-{digest}.lock"


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock, as its exclusive holder wrote it."""
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def file_lock(
    path: Path,
    *,
    timeout_s: float,
    owner: str = "",
    shared: bool = False,
    on_wait: Callable[[str, float], None] | None = None,
    report_every_s: float = 60.0,
) -> Iterator[LockHold]:
    """Hold the lock file `path` (exclusive, or shared among readers); wait up to timeout_s,
    then LockBusyError.

    `on_wait(holder, waited_s)` is called once when the lock is found held and then every
    `report_every_s` while waiting, so a long wait shows up in the run's log as it happens.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{owner + ' ' if owner else ''}pid {os.getpid()} thread {threading.get_ident()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    hold: LockHold | None = None
    try:
        started = time.monotonic()
        deadline = started + max(timeout_s, 0.0)
        waited_for: str | None = None
        next_report = started
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if waited_for is None:
                    waited_for = holder_of(path)
                if now >= deadline:
                    raise LockBusyError(path, holder_of(path), round(now - started, 1)) from None
                if on_wait is not None and now >= next_report:
                    on_wait(holder_of(path), now - started)
                    next_report = now + report_every_s
                time.sleep(_POLL_S)
        if not shared:
            # Who holds it, for the message of the next caller (shared holders would clobber
            # each other's line, and writers only ever wait for the exclusive kind anyway).
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{me}\n".encode(), 0)
        hold = LockHold(
            path=path,
            owner=me,
            waited_s=time.monotonic() - started,
            waited_for=waited_for,
            acquired_at=datetime.now(UTC),
        )
        yield hold
    finally:
        if hold is not None:
            hold.released_at = datetime.now(UTC)
        os.close(fd)  # releases the lock
