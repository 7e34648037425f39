"""`lambda-arch view NAME` and `lambda-arch views` (CONTRACT section 9): answers over a lake of
declared views equal a plain-Python count; misuse (an unknown view or dimension, the ranked
dimension in --where, a bad value, a bad views file) is one line on stderr and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambda_arch.cli.main import main
from lambda_arch.common.config import load_settings
from lambda_arch.serving.refresh import refresh_all
from lambda_arch.serving.store import ServingStore
from lambda_arch.views.declarations import declared_views
from tests.lambda_arch.cli.test_main import assert_one_line_error, run_cli
from tests.lambda_arch.serving.oracle import utc
from tests.lambda_arch.serving.views_lake import VIEWS_TOML, ViewOracle, write_view


@pytest.fixture
def views_home(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home declaring VIEWS_TOML's views, with device_mix and title_by_device in its lake and
    its store refreshed."""
    views_file = env_home.parent / "views.toml"
    views_file.write_text(VIEWS_TOML)
    monkeypatch.setenv("LAMBDA_ARCH_VIEWS_FILE", str(views_file))
    monkeypatch.setenv("LAMBDA_ARCH_START_DATE", "2026-03-01")
    settings = load_settings()
    for view in declared_views(settings.views_file):
        if view.name in ("device_mix", "title_by_device"):
            write_view(settings, view)
    store = ServingStore.from_settings(settings)
    refresh_all(settings, store)
    store.close()
    return env_home


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_view_with_where_equals_a_plain_recomputation(
    views_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    views = {v.name: v for v in declared_views(load_settings().views_file)}
    as_of = "2026-03-02T18:00:00Z"
    for name, options, filters in [
        ("device_mix", [], {}),
        ("device_mix", ["--country", "BR"], {"country": "BR"}),
        ("title_by_device", ["--where", "device=tv"], {"device": "tv"}),
        (
            "title_by_device",
            ["--where", "device:web", "--where", "country=DE", "--limit", "3"],
            {"device": "web", "country": "DE"},
        ),
        (
            "title_by_device",
            ["--country", "US", "--where", "device=tv"],
            {"country": "US"} | {"device": "tv"},
        ),
    ]:
        code, out, err = cli(
            ["view", name, "--as-of", as_of, "--window", "1440", *options, "--json"], capsys
        )
        assert code == 0 and err == "", err
        document = json.loads(out)
        limit = int(options[options.index("--limit") + 1]) if "--limit" in options else 10
        want = ViewOracle().rows(views[name], utc(18, 0), 1440, filters, limit)
        assert document["rows"] == want and want, (name, options)
        assert document["view"] == name and document["country"] == filters.get("country")
    code, out, _ = cli(
        ["view", "title_by_device", "--where", "device=tv", "--as-of", as_of], capsys
    )
    assert code == 0
    assert out.startswith("title_by_device where device=tv\nall countries, 60 min before")
    assert "rank  title_id  plays" in out


def test_views_lists_the_declarations(views_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["views", "--json"], capsys)
    assert code == 0
    listed = {v["name"]: v for v in json.loads(out)["views"]}
    assert list(listed) == [
        "trending",
        "discovery",
        "device_mix",
        "title_by_device",
        "source_by_device",
    ]
    assert listed["source_by_device"]["ranked"] == "discovery_source"
    assert listed["source_by_device"]["events"] == ["play_start", "play_heartbeat"]
    code, out, _ = cli(["views"], capsys)
    assert code == 0 and out.splitlines()[0].split() == [
        "name",
        "form",
        "ranked",
        "dimensions",
        "events",
        "description",
    ]
    assert any(
        line.split()[:3] == ["title_by_device", "top", "title_id"] for line in out.splitlines()
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["view", "nope"], ["view: 'nope' is not a declared view", "device_mix"]),
        (["view"], ["Missing argument 'NAME'"]),
        (["view", "device_mix", "--where", "colour=red"], ["'colour' is not a dimension"]),
        (["view", "device_mix", "--where", "device=tv"], ["device is the dimension", "ranks"]),
        (["view", "title_by_device", "--where", "device=fridge"], ["device='fridge'"]),
        (["view", "title_by_device", "--where", "device"], ["not DIM=VALUE"]),
        (["view", "title_by_device", "--where", "country=usa"], ["country='usa'"]),
        (["view", "source_by_device", "--country", "US"], ["does not filter by country"]),
        (["view", "device_mix", "--window", "44641"], ["window"]),
        (["view", "device_mix", "--limit", "0"], ["--limit"]),
        (["view", "device_mix", "--as-of", "noon"], ["--as-of"]),
    ],
)
def test_view_misuse_is_one_line(
    views_home: Path, args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(args, capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambda-arch"), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_bad_views_file_is_one_line_naming_the_view_and_field(tmp_path: Path) -> None:
    views_file = tmp_path / "views.toml"
    views_file.write_text(
        '[views.by_colour]\ndimensions = ["colour"]\nform = "top"\ndescription = "x"\n'
    )
    env = {"LAMBDA_ARCH_HOME": str(tmp_path / "home"), "LAMBDA_ARCH_VIEWS_FILE": str(views_file)}
    for args in (["views"], ["view", "device_mix"], ["trending"]):
        result = run_cli(args, env=env)
        assert_one_line_error(result, "LAMBDA_ARCH_VIEWS_FILE", "'by_colour'", "dimensions")
        assert result.stdout == ""


def test_help_lists_view_and_views() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    assert "  view " in result.stdout and "  views " in result.stdout
