"""`lambda-arch up`: a small supervisor for the embedded stack.

It starts, in order, the Kafka-compatible broker (unless KAFKA_BOOTSTRAP_SERVERS points at a
cluster), the Dagster daemon and webserver, and optionally live synthetic traffic; then it watches
them. A child that dies stops the whole stack (exit 2, naming the child and its log); SIGINT or
SIGTERM stops every child in reverse start order and returns normally (exit 0).

A memory broker loses what it holds when it stops. So a clean stop first stops the traffic and
Dagster (no run in flight), then lands what the topic holds (`final_landing`, bounded by
FINAL_LANDING_TIMEOUT_S, said on the console), records the topic's end offsets as final, and only
then stops Spark and the broker. While up runs it records the end offsets every few seconds, so
that after a kill -9 the next speed run can count what was lost (lambda_arch.ingest.incarnations).

Each child runs in its own process group with default signal handlers (see processes.spawn), so a
stop request reaches the gRPC code servers and run workers that Dagster starts underneath.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import yaml
from kafka.errors import KafkaError

from lambda_arch.common.config import Settings
from lambda_arch.common.tags import SPARK_RUN_TAG
from lambda_arch.ingest.incarnations import RECORD_EVERY_S, record_topic_ends
from lambda_arch.ingest.kafka_offsets import KafkaOffsetsError
from lambda_arch.runtime.broker import (
    EmbeddedBroker,
    ServiceError,
    port_in_use,
    require_reachable,
    wait_for_kafka,
)
from lambda_arch.runtime.processes import (
    LogLimits,
    pid_file_owner,
    rotate_log,
    spawn,
    spawn_env,
    stop_pid,
    stop_process,
    write_pid_file,
)
from lambda_arch.runtime.spark_connect import LOG_NAME as CONNECT_LOG_NAME
from lambda_arch.runtime.spark_connect import ConnectServer

WEBSERVER_TIMEOUT_S = 60.0
POLL_S = 0.5
ROTATE_EVERY_S = 30.0  # how often the running children's logs are checked against their limit
# Most time a clean stop spends landing what a memory broker holds (about 45k events/s).
FINAL_LANDING_TIMEOUT_S = 180.0
# Children that a final landing needs: stopped after it.
LANDING_NEEDS = ("broker", CONNECT_LOG_NAME)


@dataclass(frozen=True)
class Traffic:
    """The live synthetic traffic of `up`: a steady stream with a sped-up event clock (so days
    complete and batch partitions appear within minutes), some duplicates, late and malformed
    records, and one burst of malformed records after `burst_after_s` (a quarantine warning
    the demo shows; 0 for none)."""

    rate: float
    speedup: float
    start: datetime
    duplicates: float = 0.02
    late: float = 0.01
    malformed: float = 0.002
    burst_after_s: float = 0.0
    burst_records: int = 400
    burst_malformed: float = 0.5

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "lambda_arch.cli", "produce", "--events", "0", "--quiet"),
            *("--rate", f"{self.rate:g}", "--speedup", f"{self.speedup:g}"),
            *("--start", self.start.isoformat()),
            *("--duplicates", f"{self.duplicates:g}", "--late", f"{self.late:g}"),
            *("--malformed", f"{self.malformed:g}"),
        ]

    def burst_command(self, at: datetime) -> list[str]:
        """The burst: records whose event clock continues where the live traffic is."""
        return [
            *(sys.executable, "-m", "lambda_arch.cli", "produce", "--quiet"),
            *("--events", str(self.burst_records), "--malformed", f"{self.burst_malformed:g}"),
            *("--start", at.isoformat(), "--seed", "1"),
        ]

    def event_clock(self, elapsed_s: float) -> datetime:
        return self.start + timedelta(seconds=elapsed_s * self.speedup)


def demo_start(now: datetime | None = None) -> datetime:
    """Where the demo's event clock starts: 23:30 UTC of the day before today, so that the first
    day completes (and its batch partition appears) a minute or two after `up`."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(minutes=30)


