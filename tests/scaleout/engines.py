"""Real engines for the scale-out tests: a PostgreSQL cluster and a Spark standalone cluster of
the test session's own, on 127.0.0.1 and free ports, stopped by PID.

PostgreSQL comes from Debian's binaries (`make postgres` installs them): `initdb` as the
postgres user (it refuses root) in a temp folder, `pg_ctl start` on a free port with its socket
in that folder; the machine's own cluster is never touched. The Spark cluster is one master and
two 1-core workers run by the installed pyspark's `spark-class` in the foreground.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambda_arch.runtime.broker import free_port
from lambda_arch.runtime.processes import spawn, spawn_env, stop_process
from lambda_arch.runtime.spark_connect import spark_home

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
SPARK_READY_TIMEOUT_S = 120.0


def _as_postgres(*command: str) -> list[str]:
    """command run as the postgres user when we are root (initdb and the server refuse root)."""
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else list(command)


@dataclass
class Postgres:
    """A PostgreSQL cluster in `folder`, listening on 127.0.0.1:port, trust authentication."""

    folder: Path
    port: int
    setup_s: float = 0.0
    databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def start(self) -> None:
        started = time.monotonic()
        missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).exists()]
        if missing:
            raise RuntimeError(f"PostgreSQL binaries {missing} missing: run `make postgres`")
        self.data_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:  # folder: a mkdtemp of its own under /tmp, not pytest's 0700 tree
            shutil.chown(self.folder, PG_USER, PG_USER)
            shutil.chown(self.data_dir, PG_USER, PG_USER)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--auth=trust")
        self._run(
            str(PG_BIN / "pg_ctl"),
            *("-D", str(self.data_dir), "-l", str(self.folder / "postgres.log"), "-w"),
            *("-o", f"-p {self.port} -k {self.folder} -h 127.0.0.1"),
            "start",
        )
        self.setup_s = time.monotonic() - started

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def _run(self, *command: str) -> str:
        done = subprocess.run(
            _as_postgres(*command),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def create_database(self, name: str, template: str | None = None) -> None:
        command = [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER]
        if template:
            command += ["-T", template]
        self._run(*command, name)
        self.databases.append(name)

    def url(self, database: str) -> str:
        """The psycopg2 / SQLAlchemy URL of a database (what LAMBDA_ARCH_DAGSTER_PG_URL takes)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def jdbc_url(self, database: str) -> str:
        """The JDBC URL of a database (what LAMBDA_ARCH_METASTORE_URL takes)."""
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{database}?user={PG_USER}"

    def query(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        with psycopg2.connect(self.url(database)) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()


@dataclass
class SparkCluster:
    """A Spark standalone master and two 1-core, 1 GiB workers on 127.0.0.1."""

    folder: Path
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    setup_s: float = 0.0

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        """The master's /json/ document: workers, active and completed applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=10) as reply:
            return json.load(reply)

    def _class(self, name: str, *args: str) -> list[str]:
        return [str(spark_home() / "bin" / "spark-class"), name, *args]

    def start(self, workers: int = 2) -> None:
        started = time.monotonic()
        env = spawn_env(
            {
                "SPARK_HOME": str(spark_home()),
                "SPARK_NO_DAEMONIZE": "1",
                "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOG_DIR": str(self.folder / "logs"),
                # Workers would start a web UI each on 8081 and up: free ports instead.
                "SPARK_WORKER_WEBUI_PORT": "0",
            }
        )
        env.pop("SPARK_REMOTE", None)
        master = self._class(
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)),
        )
        self.processes.append(spawn(master, log_path=self.folder / "master.log", env=env))
        for number in range(workers):
            work_dir = self.folder / f"worker-{number}"
            work_dir.mkdir(parents=True, exist_ok=True)
            worker = self._class(
                "org.apache.spark.deploy.worker.Worker",
                *("--host", "127.0.0.1", "-c", "1", "-m", "1g", "-d", str(work_dir)),
                *("--webui-port", str(free_port()), self.master_url),
            )
            self.processes.append(
                spawn(worker, log_path=self.folder / f"worker-{number}.log", env=env)
            )
        deadline = time.monotonic() + SPARK_READY_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"a Spark cluster process exited: see {self.folder}")
            try:
                alive = [w for w in self.state().get("workers", []) if w["state"] == "ALIVE"]
            except (OSError, ValueError):  # not listening yet, or a page before /json/ is served
                alive = []
            if len(alive) == workers:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Spark cluster was not ready: see {self.folder}")
            time.sleep(0.5)
        self.setup_s = time.monotonic() - started

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process, timeout_s=15)
