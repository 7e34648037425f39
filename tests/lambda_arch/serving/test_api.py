"""The HTTP API in a real server process (`lambda-arch serve`) over a served pipeline's store: its
bodies equal the CLI's JSON, bad parameters get 400 with a message, health and OpenAPI pages,
and a port in use is refused."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lambda_arch.cli.main import main
from lambda_arch.runtime.broker import free_port
from tests.lambda_arch.serving.pipeline import Pipeline


@contextmanager
def serve_process(home: Path) -> Iterator[str]:
    """`lambda-arch serve` on a free port over `home` (LAMBDA_ARCH_HOME): its base URL once
    /health answers; stopped (SIGTERM) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_ARCH_")}
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "lambda-arch"), "serve", "--port", str(port)],
        env={**env, "LAMBDA_ARCH_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"lambda-arch serve did not start: {process.stderr.read()}")
            time.sleep(0.2)
    yield base
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.wait(timeout=20) in (0, -15)


@pytest.fixture(scope="module")
def api_server(served: Pipeline) -> Iterator[tuple[str, Pipeline]]:
    """(base URL, pipeline): `lambda-arch serve` on a free port over the served pipeline's home."""
    with serve_process(served.settings.home) as base:
        yield base, served


@pytest.fixture
def api(api_server: tuple[str, Pipeline], monkeypatch: pytest.MonkeyPatch) -> tuple[str, Pipeline]:
    """The server, with this process's settings pointed at the same home (for the CLI)."""
    for name in list(os.environ):
        if name.startswith("LAMBDA_ARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LAMBDA_ARCH_HOME", str(api_server[1].settings.home))
    return api_server


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)


@pytest.mark.parametrize(
    ("path", "args"),
    [
        ("/trending", ["trending"]),
        (
            "/trending?country=US&window=600&as_of=2026-03-02T03:00:00Z&limit=3",
            [
                "trending",
                "--country",
                "US",
                "--window",
                "600",
                "--as-of",
                "2026-03-02T03:00:00Z",
                "--limit",
                "3",
            ],
        ),
        (
            "/discovery?window=90&as_of=2026-03-02T00:30:00%2B00:00",
            ["discovery", "--window", "90", "--as-of", "2026-03-02T00:30:00+00:00"],
        ),
        ("/sessions?member_id={member}", ["sessions", "--member", "{member}"]),
        (
            "/sessions?member_id={member}&title_id={title}",
            ["sessions", "--member", "{member}", "--title", "{title}"],
        ),
    ],
)
def test_http_bodies_equal_the_cli_json(
    api, path: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    base, served = api
    # A member and title with sessions on both sides of the batch watermark.
    member, title = (
        sqlite3.connect(served.store.path)
        .execute(
            "SELECT b.member_id, b.title_id FROM sessions_batch b JOIN sessions_speed s "
            "USING (member_id, title_id) ORDER BY 1, 2 LIMIT 1"
        )
        .fetchone()
    )
    path = path.format(member=member, title=title)
    args = [arg.format(member=member, title=title) for arg in args]
    status, body = get(base + path)
    assert status == 200
    assert body == cli_json(args, capsys)
    assert body.get("titles") or body.get("sources") or body.get("sessions")


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("/trending?country=us", "country"),
        ("/trending?country=XX", "country"),
        ("/trending?window=0", "window"),
        ("/trending?window=abc", "window"),
        ("/trending?limit=0", "limit"),
        ("/trending?as_of=noon", "ISO-8601"),
        ("/discovery?as_of=2026-03-01T12:00:00", "offset"),
        ("/sessions", "member_id"),
        ("/sessions?member_id=-4", "member_id"),
    ],
)
def test_bad_parameters_get_400_with_a_message(api, query: str, needle: str) -> None:
    base, _ = api
    status, body = get(base + query)
    assert status == 400
    assert set(body) == {"error"} and needle in body["error"]


def test_health_and_openapi(api) -> None:
    base, _ = api
    status, health = get(f"{base}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["views"]["trending"]["batch_watermark"] == "2026-03-02T00:00:00Z"
    status, spec = get(f"{base}/openapi.json")
    assert status == 200
    assert {"/trending", "/discovery", "/sessions", "/health"} <= set(spec["paths"])
    with urllib.request.urlopen(f"{base}/docs", timeout=10) as page:
        assert page.status == 200 and b"swagger" in page.read().lower()


def test_serve_refuses_a_port_in_use(api, capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = api
    port = base.rsplit(":", 1)[1]
    assert main(["serve", "--port", port]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already in use" in err
