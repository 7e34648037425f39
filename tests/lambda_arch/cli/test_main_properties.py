"""Hostile arguments to the answer commands: exit 0 or 2, one line on stderr, never a traceback
(CONTRACT section 6).

A property-based test (hypothesis) runs `trending`, `discovery`, `sessions` and `view NAME` through the
console entry point (`main`, inside click's CliRunner isolation) with any mix of their options,
each holding arbitrary text, odd unicode, huge integers or times out of range with offsets from
-14:00 to +14:00, over a store with data. The values a black-box fuzz of the HTTP API found
answered with 500 are pinned as examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lambda_arch.cli.main import main
from lambda_arch.serving.store import STORE_FILE
from tests.lambda_arch.serving.oracle import ROLL_BATCH, rolled_store, utc
from tests.lambda_arch.serving.test_api_properties import fill_sessions, offset_text

COMMANDS: dict[str, tuple[str, ...]] = {
    "trending": ("--country", "--window", "--as-of", "--limit"),
    "discovery": ("--country", "--window", "--as-of"),
    "sessions": ("--member", "--title", "--limit", "--after", "--after-title"),
    "view": ("--country", "--window", "--as-of", "--limit", "--where"),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A LAMBDA_ARCH_HOME whose serving store has plays and sessions, as the environment of
    every command run here (restored afterwards)."""
    home = tmp_path_factory.mktemp("cli-home")
    (home / "serving").mkdir()
    store = rolled_store(home / "serving" / STORE_FILE, ROLL_BATCH, utc(0, 0, day=3))
    fill_sessions(store)
    store.close()
    saved = {k: v for k, v in os.environ.items() if k.startswith("LAMBDA_ARCH_")}
    for name in saved:
        del os.environ[name]
    os.environ["LAMBDA_ARCH_HOME"] = str(home)
    yield home
    del os.environ["LAMBDA_ARCH_HOME"]
    os.environ.update(saved)


def run(args: list[str]) -> tuple[int, str, str]:
    """`lambda-arch ARGS` through the console entry point: (exit code, stdout, stderr)."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = main(args)
        return code, out.getvalue().decode(), err.getvalue().decode()


def assert_one_outcome(code: int, out: str, err: str) -> None:
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in out + err, err
    if code == 2:
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert out == "", out
    else:
        assert err == "" and out.strip(), (out, err)


times = st.builds(
    lambda moment, offset, zulu: (
        moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + ("Z" if zulu else offset_text(offset))
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.booleans(),
)
values = st.one_of(
    times,
    st.integers(min_value=-5, max_value=2000).map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["9223372036854775807", "9223372036854775808", "44641", "9" * 5000]),
    st.text(max_size=30),
    st.sampled_from(["", "-", "--json", "US", "us", "XX", "\u0000", "\udcff", "١٢", "NaN"]),
    st.sampled_from(["country=US", "country:BR", "device=tv", "title_id=3", "=", "device"]),
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    args = [command]
    if command == "sessions" and draw(st.booleans()):
        args += ["--member", draw(st.sampled_from(["7", "0"]))]
    if command == "view":
        args.append(
            draw(st.one_of(st.sampled_from(["device_mix", "trending", "discovery"]), values))
        )
    for option in draw(st.lists(st.sampled_from(COMMANDS[command]), max_size=5)):
        args += [option, draw(values)]
    if draw(st.booleans()):
        args.append("--json")
    return args


@settings(
    max_examples=int(os.environ.get("LAMBDA_ARCH_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=command_lines())
@example(args=["trending", "--as-of", "0001-01-01T00:00:00Z"])
@example(args=["trending", "--as-of", "9999-12-31T23:59:59-14:00"])
@example(args=["sessions", "--member", "9223372036854775808"])
@example(args=["sessions", "--member", "7", "--after-title", "3"])
@example(args=["discovery", "--window", "44641"])
@example(args=["view", "device_mix", "--where", "country=US", "--where", "country=BR"])
@example(args=["view", "trending", "--where", "title_id=3"])
def test_answer_commands_exit_0_or_2_with_one_line(home: Path, args: list[str]) -> None:
    assert_one_outcome(*run(args))


def test_the_fuzzed_values_are_one_line_errors(home: Path) -> None:
    for args, needle in (
        (["trending", "--as-of", "0001-01-01T00:00:00Z"], "--as-of"),
        (["trending", "--as-of", "9999-12-31T23:59:59-14:00"], "--as-of"),
        (["sessions", "--member", "9223372036854775808"], "--member"),
        (["trending", "--window", "44641"], "window"),
    ):
        code, out, err = run(args)
        assert_one_outcome(code, out, err)
        assert code == 2 and needle in err, err


def test_sessions_pages_on_the_command_line(home: Path) -> None:
    code, out, err = run(["sessions", "--member", "7", "--limit", "1000", "--json"])
    assert code == 0, err
    everything = json.loads(out)["sessions"]
    seen, args = [], ["sessions", "--member", "7", "--limit", "4", "--json"]
    while True:
        code, out, err = run(args)
        assert code == 0, err
        page = json.loads(out)
        seen += page["sessions"]
        if page["next"] is None:
            break
        cursor = page["next"]
        args = [*args[:6], "--after", cursor["after"], "--after-title", str(cursor["after_title"])]
    assert seen == everything and len(everything) > 4
    code, out, _ = run(["sessions", "--member", "7", "--limit", "4"])
    assert code == 0 and "more: --after " in out