@dataclass
class Service:
    """A child process the stack owns."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class _Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop the stack and return normally."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


# Files under LAMBDA_ARCH_HOME --------------------------------------------------------------------


def workspace_file() -> Path:
    """The project's workspace.yaml, next to the installed (editable) lambda_arch package."""
    path = Path(__file__).resolve().parents[2] / "workspace.yaml"
    if not path.is_file():
        raise ServiceError(
            f"the Dagster workspace file {path} is missing: run lambda-arch from a checkout "
            "installed with `pip install -e .`"
        )
    return path


def dagster_instance_config(settings: Settings) -> dict[str, Any]:
    """dagster.yaml: no telemetry; queued runs limited overall and for Spark-tagged runs.

    Storage is PostgreSQL when LAMBDA_ARCH_DAGSTER_PG_URL is set (runs, events, schedules and
    sensor ticks: the webserver, the daemon and every run share it), else Dagster's SQLite files;
    artifacts and compute logs stay under DAGSTER_HOME.
    """
    storage = {}
    if settings.dagster_pg_url:
        # dagster-postgres drives psycopg2, but SQLAlchemy 2.1 reads a bare postgresql:// as
        # psycopg 3: name the driver.
        url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", settings.dagster_pg_url)
        storage = {"storage": {"postgres": {"postgres_url": url}}}
    return {
        **storage,
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": settings.max_concurrent_runs,
                # Per value of the tag (speed, batch): a long batch run never holds the speed
                # layer back, and two runs of one layer never queue behind each other's locks.
                "tag_concurrency_limits": [
                    {
                        "key": SPARK_RUN_TAG,
                        "value": {"applyLimitPerUniqueValue": True},
                        "limit": settings.max_spark_runs,
                    }
                ],
            }
        },
    }


def write_dagster_yaml(settings: Settings) -> Path:
    """Write $DAGSTER_HOME/dagster.yaml for these settings (rewritten on every start)."""
    path = settings.dagster_home / "dagster.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Written by `lambda-arch up` on every start: change LAMBDA_ARCH_* variables instead.\n"
    )
    path.write_text(header + yaml.safe_dump(dagster_instance_config(settings), sort_keys=False))
    return path


