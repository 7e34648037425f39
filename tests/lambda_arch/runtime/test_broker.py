"""The embedded Tansu broker: its binary, ports, readiness probes, and a broker's start and stop."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lambda_arch.runtime.broker import (
    EmbeddedBroker,
    ServiceError,
    free_port,
    kafka_ready,
    port_in_use,
    require_reachable,
    storage_url,
    tansu_binary,
    unreachable_message,
    wait_for_kafka,
)
from tests.process_helpers import pid_alive


def test_tansu_binary_is_the_executable_of_the_wheel() -> None:
    binary = tansu_binary()
    assert binary.name == "tansu" and binary.parent.name == "bin"
    assert binary.is_file() and os.access(binary, os.X_OK)


def test_port_in_use_and_free_port() -> None:
    port = free_port()
    assert 0 < port < 65536 and not port_in_use(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert port_in_use(port)
    assert not port_in_use(port)


def test_storage_url_for_tansu() -> None:
    assert storage_url("memory") == "memory://tansu/"
    assert storage_url("s3://bucket") == "s3://bucket/"
    assert storage_url("s3://bucket/") == "s3://bucket/"


def test_require_reachable_fails_fast_with_what_to_do(broker: EmbeddedBroker) -> None:
    closed = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceError) as error:
        require_reachable(f"{closed},not-a-port", timeout_s=1.0)
    assert time.monotonic() - started < 5  # not kafka-python's 30 s bootstrap timeout
    assert str(error.value) == unreachable_message(f"{closed},not-a-port")
    assert "lambda-arch up" in str(error.value) and "KAFKA_BOOTSTRAP_SERVERS" in str(error.value)
    # Any one server of the list that accepts TCP is enough.
    require_reachable(f"{closed}, {broker.bootstrap_servers}")


def test_kafka_ready_and_wait_for_kafka(broker: EmbeddedBroker) -> None:
    assert kafka_ready(broker.bootstrap_servers)
    started = time.monotonic()
    wait_for_kafka(broker.bootstrap_servers, timeout_s=5)
    assert time.monotonic() - started < 5


def test_embedded_broker_starts_answers_logs_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "broker.log"
    embedded = EmbeddedBroker(free_port(), log_path=log)
    command = embedded.command()
    assert command[0] == str(tansu_binary()) and command[1] == "broker"
    listener = f"tcp://127.0.0.1:{embedded.port}"
    assert command[command.index("--listener-url") + 1] == listener
    assert command[command.index("--advertised-listener-url") + 1] == listener
    assert command[command.index("--storage-engine") + 1] == "memory://tansu/"

    with embedded as running:
        assert running is embedded and running.process is not None
        pid = running.process.pid
        assert embedded.bootstrap_servers == f"127.0.0.1:{embedded.port}"
        assert kafka_ready(embedded.bootstrap_servers) and port_in_use(embedded.port)
        assert log.exists()  # the broker's output goes to the log file
    assert embedded.process is None
    assert not pid_alive(pid) and not port_in_use(embedded.port)
    embedded.stop()  # stopping twice is harmless


def test_embedded_broker_refuses_a_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        embedded = EmbeddedBroker(port)
        with pytest.raises(ServiceError) as error:
            embedded.start()
    assert f"127.0.0.1:{port} is already in use" in str(error.value)
    assert "LAMBDA_ARCH_BROKER_PORT" in str(error.value)
    assert embedded.process is None  # nothing was started


def in_thread(function: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run function in a daemon thread; the list gets its result or exception."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(function())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_closed_ports_and_dead_brokers_are_reported_within_their_timeouts(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    log = tmp_path / "broker.log"
    # This Tansu build has no file:// storage: the binary exits at once.
    dead = EmbeddedBroker(free_port(), storage="file:///nowhere/", log_path=log)
    probes = {
        "ready": in_thread(lambda: kafka_ready(closed, timeout_s=0.5)),
        "wait": in_thread(lambda: wait_for_kafka(closed, timeout_s=1)),
        "start": in_thread(lambda: dead.start(timeout_s=10)),
    }
    deadline = time.monotonic() + 5
    for thread, _ in probes.values():
        thread.join(max(deadline - time.monotonic(), 0))
    outcome = {
        name: result[0] if result else "still running" for name, (_, result) in probes.items()
    }
    assert outcome["ready"] is False, outcome
    assert str(outcome["wait"]) == f"no Kafka broker answered at {closed} within 1 s", outcome
    message = str(outcome["start"])
    assert "exited with code 1 on start" in message and str(log) in message, outcome
    assert "UnsupportedStorageUrl" in log.read_text()


def test_kafka_ready_bounds_a_listener_that_never_answers_and_leaks_no_thread() -> None:
    # Accepts TCP but never speaks Kafka: the client's bootstrap must give up within timeout_s,
    # and the IO thread that kafka-python starts before bootstrapping must not be left behind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        before = {t.ident for t in threading.enumerate()}
        started = time.monotonic()
        assert kafka_ready(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5) is False
        assert time.monotonic() - started < 2
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert not left, left
