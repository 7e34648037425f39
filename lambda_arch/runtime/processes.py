"""Child processes that always stop: own process group, default signal handlers, logs to a file.

Logs are size-bounded (`rotate_log`): a log over `LAMBDA_ARCH_LOG_MAX_MB` is rotated when a child
is spawned onto it, and `lambda-arch up` rotates its children's logs while they run; at most
`LAMBDA_ARCH_LOG_KEEP` older files (`name.log.1` newest ... `name.log.K`) are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


def _restore_default_signals() -> None:
    # A shell that starts us in the background sets SIGINT/SIGTERM to "ignore", and ignored
    # signals survive exec: children would then ignore our stop request (FACTS, Dagster).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: default signals, and SIGTERM when the parent dies (Linux; a no-op elsewhere).

    For a bounded task of a parent that bounds it by waiting: killed with SIGKILL, the parent can
    no longer stop it, and a child whose server went with the parent would wait forever."""

    # Looked up here, in the parent: the child between fork and exec only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def preexec() -> None:
        _restore_default_signals()
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before the prctl took effect
            os._exit(1)

    return preexec


@dataclass(frozen=True)
class LogLimits:
    """How large a log grows before it rotates, and how many rotated files are kept."""

    max_bytes: int = 50 * 1024 * 1024
    keep: int = 3

    @classmethod
    def from_env(cls) -> LogLimits:
        """LAMBDA_ARCH_LOG_MAX_MB and LAMBDA_ARCH_LOG_KEEP (their defaults when invalid: a log
        is rotated whatever else is misconfigured)."""
        from lambda_arch.common.config import settings_or_defaults

        settings, _ = settings_or_defaults()
        return cls(settings.log_max_bytes, settings.log_keep)


def rotate_log(path: Path, limits: LogLimits, *, copy_truncate: bool = False) -> bool:
    """Rotate path when it is larger than limits.max_bytes: path.1 ... path.K shift up (the
    oldest goes), path becomes path.1. Returns whether it rotated.

    copy_truncate: copy to path.1 and empty path in place, for a log a running process holds
    open in append mode (its next write lands at the new end; a line written between the copy
    and the truncation is lost). Otherwise path is renamed: a writer that opens the file per
    write (alerts.jsonl) loses nothing.
    """
    try:
        if path.stat().st_size <= limits.max_bytes:
            return False
    except FileNotFoundError:
        return False
    rotated = [path.with_name(f"{path.name}.{n}") for n in range(1, limits.keep + 1)]
    rotated[-1].unlink(missing_ok=True)
    for older, newer in zip(reversed(rotated[:-1]), reversed(rotated[1:]), strict=True):
        if older.exists():
            older.replace(newer)
    if copy_truncate:
        shutil.copyfile(path, rotated[0])
        os.truncate(path, 0)
    else:
        path.replace(rotated[0])
    return True


def spawn(
    command: Sequence[str],
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_limits: LogLimits | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start command in its own process group, output appended to log_path (or discarded).

    A log_path over its limits (default: LogLimits.from_env) is rotated first. die_with_parent:
    the child gets SIGTERM when this process dies, even by SIGKILL (Linux)."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(log_path, log_limits or LogLimits.from_env())
        output = open(log_path, "ab")  # noqa: SIM115 - the child owns the handle
    else:
        output = subprocess.DEVNULL
    try:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()) if die_with_parent else _restore_default_signals,
        )
    finally:
        if log_path is not None:
            output.close()  # type: ignore[union-attr]


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of pid (children, grandchildren, ...)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _leads_its_own_group(pid: int) -> bool:
    """True when pid leads a process group that is not ours (as a child started by spawn())."""
    try:
        return os.getpgid(pid) == pid != os.getpgrp()
    except (ProcessLookupError, PermissionError):
        return False


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until each process has exited; those still alive at the timeout.

    Unlike psutil.wait_procs this never reaps a child of ours: its parent reaps it (Popen.wait)
    and so keeps its real exit status, where a reap here would leave Popen.returncode at 0.
    """
    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not _gone(p)]
    return alive


# How long the root of a tree has to stop its own children before they are signalled too.
ROOT_GRACE_S = 5.0


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """Stop pid and all its descendants: SIGTERM, then SIGKILL after timeout; never reaps.

    The whole process group is signalled too, but only when pid leads a group of its own: a
    child that shares our group (not started by spawn()) must not take our group down with it.
    """
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [root, *descendants(pid)]
    # The root first, alone for a moment: a supervisor (Dagster's daemon and webserver) stops
    # its own children in order; signalled together, they die under it while it still talks
    # to them, and it logs the broken connections as errors.
    with contextlib.suppress(psutil.Error):
        root.terminate()
    _wait_gone([root], min(ROOT_GRACE_S, timeout_s))
    if _leads_its_own_group(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    alive = _wait_gone(family, timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(alive, 5.0)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Stop a child started by spawn() with everything it started, and reap it.

    The child is reaped here, through its Popen, so process.returncode is its real exit status
    (-15 after SIGTERM, -9 after SIGKILL).
    """
    if process.poll() is None:
        stop_pid(process.pid, timeout_s=timeout_s)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Variables that point a process at a lambda-arch home, broker, Spark or Dagster instance.
_SETTING_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE", "DAGSTER_HOME")


def isolated_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any lambda-arch, Kafka, Spark or Dagster setting,
    plus `settings`: a stack of its own (tests, benchmarks) that inherits none of ours."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LAMBDA_ARCH_") and name not in _SETTING_VARIABLES
    }
    environment.update(settings)
    return environment


def spawn_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus extra (children inherit settings through it)."""
    environment = dict(os.environ)
    if extra:
        environment.update(extra)
    return environment


# PID files: which child of `lambda-arch up` still runs. Here, below both the stack (which writes
# them) and the Spark session builder (which looks for the home's Connect server), so neither has
# to import the other.


def write_pid_file(path: Path, pid: int) -> None:
    """Record pid with its start time in path."""
    # The start time tells a live owner from an unrelated process that reused the PID.
    path.write_text(f"{pid} {psutil.Process(pid).create_time()}\n")


def pid_file_owner(path: Path) -> int | None:
    """The PID recorded in path when that process still runs, else None."""
    try:
        pid_text, started_text = path.read_text().split()
        process = psutil.Process(int(pid_text))
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.pid if abs(process.create_time() - float(started_text)) < 0.01 else None
    except (OSError, ValueError, psutil.Error):
        return None