def claim_home(settings: Settings) -> int:
    """Take this home for one `up`: a held lock plus no live PID files; return the lock's fd.

    The lock is released by the kernel whenever this process ends, even by SIGKILL; the PID
    files catch children that outlived a killed supervisor.
    """
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(run_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        owner = pid_file_owner(run_dir / "up.pid")
        raise ServiceError(
            f"`lambda-arch up`{f' (pid {owner})' if owner else ''} is already running with "
            f"LAMBDA_ARCH_HOME={settings.home}: stop it first, or set LAMBDA_ARCH_HOME "
            "to another folder"
        ) from None
    pid_files = sorted(run_dir.glob("*.pid"))
    live = {path.stem: pid for path in pid_files if (pid := pid_file_owner(path)) is not None}
    if live:
        os.close(lock_fd)
        running = ", ".join(f"{name} pid {pid}" for name, pid in live.items())
        raise ServiceError(
            f"processes of an earlier `lambda-arch up` still run with LAMBDA_ARCH_HOME="
            f"{settings.home} ({running}): stop them first (kill {' '.join(map(str, live.values()))})"
        )
    for path in pid_files:  # stale: their processes are gone
        path.unlink(missing_ok=True)
    write_pid_file(run_dir / "up.pid", os.getpid())
    return lock_fd


# Children ----------------------------------------------------------------------------------------


def child_env(settings: Settings) -> dict[str, str]:
    """Our environment plus DAGSTER_HOME and every setting exactly as this process resolved it."""
    env = spawn_env({"DAGSTER_HOME": str(settings.dagster_home), "PYTHONUNBUFFERED": "1"})
    for name, field in Settings.model_fields.items():
        variable = str(field.validation_alias)
        value = getattr(settings, name)
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = str(value)  # home is absolute: children may run elsewhere
    return env


def script(name: str) -> str:
    """A console script of this environment (next to its python), else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} is not installed: reinstall lambda-arch with its dependencies")
    return found


def start_service(
    name: str,
    command: list[str],
    settings: Settings,
    services: list[Service],
    cwd: Path | None = None,
) -> Service:
    log_path = settings.logs_dir / f"{name}.log"
    process = spawn(command, log_path=log_path, env=child_env(settings), cwd=cwd)
    service = Service(name, process, log_path)
    services.append(service)
    write_pid_file(settings.run_dir / f"{name}.pid", process.pid)
    return service


def wait_for_http(url: str, service: Service, timeout_s: float = WEBSERVER_TIMEOUT_S) -> None:
    """Block until url answers 200 while service runs, or raise ServiceError naming its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (code := service.process.poll()) is not None:
            raise ServiceError(
                f"the Dagster {service.name} exited with code {code} while starting; "
                f"see {service.log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):
            pass  # not listening or not ready yet
        time.sleep(0.25)
    raise ServiceError(
        f"the Dagster {service.name} did not answer at {url} within {timeout_s:.0f} s; "
        f"see {service.log_path}"
    )


def record_ends(settings: Settings, *, final: bool = False) -> None:
    """Record the topic's end offsets in the ledger (best effort: the topic may not exist yet,
    the broker may be busy)."""
    with contextlib.suppress(KafkaError, KafkaOffsetsError, OSError):
        record_topic_ends(
            settings.topic_ends_file, settings.bootstrap_servers, settings.topic, final=final
        )


def landing_lag(settings: Settings) -> int:
    """Records on the topic that the speed layer has not landed (0 when that is unknown)."""
    from lambda_arch.speed.lag import measure_lag
    from lambda_arch.speed.layer import LANDING, checkpoint_of

    checkpoint = checkpoint_of(settings, LANDING)
    with contextlib.suppress(KafkaError, KafkaOffsetsError, OSError):
        return measure_lag(
            settings.bootstrap_servers, settings.topic, {"landing": checkpoint}
        ).max_lag
    return 0


def land_before_stop(settings: Settings, timeout_s: float = FINAL_LANDING_TIMEOUT_S) -> None:
    """Land what the topic holds before a memory broker stops, within timeout_s; say so."""
    waiting = landing_lag(settings)
    if waiting == 0:
        return
    print(f"lambda-arch: landing {waiting:,} events before the broker stops ...", flush=True)
    log_path = settings.logs_dir / "final-landing.log"
    started = time.monotonic()
    process = spawn(
        [sys.executable, "-m", "lambda_arch.runtime.final_landing"],
        log_path=log_path,
        env=child_env(settings),
        die_with_parent=True,  # bounded by up's wait: an up killed by SIGKILL cannot stop it
    )
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(process)
        print(
            f"lambda-arch: landing did not finish within {timeout_s:.0f} s: "
            f"{landing_lag(settings):,} events not landed are lost with the memory broker "
            "(the next run counts them)",
            flush=True,
        )
        return
    seconds = time.monotonic() - started
    last = _last_line(log_path)
    if process.returncode != 0:
        print(
            f"lambda-arch: landing failed after {seconds:.0f} s ({last}; see {log_path}): "
            f"{landing_lag(settings):,} events not landed are lost with the memory broker "
            "(the next run counts them)",
            flush=True,
        )
        return
    landed = json.loads(last)["records"]
    print(f"lambda-arch: landed {landed:,} events ... done in {seconds:.0f} s", flush=True)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else f"see {path}"


def stop_all(services: list[Service], settings: Settings, older_children: set[int]) -> None:
    """Stop services in reverse start order, then any other child we started; drop PID files."""
    for service in reversed(services):
        stop_process(service.process)
        (settings.run_dir / f"{service.name}.pid").unlink(missing_ok=True)
    # A stop request can land between spawning a child and recording it (the broker is spawned
    # and then polled until it answers): stop such stragglers, never children we did not start.
    for child in psutil.Process().children():
        if child.pid not in older_children:
            stop_pid(child.pid)
    for path in settings.run_dir.glob("*.pid"):
        path.unlink(missing_ok=True)


def stop_before_broker(services: list[Service], settings: Settings) -> None:
    """A clean stop of the embedded broker: stop everything that produces or runs Spark jobs,
    land what a memory broker holds, record the topic's end offsets as final."""
    for service in reversed(services):
        if service.name not in LANDING_NEEDS:
            stop_process(service.process)
    if settings.broker_storage == "memory":
        land_before_stop(settings)
    record_ends(settings, final=True)


# The stack ---------------------------------------------------------------------------------------


def start_kafka(settings: Settings, services: list[Service]) -> str:
    """Start the embedded broker or check the external one; ensure the topic; describe it."""
    from lambda_arch.ingest.producer import ensure_topic

    if settings.embedded_broker:
        broker = EmbeddedBroker(
            settings.broker_port, settings.broker_storage, settings.logs_dir / "broker.log"
        )
        broker.start()
        assert broker.process is not None
        services.append(Service("broker", broker.process, settings.logs_dir / "broker.log"))
        write_pid_file(settings.run_dir / "broker.pid", broker.process.pid)
        where = f"{broker.bootstrap_servers} (embedded Tansu, {settings.broker_storage} storage)"
    else:
        try:
            require_reachable(settings.bootstrap_servers)  # fail in seconds when nothing listens
            wait_for_kafka(settings.bootstrap_servers, timeout_s=15)
        except ServiceError:
            raise ServiceError(
                f"no Kafka broker answers at KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}:"
                " check the address, or unset it to use the embedded broker"
            ) from None
        where = f"{settings.bootstrap_servers} (external)"
    partitions = ensure_topic(settings.bootstrap_servers, settings.topic, settings.topic_partitions)
    return f"{where}, topic {settings.topic} ({partitions} partitions)"


def start_spark_connect(settings: Settings, services: list[Service]) -> ConnectServer | None:
    """Launch the embedded Spark Connect server unless SPARK_REMOTE names one (not waited for)."""
    if settings.spark_remote is not None:
        return None
    server = ConnectServer(settings)
    process = server.launch()
    services.append(Service(CONNECT_LOG_NAME, process, server.log_path))
    write_pid_file(settings.run_dir / f"{CONNECT_LOG_NAME}.pid", process.pid)
    return server


def check_ports(settings: Settings) -> None:
    """Refuse before starting anything when a port we need is taken."""
    if port_in_use(settings.dagster_port):
        raise ServiceError(
            f"port 127.0.0.1:{settings.dagster_port} for the Dagster UI is already in use: "
            "stop what listens there, or set LAMBDA_ARCH_DAGSTER_PORT"
        )
    if settings.spark_remote is None and port_in_use(settings.spark_connect_port):
        raise ServiceError(
            f"port 127.0.0.1:{settings.spark_connect_port} for the Spark Connect server is "
            "already in use: stop what listens there, set LAMBDA_ARCH_SPARK_CONNECT_PORT, or set "
            "SPARK_REMOTE to use a running Spark Connect server"
        )
    if settings.embedded_broker and port_in_use(settings.broker_port):
        raise ServiceError(
            f"port 127.0.0.1:{settings.broker_port} for the embedded broker is already in use: "
            "stop what listens there, set LAMBDA_ARCH_BROKER_PORT, or set "
            "KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka"
        )


def run_stack(settings: Settings, traffic: Traffic | None) -> None:
    """Run the stack until SIGINT/SIGTERM (return) or a child's death (raise ServiceError)."""
    for folder in (settings.home, settings.dagster_home, settings.logs_dir, settings.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    workspace = workspace_file()
    lock_fd = claim_home(settings)
    services: list[Service] = []
    older_children = {child.pid for child in psutil.Process().children()}
    clean = False
    # SIGHUP too: children run in sessions of their own, so a closed terminal would orphan them.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stop_signals}
    try:
        check_ports(settings)
        print(f"lambda-arch: starting in {settings.home}", flush=True)
        kafka = start_kafka(settings, services)
        # One warm Spark Connect server for every run: a run connects in about a second instead
        # of starting a JVM, and the server alone opens the Derby metastore (one JVM at a time).
        connect = start_spark_connect(settings, services)
        if connect is not None:
            settings = settings.model_copy(update={"spark_remote": connect.url})
        write_dagster_yaml(settings)
        workspace_args = ["-w", str(workspace)]
        webserver = start_service(
            "webserver",
            [
                script("dagster-webserver"),
                *workspace_args,
                *("-h", "127.0.0.1", "-p", str(settings.dagster_port)),
            ],
            settings,
            services,
            cwd=workspace.parent,
        )
        ui = f"http://127.0.0.1:{settings.dagster_port}"
        wait_for_http(f"{ui}/server_info", webserver)
        if connect is not None:
            connect.wait_ready()
        # The daemon (sensors, schedules, run queue) last: its first runs find Spark ready.
        start_service(
            "daemon",
            [script("dagster-daemon"), "run", *workspace_args],
            settings,
            services,
            cwd=workspace.parent,
        )
        traffic_started = time.monotonic()
        if traffic is not None:
            start_service("traffic", traffic.command(), settings, services)
        shown = (
            f"{traffic.rate:g} events/s, event clock x{traffic.speedup:g} from "
            f"{traffic.start:%Y-%m-%d %H:%M} UTC"
            + (
                f", a malformed burst after {traffic.burst_after_s:g} s"
                if traffic.burst_after_s
                else ""
            )
            if traffic is not None
            else "off"
        )
        views = (
            f"continuous (views_stream_job runs of {settings.speed_stream_s} s, a micro-batch "
            f"every {settings.speed_trigger_s:g} s)"
            if settings.speed_stream_s > 0
            else "availableNow speed runs (LAMBDA_ARCH_SPEED_STREAM_S=600 for continuous views)"
        )
        print(
            "lambda-arch is up\n"
            f"  Kafka          {kafka}\n"
            f"  Dagster UI     {ui}\n"
            f"  Spark          {settings.spark_remote} (Spark Connect)\n"
            f"  live traffic   {shown}\n"
            f"  speed views    {views}\n"
            f"  logs           {settings.logs_dir}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        burst: subprocess.Popen[bytes] | None = None
        next_record = time.monotonic()
        limits = LogLimits(settings.log_max_bytes, settings.log_keep)
        next_rotation = time.monotonic() + ROTATE_EVERY_S
        while True:
            elapsed = time.monotonic() - traffic_started
            due = traffic is not None and 0 < traffic.burst_after_s <= elapsed
            if traffic is not None and due and burst is None:
                # One-shot: not a Service, its normal exit must not stop the stack.
                burst = spawn(
                    traffic.burst_command(traffic.event_clock(elapsed)),
                    log_path=settings.logs_dir / "burst.log",
                    env=child_env(settings),
                )
                print(
                    f"lambda-arch: sent a burst of {traffic.burst_records} records, "
                    f"{traffic.burst_malformed:.0%} malformed (watch the quarantine check)",
                    flush=True,
                )
            for service in services:
                if (code := service.process.poll()) is not None:
                    raise ServiceError(
                        f"the {service.name} process exited unexpectedly with code {code}, so "
                        f"the stack stopped; see {service.log_path}"
                    )
            if time.monotonic() >= next_record:
                record_ends(settings)
                next_record = time.monotonic() + RECORD_EVERY_S
            if time.monotonic() >= next_rotation:
                # The children hold their logs open (O_APPEND): copy and truncate in place.
                for service in services:
                    rotate_log(service.log_path, limits, copy_truncate=True)
                next_rotation = time.monotonic() + ROTATE_EVERY_S
            time.sleep(POLL_S)
    except _Stop:
        print("lambda-arch: stopping...", flush=True)
        clean = True
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if clean and any(s.name == "broker" for s in services):
                stop_before_broker(services, settings)
            stop_all(services, settings, older_children)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with contextlib.suppress(OSError):
                os.close(lock_fd)
    print("lambda-arch: stopped", flush=True)
