"""`lambda-arch up` with real processes: it starts, answers, refuses clearly, and stops everything."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from kafka import KafkaAdminClient

from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import topic_partitions
from lambda_arch.runtime.broker import ServiceError, free_port, kafka_ready, port_in_use
from lambda_arch.runtime.processes import isolated_env
from lambda_arch.runtime.stack import SPARK_RUN_TAG, claim_home, write_dagster_yaml, write_pid_file

PARTITIONS = 3  # not the default, to see that the setting reaches the topic
READY_TIMEOUT_S = 120.0  # the webserver answers in ~6 s alone; other suites may share the CPUs
STOP_TIMEOUT_S = 30.0
SPARK_PROBE = """
from lambda_arch.common.config import load_settings
from lambda_arch.runtime.spark import build_session
spark = build_session(load_settings())
print(type(spark).__module__, spark.sql("SELECT 1 AS one").collect()[0].one)
"""


@dataclass
class Up:
    """One `lambda-arch up --no-traffic` process and everything it started."""

    process: subprocess.Popen[bytes]
    home: Path
    broker_port: int
    dagster_port: int
    out_path: Path
    err_path: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def tree(self) -> list[psutil.Process]:
        """The live process tree now; every process seen is remembered for clean-up."""
        try:
            root = psutil.Process(self.process.pid)
            current = [root, *root.children(recursive=True)]
        except psutil.Error:
            current = []
        self.seen.update((p.pid, p) for p in current)
        return current

    def wait_until_up(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while "lambda-arch is up" not in self.stdout:
            if self.process.poll() is not None:
                pytest.fail(f"up exited with {self.process.returncode}: {self.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"up did not come up in {timeout_s:.0f} s: {self.stdout}")
            self.tree()
            time.sleep(0.25)


# Stacks that do not test Spark point at a Connect URL nobody serves: up then starts no Spark
# Connect server (a JVM), and with no traffic no run ever connects.
NO_SPARK = "sc://127.0.0.1:1"


def up_env(
    home: Path, broker_port: int, dagster_port: int, connect_port: int | None = None
) -> dict[str, str]:
    """This environment without lambda-arch or Dagster settings, plus a fresh home and ports;
    with connect_port, up starts its Spark Connect server there."""
    env = isolated_env(
        {
            "LAMBDA_ARCH_HOME": str(home),
            "LAMBDA_ARCH_BROKER_PORT": str(broker_port),
            "LAMBDA_ARCH_DAGSTER_PORT": str(dagster_port),
            "LAMBDA_ARCH_TOPIC_PARTITIONS": str(PARTITIONS),
        }
    )
    if connect_port is None:
        env["SPARK_REMOTE"] = NO_SPARK
    else:
        env["LAMBDA_ARCH_SPARK_CONNECT_PORT"] = str(connect_port)
    return env


@contextmanager
def lambda_arch_up(
    tmp_path: Path,
    home: Path | None = None,
    ports: tuple[int, int] | None = None,
    connect_port: int | None = None,
) -> Iterator[Up]:
    """Start `up --no-traffic`; afterwards kill, by PID, whatever of its tree is still alive."""
    home = home or tmp_path / "home"
    broker_port, dagster_port = ports or (free_port(), free_port())
    name = f"up-{time.monotonic_ns()}"
    out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "lambda_arch.cli", "up", "--no-traffic"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=up_env(home, broker_port, dagster_port, connect_port),
            cwd=tmp_path,
            start_new_session=True,
        )
    up = Up(process, home, broker_port, dagster_port, out_path, err_path)
    try:
        yield up
    finally:
        up.tree()
        # Only those still running: waiting on one that is gone (e.g. a final landing child that
        # ended long ago) can fail inside psutil (pidfd_open: ENOENT).
        leftovers = [proc for proc in up.seen.values() if proc.is_running()]
        for proc in leftovers:
            proc.kill()  # psutil checks the start time: never a recycled PID
        psutil.wait_procs(leftovers, timeout=10)
        process.wait(timeout=10)


def live(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def assert_stack_answers(up: Up) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{up.dagster_port}/server_info") as response:
        assert response.status == 200
    bootstrap = f"127.0.0.1:{up.broker_port}"
    assert kafka_ready(bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-stack")
    try:
        assert topic_partitions(admin, "play-events") == PARTITIONS
    finally:
        admin.close()


def command_line(process: psutil.Process) -> str:
    """A process's command line; empty for one that ended (or is a zombie not yet reaped)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def full_tree(up: Up, timeout_s: float = 60.0, spark: bool = False) -> list[psutil.Process]:
    """The tree once broker, daemon, webserver, both gRPC code servers (and Spark) run."""
    deadline = time.monotonic() + timeout_s
    while True:
        tree = up.tree()
        commands = [command_line(p) for p in tree]
        code_servers = sum("dagster api grpc" in c for c in commands)
        wanted = ("tansu broker", "dagster-daemon run", "dagster-webserver")
        wanted += ("SparkConnectServer",) if spark else ()
        daemon_log = up.home / "logs" / "daemon.log"
        # A daemon stopped while still importing leaves a KeyboardInterrupt traceback: wait
        # until it runs its daemons.
        daemon_ready = daemon_log.exists() and "Instance is configured" in daemon_log.read_text()
        if (
            all(any(w in c for c in commands) for w in wanted)
            and code_servers >= 2
            and daemon_ready
        ):
            return tree
        if time.monotonic() > deadline:
            pytest.fail(f"incomplete process tree: {commands}")
        time.sleep(0.5)


