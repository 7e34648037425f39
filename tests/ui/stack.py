"""`lambda-arch up` as the browser test drives it: its processes, its GraphQL API, its settings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from lambda_arch.runtime.processes import isolated_env

# The first daily partition; the test's events start on this day.
START_DATE = "2026-03-01"
UP_TIMEOUT_S = 180.0  # ~15 s alone; the shared 2-core machine can be far slower
STOP_TIMEOUT_S = 60.0
UI_TIMEOUT_MS = 30_000  # any one browser action or assertion
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
# Debian's Chromium, installed by `make test` (never `playwright install`).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class GraphQLError(AssertionError):
    """The Dagster GraphQL API answered with errors."""


@dataclass
class Stack:
    """One `lambda-arch up --no-traffic` and every process seen in its tree."""

    process: subprocess.Popen[bytes]
    home: Path
    env: dict[str, str]
    dagster_port: int
    out_path: Path
    err_path: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    up_s: float = 0.0  # seconds from start to "lambda-arch is up"
    leftovers: list[str] = field(default_factory=list)  # what stop() had to kill

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dagster_port}"

    def output(self) -> str:
        return self.out_path.read_text() + self.err_path.read_text()

    def track(self) -> None:
        """Remember every process now in the tree (run workers come and go)."""
        try:
            root = psutil.Process(self.process.pid)
            self.seen.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            pass

    def wait_until_up(self) -> None:
        started = time.monotonic()
        deadline = started + UP_TIMEOUT_S
        while "lambda-arch is up" not in self.out_path.read_text():
            if self.process.poll() is not None:
                pytest.fail(f"up exited with {self.process.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"up was not up after {UP_TIMEOUT_S:.0f} s: {self.output()}")
            self.track()
            time.sleep(0.5)
        self.up_s = time.monotonic() - started
        self.track()

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data of one GraphQL request; GraphQLError on errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise GraphQLError(f"HTTP {error.code}: {error.read().decode()[:2000]}") from None
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"])[:2000])
        return answer["data"]

    def poll(
        self, what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 2.0
    ) -> Any:
        """Call probe until it returns something truthy (returned) or timeout_s passes (fail)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.track()
            if self.process.poll() is not None:
                pytest.fail(f"up exited with {self.process.returncode} while waiting for {what}")
            if result := probe():
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout_s:.0f} s")
            time.sleep(every_s)

    def stop(self) -> list[str]:
        """SIGTERM up, then SIGKILL by PID whatever of its tree still runs; return those."""
        self.track()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_S)
        leftovers = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    leftovers.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                    proc.kill()  # psutil checks the start time: never a recycled PID
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self.seen.values()), timeout=10)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        return leftovers


def stack_env(home: Path, broker_port: int, dagster_port: int, connect_port: int) -> dict[str, str]:
    """This environment without lambda-arch or Dagster settings, plus a fresh home and ports."""
    return isolated_env(
        {
            "LAMBDA_ARCH_HOME": str(home),
            "LAMBDA_ARCH_START_DATE": START_DATE,
            "LAMBDA_ARCH_BROKER_PORT": str(broker_port),
            "LAMBDA_ARCH_DAGSTER_PORT": str(dagster_port),
            "LAMBDA_ARCH_SPARK_CONNECT_PORT": str(connect_port),
            "LAMBDA_ARCH_TOPIC_PARTITIONS": "2",
            "LAMBDA_ARCH_SHUFFLE_PARTITIONS": "4",
        }
    )


@contextlib.contextmanager
def running_stack(tmp_path: Path, env: dict[str, str]) -> Iterator[Stack]:
    """`lambda-arch up --no-traffic` with `env` (stack_env's, say), up; stopped by PID on exit
    (the caller asserts what a clean stop means to it)."""
    home = Path(env["LAMBDA_ARCH_HOME"])
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "lambda_arch.cli", "up", "--no-traffic"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # its own process group: no terminal signal reaches it
        )
    running = Stack(process, home, env, int(env["LAMBDA_ARCH_DAGSTER_PORT"]), out_path, err_path)
    try:
        running.wait_until_up()
        yield running
    finally:
        running.leftovers = running.stop()
