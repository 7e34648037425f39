"""The command line: every contract command exists; misuse is one line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_arch.cli.main import main
from lambda_arch.runtime.broker import free_port

CONTRACT_COMMANDS = ["up", "produce", "run", "trending", "discovery", "sessions", "status", "serve"]


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script in a real process, as a user runs it."""
    script = Path(sys.executable).parent / "lambda-arch"
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_every_contract_command() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    for command in CONTRACT_COMMANDS:
        assert f"  {command}" in result.stdout


@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert "Usage: lambda-arch" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["frobnicate"], ["No such command", "frobnicate"]),
        (["produce", "--rate", "-5"], ["--rate", "-5"]),
        (["produce", "--events", "many"], ["--events", "many"]),
        (["produce", "--from", "/no/such/file.csv"], ["/no/such/file.csv"]),
        (["produce", "--start", "yesterday"], ["--start", "ISO-8601"]),
        (["produce", "--start", "2026-01-01T00:00:00"], ["no UTC offset"]),
        (["produce", "--duplicates", "0.9"], ["--duplicates"]),
        (["trending", "--country", "us"], ["ISO 3166-1"]),
        (["trending", "--window", "0"], ["--window"]),
        (["trending", "--limit", "x"], ["--limit"]),
        (["discovery", "--as-of", "noon"], ["--as-of"]),
        (["sessions"], ["--member"]),
        (["sessions", "--member", "-1"], ["--member"]),
        (["serve", "--port", "99999"], ["--port"]),
        (["up", "--rate", "0"], ["--rate"]),
    ],
)
def test_usage_errors_are_one_line(
    args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lambda-arch")
    for needle in needles:
        assert needle in lines[0]
    assert captured.out == ""


@pytest.mark.parametrize(
    ("args", "key", "empty"),
    [
        (["trending", "--as-of", "2026-03-01T12:00:30Z"], "titles", []),
        (["discovery", "--country", "BR", "--window", "5"], "sources", []),
        (["sessions", "--member", "7"], "sessions", []),
    ],
)
def test_queries_on_a_new_home_answer_empty_json(
    args: list[str],
    key: str,
    empty: list,
    env_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*args, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document[key] == empty
    assert document["batch_watermark"] is None and document["speed_watermark"] is None
    if key == "titles":
        assert document["as_of"] == "2026-03-01T12:00:00Z" and document["window_minutes"] == 60


def test_queries_print_readable_tables(env_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trending", "--country", "US", "--as-of", "2026-03-01T12:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "US, 60 min before 2026-03-01T12:00:00Z" in out and "no plays" in out


def test_status_without_a_broker_still_answers(
    env_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    assert main(["status", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "no Kafka broker answered" in document["kafka"]["error"]
    assert document["batch"]["missing_days"] == [] and "trending" in document["serving"]
    assert "no Dagster instance" in document["dagster"]["error"]


def test_console_script_usage_error_has_no_traceback() -> None:
    assert_one_line_error(run_cli(["produce", "--rate", "fast"]), "--rate", "fast")


def test_bad_configuration_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli(
        ["produce", "--events", "1"],
        env={"LAMBDA_ARCH_HOME": str(tmp_path), "LAMBDA_ARCH_MAX_EVENTS_PER_BATCH": "lots"},
    )
    assert_one_line_error(result, "LAMBDA_ARCH_MAX_EVENTS_PER_BATCH", "'lots'")


def test_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        ["produce", "--events", "1", "--quiet"],
        env={
            "LAMBDA_ARCH_HOME": str(tmp_path),
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        },
    )
    assert_one_line_error(result, "no Kafka broker answered", "KAFKA_BOOTSTRAP_SERVERS")


def test_replay_of_unknown_format_is_one_line(tmp_path: Path, broker) -> None:
    source = tmp_path / "events.xml"
    source.write_text("<events/>")
    result = run_cli(
        ["produce", "--from", str(source), "--quiet"],
        env={
            "LAMBDA_ARCH_HOME": str(tmp_path),
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        },
    )
    assert_one_line_error(result, "cannot tell the format", ".csv")