def stop_and_check(up: Up, signum: signal.Signals, spark_port: int | None = None) -> None:
    """Send signum; up exits 0 in time with nothing left running or listening."""
    tree = full_tree(up, spark=spark_port is not None)
    os.kill(up.process.pid, signum)
    assert up.process.wait(timeout=STOP_TIMEOUT_S) == 0, up.stderr
    assert live(tree) == []
    assert not port_in_use(up.broker_port)
    assert not port_in_use(up.dagster_port)
    assert spark_port is None or not port_in_use(spark_port)
    assert list((up.home / "run").glob("*.pid")) == []
    assert "lambda-arch: stopped" in up.stdout
    assert up.stderr == ""


def assert_one_line_error(up: Up, *needles: str) -> str:
    assert up.process.returncode == 2, up.stdout
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1, up.stderr
    assert "Traceback" not in up.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_up_serves_then_stops_everything_on_sigterm(tmp_path: Path) -> None:
    spark_port = free_port()
    with lambda_arch_up(tmp_path, connect_port=spark_port) as up:
        started = time.monotonic()
        up.wait_until_up()
        ready_s = time.monotonic() - started
        assert_stack_answers(up)
        # The Spark Connect server every run shares answers a query, and commands started next
        # to up (lambda-arch run, queries) find it through its PID file.
        assert f"sc://127.0.0.1:{spark_port} (Spark Connect)" in up.stdout
        assert (up.home / "run" / "spark-connect.pid").exists()
        probe = subprocess.run(
            [sys.executable, "-c", SPARK_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env=up_env(up.home, up.broker_port, up.dagster_port, spark_port) | {"SPARK_REMOTE": ""},
            check=False,
        )
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert probe.stdout.split()[-2:] == ["pyspark.sql.connect.session", "1"]
        tree = full_tree(up, spark=True)
        rss_mb = sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20
        print(
            f"\nup --no-traffic: ready in {ready_s:.1f} s, {len(tree)} processes, {rss_mb:.0f} MB"
        )

        # The dagster.yaml written by up is accepted by the Dagster CLI...
        info = subprocess.run(
            [str(Path(sys.executable).parent / "dagster"), "instance", "info"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DAGSTER_HOME": str(up.home / "dagster")},
            check=False,
        )
        assert info.returncode == 0, info.stderr
        assert "max_concurrent_runs: 4" in info.stdout
        assert SPARK_RUN_TAG in info.stdout

        stop_and_check(up, signal.SIGTERM, spark_port)
        # ... and by the daemon, which ran without a config error.
        daemon_log = (up.home / "logs" / "daemon.log").read_text()
        assert "QueuedRunCoordinatorDaemon" in daemon_log
        assert "Traceback" not in daemon_log
        assert "- ERROR -" not in daemon_log


@pytest.mark.slow
def test_up_stops_everything_on_sigint(tmp_path: Path) -> None:
    with lambda_arch_up(tmp_path) as up:
        up.wait_until_up()
        assert_stack_answers(up)
        stop_and_check(up, signal.SIGINT)


@pytest.mark.slow
def test_up_refuses_a_dagster_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        broker_port = free_port()
        started = time.monotonic()
        with lambda_arch_up(tmp_path, ports=(broker_port, taken)) as up:
            up.process.wait(timeout=60)
            assert time.monotonic() - started < 30
            assert_one_line_error(up, f"127.0.0.1:{taken}", "LAMBDA_ARCH_DAGSTER_PORT")
            # Refused before starting anything.
            assert not port_in_use(broker_port)
            assert list((up.home / "run").glob("*.pid")) == []


@pytest.mark.slow
def test_up_refuses_a_spark_connect_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        broker_port = free_port()
        with lambda_arch_up(tmp_path, ports=(broker_port, free_port()), connect_port=taken) as up:
            up.process.wait(timeout=60)
            assert_one_line_error(
                up, f"127.0.0.1:{taken}", "LAMBDA_ARCH_SPARK_CONNECT_PORT", "SPARK_REMOTE"
            )
            # Refused before starting anything.
            assert not port_in_use(broker_port)
            assert list((up.home / "run").glob("*.pid")) == []


@pytest.mark.slow
def test_a_second_up_on_the_same_home_is_refused(tmp_path: Path) -> None:
    with lambda_arch_up(tmp_path) as first:
        first.wait_until_up()
        ports = (first.broker_port, first.dagster_port)
        with lambda_arch_up(tmp_path, home=first.home, ports=ports) as second:
            second.process.wait(timeout=60)
            assert_one_line_error(second, "already running", str(first.process.pid))
        assert_stack_answers(first)  # the refusal left the first stack alone
        stop_and_check(first, signal.SIGTERM)


@pytest.mark.slow
def test_a_dying_child_stops_the_stack_with_one_line(tmp_path: Path) -> None:
    with lambda_arch_up(tmp_path) as up:
        up.wait_until_up()
        tree = full_tree(up)
        broker = next(p for p in tree if "tansu" in command_line(p))
        broker.kill()
        assert up.process.wait(timeout=STOP_TIMEOUT_S) == 2
        assert_one_line_error(up, "broker", str(up.home / "logs" / "broker.log"))
        assert live(tree) == []
        assert not port_in_use(up.dagster_port)
        assert list((up.home / "run").glob("*.pid")) == []


# Fast checks of the pieces ---------------------------------------------------------------------


def test_dagster_yaml_limits_runs(tmp_path: Path) -> None:
    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator

    settings = Settings(
        LAMBDA_ARCH_HOME=str(tmp_path),
        LAMBDA_ARCH_MAX_CONCURRENT_RUNS=3,
        LAMBDA_ARCH_MAX_SPARK_RUNS=2,
    )
    write_dagster_yaml(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        assert queue.max_concurrent_runs == 3
        assert queue.tag_concurrency_limits == [
            {"key": SPARK_RUN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
        ]
        assert instance.root_directory == str(settings.dagster_home)


def test_claim_home_removes_stale_pid_files_and_refuses_live_ones(tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path))
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    write_pid_file(run_dir / "webserver.pid", finished.pid)
    finished.wait()
    (run_dir / "daemon.pid").write_text(f"{os.getpid()} 12345.0\n")  # a recycled PID

    lock_fd = claim_home(settings)
    try:
        assert sorted(p.name for p in run_dir.glob("*.pid")) == ["up.pid"]
    finally:
        os.close(lock_fd)

    # A child of an earlier `up` that outlived it (this test process stands in for it).
    (run_dir / "up.pid").unlink()
    write_pid_file(run_dir / "webserver.pid", os.getpid())
    with pytest.raises(ServiceError, match=rf"webserver pid {os.getpid()}"):
        claim_home(settings)


def test_demo_traffic_starts_before_midnight_and_its_commands_parse() -> None:
    from datetime import UTC, datetime, timedelta

    from lambda_arch.cli.main import cli
    from lambda_arch.runtime.stack import Traffic, demo_start

    start = demo_start(datetime(2026, 3, 5, 10, 17, tzinfo=UTC))
    assert start == datetime(2026, 3, 4, 23, 30, tzinfo=UTC)
    traffic = Traffic(rate=200, speedup=60, start=start, burst_after_s=240)
    assert traffic.event_clock(60) == start + timedelta(hours=1)
    produce = cli.commands["produce"]
    live = traffic.command()
    params = produce.make_context("produce", live[live.index("produce") + 1 :]).params
    assert params["events"] == 0 and params["rate"] == 200 and params["speedup"] == 60
    assert params["start"] == start and params["malformed"] == 0.002
    burst = traffic.burst_command(traffic.event_clock(240))
    params = produce.make_context("produce", burst[burst.index("produce") + 1 :]).params
    assert params["events"] == 400 and params["malformed"] == 0.5
    assert params["start"] == start + timedelta(hours=4)


# Trust (issue 12): a clean stop of a memory broker loses nothing; a kill -9's loss is counted ---


def stack_settings(up: Up) -> Settings:
    """The settings `up` runs with, as a command next to it reads them (topic and home)."""
    return Settings(
        LAMBDA_ARCH_HOME=str(up.home),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{up.broker_port}",
        LAMBDA_ARCH_TOPIC_PARTITIONS=PARTITIONS,
    )


def lake_rows(settings: Settings) -> int:
    """Rows landed in the home's lake (valid and quarantined), read without Spark."""
    import pyarrow.dataset as pads

    from lambda_arch.batch.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake

    lake = Lake.from_settings(settings)
    return sum(
        pads.dataset(lake.location(t), format="parquet", partitioning="hive").count_rows()
        for t in (EVENTS_TABLE, QUARANTINE_TABLE)
        if Path(lake.location(t)).is_dir()
    )


def send_raw(bootstrap: str, count: int, prefix: str) -> None:
    """Plays sent with a bare producer (which records no end offsets)."""
    from lambda_arch.ingest.producer import make_producer

    producer = make_producer(bootstrap)
    for i in range(count):
        moment = f"2026-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
        value = (
            f'{{"event_id": "{prefix}{i}", "event_type": "play_start", "event_time": "{moment}",'
            ' "member_id": 7, "title_id": 42, "country": "US"}'
        )
        producer.send("play-events", key=b"7", value=value.encode(), partition=i % PARTITIONS)
    producer.flush()
    producer.close()


def data_lost_alerts(settings: Settings) -> list[dict]:
    from lambda_arch.quality.alerts import read_alerts

    return [a for a in read_alerts(settings.logs_dir / "alerts.jsonl") if a["kind"] == "data_lost"]


def land_after_restart(spark, settings: Settings, port: int, lake, events: int):
    """A new memory broker on the port, `events` produced, one landing run: its loss report."""
    from lambda_arch.ingest.producer import ProduceRequest, run_produce
    from lambda_arch.runtime.broker import EmbeddedBroker
    from lambda_arch.speed.layer import run_landing

    with EmbeddedBroker(port):
        run_produce(settings, ProduceRequest(events=events, seed=events, progress=False))
        report = run_landing(spark, settings, lake)
    assert report.events_read == events
    assert report.incarnation_loss is not None
    return report.incarnation_loss


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_clean_stop_lands_everything_and_a_kill_9_loss_is_counted_and_alerted(
    spark, tmp_path: Path
) -> None:
    from lambda_arch.batch.lake import Lake
    from lambda_arch.ingest.incarnations import read_ledger
    from lambda_arch.ingest.kafka_offsets import current_topic_id, end_offsets
    from lambda_arch.ingest.producer import ProduceRequest, run_produce
    from lambda_arch.ingest.source_offsets import checkpoint_offsets
    from lambda_arch.speed.layer import checkpoint_of

    home, ports = tmp_path / "home", (free_port(), free_port())
    # Landing runs of this test's own Spark session write a lake of their own (the stack's
    # Connect server owns the home's metastore); the checkpoint is the home's.
    other_lake = Lake(str(tmp_path / "lake"), f"trust_{time.monotonic_ns()}")

    # 1. Ctrl-C of a memory stack: up lands what the topic holds before its broker stops.
    with lambda_arch_up(tmp_path, home, ports, connect_port=free_port()) as up:
        up.wait_until_up()
        settings = stack_settings(up)
        run_produce(settings, ProduceRequest(events=300, seed=3, progress=False))
        ends = end_offsets(settings.bootstrap_servers, settings.topic)
        os.kill(up.process.pid, signal.SIGINT)
        assert up.process.wait(timeout=300) == 0, up.stderr
    assert "lambda-arch: landing " in up.stdout and " events before the broker stops" in up.stdout
    assert "done in" in up.stdout, up.stdout
    assert checkpoint_offsets(checkpoint_of(settings, "landing")) == ends
    assert lake_rows(settings) == 300
    (first,) = read_ledger(settings.topic_ends_file)["play-events"]
    assert first["final"] and {int(p): o for p, o in first["end"].items()} == ends

    # After a restart (a memory broker starts the topic again) nothing is lost or alerted.
    loss = land_after_restart(spark, settings, ports[0], other_lake, 50)
    assert (loss.total, loss.precision) == (0, "exact")
    assert data_lost_alerts(settings) == []

    # 2. kill -9 of a memory stack: up recorded the end offsets while it ran.
    with lambda_arch_up(tmp_path, home, ports) as up:
        up.wait_until_up()
        send_raw(settings.bootstrap_servers, 120, "k")
        killed_id = current_topic_id(settings.bootstrap_servers, settings.topic)
        deadline = time.monotonic() + 60
        while True:
            entries = read_ledger(settings.topic_ends_file)["play-events"]
            entry = next((e for e in entries if e["topic_id"] == killed_id), {"end": {}})
            if sum(entry["end"].values()) == 120:
                break
            assert time.monotonic() < deadline, entries
            time.sleep(0.5)
        tree = full_tree(up)
        os.kill(up.process.pid, signal.SIGKILL)
        up.process.wait(timeout=30)
        for process in tree:  # the broker outlives a killed up: it dies too, as on a crash
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(tree, timeout=30)

    loss = land_after_restart(spark, settings, ports[0], other_lake, 30)
    # The killed incarnation's 120 were never read; the one before it was read to its end.
    assert (loss.total, loss.precision, loss.incarnations) == (120, "lower bound", 2)
    assert loss.metadata()["records_lost"] == 120
    (alert,) = data_lost_alerts(settings)
    assert alert["severity"] == "ERROR" and alert["metadata"]["records_lost"] == 120
    assert "at least 120 records" in alert["message"]
