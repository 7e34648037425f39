"""The embedded Spark Connect server: one warm JVM and one metastore owner for every run.

`lambda-arch up` starts it (unless SPARK_REMOTE names a server already) and hands
`SPARK_REMOTE=sc://127.0.0.1:<port>` to Dagster, so a run connects in about a second instead of
starting a JVM (7-8 s), and runs no longer compete for the Derby metastore, which admits one JVM.

The server is the Connect class of the pip pyspark run by `spark-submit` in the foreground
(`sbin/start-connect-server.sh` would daemonize it and keep its PID in a file of its own): we own
the PID, it runs in its own process group and stops with processes.stop_process. It binds
127.0.0.1 only and gets the configuration of a local session (lambda_arch.runtime.spark.catalog_conf).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from lambda_arch.common.config import Settings
from lambda_arch.runtime.broker import ServiceError, port_in_use
from lambda_arch.runtime.processes import spawn, spawn_env, stop_process
from lambda_arch.runtime.spark import (
    CONNECT_SERVER_NAME,
    connect_url,
    local_session_conf,
    metastore_dir,
    spark_environment,
    write_log4j,
    write_scheduler_pools,
)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT_S = 180.0  # ~6-10 s alone; generous for a machine shared with other JVMs
PROBE_TIMEOUT_S = 120.0
LOG_NAME = CONNECT_SERVER_NAME  # its log and PID file (lambda_arch.runtime.stack)
POLL_S = 0.25

# The first query proves that sessions, SQL and the catalog work, not only that a port is open.
# It runs in a child so the caller (the `up` supervisor) never loads the Connect client.
_PROBE = """
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
assert spark.sql("SELECT 1 AS one").collect()[0].one == 1
spark.stop()
"""


def spark_home() -> Path:
    """SPARK_HOME of the installed pyspark (bin/spark-submit and the jars live there)."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def server_conf(settings: Settings, port: int) -> dict[str, str]:
    """A local session's configuration plus the loopback gRPC endpoint."""
    conf = local_session_conf(settings)
    conf.update(
        {
            "spark.master": settings.spark_master,
            "spark.app.name": "lambda-arch Spark Connect server",
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port),
            # Spark moves to the next port when one is taken; a server elsewhere than
            # SPARK_REMOTE says would be unreachable, so fail instead (ports of 0 are unaffected).
            "spark.port.maxRetries": "0",
        }
    )
    return conf


def server_command(settings: Settings, port: int) -> list[str]:
    command = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS]
    for key, value in server_conf(settings, port).items():
        command += ["--conf", f"{key}={value}"]
    return command


def server_env(settings: Settings) -> dict[str, str]:
    """Our environment for the server: loopback driver, this venv's Python for UDF workers."""
    env = spawn_env(
        {
            **spark_environment(),
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONNECT_MODE": "0",  # as start-connect-server.sh: the server itself is classic
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("SPARK_REMOTE", None)
    return env


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text[-lines:]) or "  (empty log)"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ConnectServer:
    """A Spark Connect server process on 127.0.0.1:port with the settings' catalog and master."""

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        extra_conf: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.port = port if port is not None else settings.spark_connect_port
        self.log_path = log_path or settings.logs_dir / f"{LOG_NAME}.log"
        self.extra_conf = dict(extra_conf or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    @property
    def url(self) -> str:
        return connect_url(self.port)

    def launch(self) -> subprocess.Popen[bytes]:
        """Spawn the server without waiting for it (wait_ready does); a taken port is an error."""
        if port_in_use(self.port):
            raise ServiceError(
                f"port 127.0.0.1:{self.port} for the Spark Connect server is already in use: "
                "stop what listens there, set LAMBDA_ARCH_SPARK_CONNECT_PORT, or set "
                "SPARK_REMOTE to use a running Spark Connect server"
            )
        settings = self.settings
        for folder in (metastore_dir(settings), settings.home / "spark-connect"):
            folder.mkdir(parents=True, exist_ok=True)
        write_log4j(settings)
        write_scheduler_pools(settings)
        command = server_command(settings, self.port)
        for key, value in self.extra_conf.items():
            command += ["--conf", f"{key}={value}"]
        self.started_at = time.monotonic()
        # cwd: stray files of Spark or Hive land in the home, not where the user stands.
        self.process = spawn(
            command, log_path=self.log_path, env=server_env(settings), cwd=settings.home
        )
        return self.process

    def _failure(self, what: str) -> ServiceError:
        return ServiceError(
            f"the Spark Connect server on 127.0.0.1:{self.port} {what}; see {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Block until a client runs SELECT 1; return seconds since launch. Stops it on failure."""
        assert self.process is not None and self.started_at is not None, "launch() first"
        deadline = self.started_at + timeout_s
        try:
            while True:
                if (code := self.process.poll()) is not None:
                    raise self._failure(f"exited with code {code} while starting")
                if _port_open(self.port) and self._probe(deadline):
                    return time.monotonic() - self.started_at
                if time.monotonic() > deadline:
                    raise self._failure(f"did not answer within {timeout_s:.0f} s")
                time.sleep(POLL_S)
        except BaseException:
            self.stop()
            raise

    def _probe(self, deadline: float) -> bool:
        """True when a fresh client process runs SELECT 1 on the server."""
        remaining = max(1.0, min(PROBE_TIMEOUT_S, deadline - time.monotonic()))
        try:
            result = subprocess.run(
                [sys.executable, "-c", _PROBE, self.url],
                env=server_env(self.settings),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=remaining,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """launch() and wait_ready(); return the seconds until a query answered."""
        self.launch()
        return self.wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop the server and everything it started (Python workers), by PID."""
        if self.process is not None:
            stop_process(self.process, timeout_s=20.0)

    def __enter__(self) -> ConnectServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
