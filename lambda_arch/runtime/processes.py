"""Child processes that always stop: own process group, default signal handlers, logs to a file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil


def _restore_default_signals() -> None:
    # A shell that starts us in the background sets SIGINT/SIGTERM to "ignore", and ignored
    # signals survive exec: children would then ignore our stop request (FACTS, Dagster).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def spawn(
    command: Sequence[str],
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start command in its own process group, output appended to log_path (or discarded)."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
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
            preexec_fn=_restore_default_signals,
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


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """Stop pid, its process group and all its descendants: SIGTERM, then SIGKILL after timeout."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [root, *descendants(pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), signal.SIGTERM)
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Stop a child started by spawn() with everything it started, and reap it."""
    if process.poll() is None:
        stop_pid(process.pid, timeout_s=timeout_s)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def pid_alive(pid: int) -> bool:
    """True when pid runs (zombies count as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
