"""The embedded Spark Connect server with a real server process and real client processes.

One server serves the module (it starts in 6-30 s). Its Python workers cannot import
lambda_arch (a blocking package comes first on their path), as on a server that only has the
project's dependencies: everything the project runs there has to travel by value. Clients run
in child processes (connect_client_child.py): a Connect session next to the suite's classic
one would switch this process's pyspark into Connect mode.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker, ServiceError
from lambda_arch.runtime.spark import running_server_url
from lambda_arch.runtime.spark_connect import ConnectServer
from lambda_arch.runtime.stack import write_pid_file
from tests.connect_helpers import connect_server

CHILD = Path(__file__).with_name("connect_client_child.py")
CHILD_TIMEOUT_S = 300
PID_FILE = "spark-connect.pid"
BLOCKED = "lambda_arch is not installed on this Spark server"

pytestmark = pytest.mark.slow  # every test uses the module's server process


def python_without_lambda_arch(folder: Path) -> Path:
    """A PYSPARK_PYTHON for the server: this venv's Python, but `import lambda_arch` fails."""
    blocker = folder / "blocker" / "lambda_arch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"raise ImportError({BLOCKED!r})\n")
    wrapper = folder / "python-without-lambda-arch"
    # Spark sets PYTHONPATH for its workers: put the blocker in front of whatever it says.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{blocker.parent}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """One Connect server on a free port, with a LAMBDA_ARCH_HOME of its own, as `up` runs it
    (its PID file included, so build_session finds it without SPARK_REMOTE)."""
    root = tmp_path_factory.mktemp("spark-connect")
    with connect_server(root / "home", python_without_lambda_arch(root)) as connect:
        assert connect.process is not None
        connect.settings.run_dir.mkdir(parents=True, exist_ok=True)
        write_pid_file(connect.settings.run_dir / PID_FILE, connect.process.pid)
        yield connect


def client_env(server: ConnectServer, **extra: str) -> dict[str, str]:
    """A run's environment: the server's home and URL, no other lambda-arch settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LAMBDA_ARCH_")
        and name not in ("KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE")
    }
    env.update(
        LAMBDA_ARCH_HOME=str(server.settings.home),
        LAMBDA_ARCH_SPARK_CONNECT_PORT=str(server.port),
        SPARK_REMOTE=server.url,
        **extra,
    )
    return env


def child(*arguments: str) -> list[str]:
    return [sys.executable, str(CHILD), *arguments]


def outcome(returncode: int | None, stdout: str, stderr: str) -> dict[str, Any]:
    """The child's JSON, once it exited 0."""
    assert returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_running_server_url_follows_the_pid_file(server: ConnectServer, tmp_path: Path) -> None:
    assert running_server_url(server.settings) == server.url
    # Another home: no PID file, then one of a finished process.
    elsewhere = Settings(LAMBDA_ARCH_HOME=str(tmp_path), LAMBDA_ARCH_SPARK_CONNECT_PORT=server.port)
    assert running_server_url(elsewhere) is None
    elsewhere.run_dir.mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    write_pid_file(elsewhere.run_dir / PID_FILE, finished.pid)
    finished.wait()
    assert running_server_url(elsewhere) is None


def test_kafka_source_and_speed_queries_over_connect(
    server: ConnectServer, broker: EmbeddedBroker, topic: str
) -> None:
    ensure_topic(broker.bootstrap_servers, topic, 3)
    plays = {10: 4, 20: 2, 30: 1}
    records = [
        {"event_type": "play_start", "title_id": title}
        for title, count in plays.items()
        for _ in range(count)
    ] + [
        {"event_type": "play_heartbeat", "title_id": 10, "position_ms": 1000 * i} for i in range(5)
    ]
    producer = make_producer(broker.bootstrap_servers)
    for i, record in enumerate(records):
        event = {
            "event_id": f"e{i}",
            "event_time": f"2026-03-01T12:0{i % 5}:00Z",
            "member_id": i % 4,
            "country": "US",
            **record,
        }
        producer.send(topic, key=str(i % 4).encode(), value=json.dumps(event).encode())
    duplicate = {"event_id": "e0", "event_time": "2026-03-01T12:00:00Z", "member_id": 0}
    duplicate |= {"country": "US", **records[0]}
    producer.send(topic, key=b"0", value=json.dumps(duplicate).encode())  # counted once
    for bad in (b"not json", b'{"event_id": "x", "event_type": "play_start"}'):
        producer.send(topic, key=b"1", value=bad)
    producer.flush()
    producer.close()
    total, valid = len(records) + 3, len(records) + 1

    env = client_env(
        server, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, LAMBDA_ARCH_TOPIC=topic
    )
    done = subprocess.run(
        child("speed"), env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    result = outcome(done.returncode, done.stdout, done.stderr)
    print(f"\nspeed client, seconds since start: {result['seconds']}")
    assert result["session"] == "pyspark.sql.connect.session"
    # The server really lacks the project: the source and the foreachBatch bodies travelled.
    assert BLOCKED in result["server_python"]
    assert result["batch_rows"] == total
    assert result["trending"] == {
        "events_read": [total, 0],  # the rerun resumes from the checkpoint
        "plays": {str(title): count for title, count in plays.items()},
    }
    assert result["landing"] == {
        "observed": {
            "landing.records": total,
            "landing.valid": valid,
            "landing.quarantined": 2,
            "landing.future": 0,  # of the quarantined: event_time in the future
        },
        "events": valid,  # raw: the duplicate stays
        "quarantine": 2,
    }


def test_two_clients_at_once_share_one_metastore(server: ConnectServer) -> None:
    """Two runs at the same time against one Hive metastore: with classic sessions the second
    fails on Derby's one-JVM lock; through the server both work and see each other's tables.
    One finds the server through SPARK_REMOTE, the other through `up`'s PID file."""
    envs = [client_env(server), client_env(server) | {"SPARK_REMOTE": ""}]
    names = ["first_client", "second_client"]
    processes = [
        subprocess.Popen(
            child("catalog", name, other),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, other, env in zip(names, reversed(names), envs, strict=True)
    ]
    try:
        outputs = [process.communicate(timeout=CHILD_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        result = outcome(process.returncode, stdout, stderr)
        assert result["session"] == "pyspark.sql.connect.session"
        assert result["tables"] == sorted(names)
        assert result["other_rows"] == 3


def test_a_taken_port_is_a_clear_error(server: ConnectServer, tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path / "home"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        for port in (taken, server.port):  # any listener, and a running Connect server
            second = ConnectServer(settings, port=port)
            with pytest.raises(ServiceError) as error:
                second.launch()
            message = str(error.value)
            assert f"127.0.0.1:{port}" in message
            assert "LAMBDA_ARCH_SPARK_CONNECT_PORT" in message and "SPARK_REMOTE" in message
            assert second.process is None  # nothing was started
