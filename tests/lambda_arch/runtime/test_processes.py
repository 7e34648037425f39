"""Child processes: real children in their own process group, their log, default signal handlers,
stopping a whole family (also one that ignores SIGTERM), and the environments they get."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from lambda_arch.runtime.processes import (
    LogLimits,
    descendants,
    isolated_env,
    pid_file_owner,
    rotate_log,
    spawn,
    spawn_env,
    stop_pid,
    stop_process,
    write_pid_file,
)
from tests.process_helpers import pid_alive

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", code]


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """This process ignores SIGINT/SIGTERM/SIGHUP for a moment (as under `nohup ... &`)."""
    names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in names}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_spawn_logs_stdout_and_stderr_appending(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"  # the folder does not exist yet
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr)"
    for _ in range(2):
        child = spawn(python(code), log_path=log)
        assert child.wait(timeout=30) == 0
    assert sorted(log.read_text().split()) == ["err", "err", "out", "out"]
    assert child.stdin is None and child.stdout is None  # nothing piped back to us


def test_spawn_without_log_discards_output_and_passes_env_and_cwd(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    code = (
        "import json, os, sys; print('noise'); "
        f"json.dump([os.getcwd(), os.environ.get('ONLY_HERE')], open({str(out)!r}, 'w'))"
    )
    child = spawn(python(code), env=spawn_env({"ONLY_HERE": "1"}), cwd=tmp_path)
    assert child.wait(timeout=30) == 0
    assert json.loads(out.read_text()) == [str(tmp_path), "1"]
    assert "ONLY_HERE" not in os.environ


def test_spawn_gives_the_child_its_own_process_group_and_session() -> None:
    child = spawn(python("import time; time.sleep(30)"))
    try:
        assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
        assert os.getsid(child.pid) == child.pid  # no terminal's Ctrl-C reaches it
    finally:
        stop_process(child, timeout_s=5)


def test_spawn_restores_default_signal_handlers(tmp_path: Path) -> None:
    code = (
        "import json, signal; print(json.dumps({s.name: signal.getsignal(s) == signal.SIG_IGN "
        "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}))"
    )
    with signals_ignored():
        spawned = spawn(python(code), log_path=tmp_path / "spawned.log")
        plain = subprocess.run(python(code), capture_output=True, text=True, check=True)
    assert spawned.wait(timeout=30) == 0
    # Without spawn, ignored signals survive exec (what spawn exists to undo).
    assert json.loads(plain.stdout)["SIGTERM"] is True
    ignored = json.loads((tmp_path / "spawned.log").read_text())
    assert ignored == dict.fromkeys(("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"), False)


def test_stop_process_stops_the_whole_family(tmp_path: Path) -> None:
    """A child with a grandchild in its group and one that left for a session of its own."""
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time\n"
        "same = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "away = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        f"open({str(pids)!r}, 'w').write(f'{{same.pid}} {{away.pid}}')\n"
        "time.sleep(60)\n"
    )
    with signals_ignored():  # the family must still stop on SIGTERM
        child = spawn(python(code))
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    same, away = (int(pid) for pid in pids.read_text().split())
    assert {p.pid for p in descendants(child.pid)} == {same, away}
    assert os.getpgid(same) == child.pid and os.getpgid(away) == away
    started = time.monotonic()
    stop_process(child, timeout_s=10)
    assert time.monotonic() - started < 5  # SIGTERM was enough: no waiting for SIGKILL
    for pid in (child.pid, same, away):
        wait_for(lambda pid=pid: not pid_alive(pid), timeout_s=5)
    stop_process(child)  # an exited child: nothing to do, no error


def test_a_child_spawned_to_die_with_its_parent_stops_when_the_parent_is_killed(
    tmp_path: Path,
) -> None:
    """`up`'s final landing: killed with SIGKILL, up can no longer bound it. The plain child
    beside it (the default) outlives the parent, so the test cannot pass without the option."""
    pids = tmp_path / "pids"
    code = (
        "import sys, time\n"
        "from lambda_arch.runtime.processes import spawn\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "bound = spawn(sleeper, die_with_parent=True)\n"
        "free = spawn(sleeper)\n"
        f"open({str(pids)!r}, 'w').write(f'{{bound.pid}} {{free.pid}}')\n"
        "time.sleep(60)\n"
    )
    parent = spawn(python(code))
    try:
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        bound, free = (int(pid) for pid in pids.read_text().split())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_for(lambda: not pid_alive(bound), timeout_s=5)
        time.sleep(0.5)
        assert pid_alive(free)
    finally:
        for pid in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_stop_pid_kills_what_ignores_sigterm_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = spawn(python(code), log_path=log)
    wait_for(lambda: log.read_text() == "ready\n")
    started = time.monotonic()
    stop_pid(child.pid, timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5  # it waited for SIGTERM to work, then killed
    assert not pid_alive(child.pid)
    child.wait(timeout=5)


def test_stop_pid_of_a_child_in_our_own_group_spares_us(tmp_path: Path) -> None:
    """Run in a spawned parent (never in pytest's group): it stops a plain Popen child."""
    result = tmp_path / "result"
    code = (
        "import subprocess, sys\n"
        "from lambda_arch.runtime.processes import stop_pid\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "stop_pid(child.pid, timeout_s=5)\n"
        "child.wait()\n"
        f"open({str(result)!r}, 'w').write(str(child.pid))\n"
    )
    parent = spawn(python(code), cwd=Path(__file__).resolve().parents[3])
    try:
        returncode = parent.wait(timeout=30)
    finally:
        stop_process(parent)
    assert returncode == 0  # the parent survived the stop of its child
    assert not pid_alive(int(result.read_text()))


def test_a_stopped_child_keeps_its_real_exit_status() -> None:
    # Nothing but the Popen may reap the child, else Popen.returncode reads 0 (ECHILD).
    by_process = spawn(python("import time; time.sleep(60)"))
    stop_process(by_process, timeout_s=5)
    assert by_process.returncode == -signal.SIGTERM
    by_pid = spawn(python("import time; time.sleep(60)"))
    stop_pid(by_pid.pid, timeout_s=5)
    assert not pid_alive(by_pid.pid)  # gone (a zombie until its parent reaps it)
    assert by_pid.wait(timeout=5) == -signal.SIGTERM


def test_pid_alive_and_stopping_what_is_gone() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen(python("pass"))
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
    assert not pid_alive(child.pid)  # exited, not yet reaped: a zombie counts as gone
    assert descendants(child.pid) == []
    child.wait()
    assert not pid_alive(child.pid)
    assert descendants(child.pid) == []
    stop_pid(child.pid)  # no such process: returns quietly


def test_isolated_env_drops_our_settings_and_adds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LAMBDA_ARCH_HOME": "/ours",
        "LAMBDA_ARCH_TOPIC": "ours",
        "KAFKA_BOOTSTRAP_SERVERS": "ours:9092",
        "SPARK_REMOTE": "sc://ours",
        "DAGSTER_HOME": "/ours/dagster",
        "UNRELATED_SETTING": "kept",
    }.items():
        monkeypatch.setenv(name, value)
    env = isolated_env({"LAMBDA_ARCH_HOME": "/theirs", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert env["LAMBDA_ARCH_HOME"] == "/theirs" and env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1"
    for name in ("LAMBDA_ARCH_TOPIC", "SPARK_REMOTE", "DAGSTER_HOME"):
        assert name not in env
    assert env["UNRELATED_SETTING"] == "kept" and env["PATH"] == os.environ["PATH"]
    assert os.environ["LAMBDA_ARCH_HOME"] == "/ours"  # ours untouched

    inherited = spawn_env({"EXTRA": "1"})
    assert inherited["LAMBDA_ARCH_TOPIC"] == "ours" and inherited["EXTRA"] == "1"
    assert spawn_env() == dict(os.environ) and "EXTRA" not in os.environ


def test_pid_files_name_a_live_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "service.pid"
    assert pid_file_owner(path) is None  # no file
    write_pid_file(path, os.getpid())
    assert pid_file_owner(path) == os.getpid()
    pid, started = path.read_text().split()
    path.write_text(f"{pid} {float(started) - 60}\n")  # the PID reused by another process
    assert pid_file_owner(path) is None
    child = spawn(python("pass"))
    write_pid_file(path, child.pid)
    child.wait(timeout=30)
    assert pid_file_owner(path) is None  # it exited
    path.write_text("not a pid file\n")
    assert pid_file_owner(path) is None


# Bounded logs -------------------------------------------------------------------------------


def test_rotation_keeps_at_most_k_files_of_bounded_size(tmp_path: Path) -> None:
    """Many rotations: the log and its K older files, none over the limit by more than the
    last write, the newest content first; the old code kept one ever-growing file."""
    limits = LogLimits(max_bytes=1000, keep=3)
    log = tmp_path / "broker.log"
    for n in range(40):
        with log.open("ab") as out:
            out.write(f"{n:04d}".encode() * 100)  # 400 bytes
        rotate_log(log, limits)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["broker.log", "broker.log.1", "broker.log.2", "broker.log.3"]
    assert all((tmp_path / name).stat().st_size <= 1000 + 400 for name in files)
    assert (tmp_path / "broker.log.1").read_bytes().endswith(b"0038" * 100)
    assert not rotate_log(tmp_path / "missing.log", limits)


def test_spawn_rotates_a_full_log_and_running_children_are_copy_truncated(
    tmp_path: Path,
) -> None:
    log = tmp_path / "child.log"
    log.write_bytes(b"x" * 5000)
    limits = LogLimits(max_bytes=1000, keep=2)
    writer = (
        "import sys, time\n"
        "for n in range(400):\n"
        "    sys.stdout.write('line %04d ' % n + 'y' * 40 + '\\n'); sys.stdout.flush()\n"
        "    time.sleep(0.005)\n"
        # A last line well after the others: the loop below has rotated the full log by then,
        # so this line lands in the truncated file (a line written during a copy is lost).
        "time.sleep(1.0)\n"
        "sys.stdout.write('done\\n')\n"
    )
    process = spawn([sys.executable, "-c", writer], log_path=log, log_limits=limits)
    assert (tmp_path / "child.log.1").read_bytes() == b"x" * 5000  # rotated at start
    sizes = []
    while process.poll() is None:
        rotate_log(log, limits, copy_truncate=True)  # what `lambda-arch up` does every 30 s
        sizes.append(log.stat().st_size)
        time.sleep(0.05)
    assert process.returncode == 0
    assert max(sizes) < 1000 + 60 * 20  # the limit plus what a tick lets the child write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.log", "child.log.1", "child.log.2"]
    # The child went on appending at the truncated file's end: no hole of NUL bytes.
    assert b"\0" not in log.read_bytes()
    assert log.read_bytes().endswith(b"done\n")
