"""Count view declarations: built-ins, the TOML file, and errors that name the view and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_arch.views.declarations import (
    BUILT_IN,
    DEVICE_MIX,
    DISCOVERY,
    TRENDING,
    CountView,
    ViewDeclarationError,
    declared_views,
    load_views_file,
    parse_views,
)
from lambda_arch.views.spec import spec_of


def test_built_in_views_are_the_contracts_three() -> None:
    assert [v.name for v in BUILT_IN] == ["trending", "discovery", "device_mix"]
    assert TRENDING.columns == ("minute", "country", "title_id", "plays")
    assert (TRENDING.ranked, TRENDING.form) == ("title_id", "top")
    assert DISCOVERY.columns == ("minute", "country", "discovery_source", "plays")
    assert (DISCOVERY.ranked, DISCOVERY.form) == ("discovery_source", "shares")
    assert (DEVICE_MIX.dimensions, DEVICE_MIX.form) == (("country", "device"), "shares")
    assert DEVICE_MIX.spark_schema == (
        "minute timestamp, country string, device string, plays bigint"
    )
    assert spec_of(DEVICE_MIX).batch_table == "device_mix_batch"
    assert spec_of(DEVICE_MIX).speed_query == "device_mix_speed"


def test_a_views_file_adds_views_after_the_built_ins(tmp_path: Path) -> None:
    file = tmp_path / "views.toml"
    file.write_text(
        """
[views.title_by_device]
dimensions = ["country", "device", "title_id"]
form = "top"
description = "Titles per device"

[views.stops]
dimensions = ["discovery_source"]
events = ["play_stop", "play_heartbeat"]
form = "shares"
description = "Where stops and heartbeats come from"
"""
    )
    views = declared_views(file)
    assert [v.name for v in views] == [*(v.name for v in BUILT_IN), "title_by_device", "stops"]
    by_device = views[3]
    assert by_device.ranked == "title_id" and by_device.filters == ("country", "device")
    assert by_device.event_types == ("play_start",)
    assert views[4].event_types == ("play_stop", "play_heartbeat")
    assert declared_views(None) == BUILT_IN


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {"dimensions": ["colour"], "form": "top", "description": "x"},
            "'v': dimensions: 'colour'",
        ),
        ({"dimensions": [], "form": "top", "description": "x"}, "'v': dimensions: must be"),
        ({"dimensions": ["device"], "form": "pie", "description": "x"}, "'v': form: 'pie'"),
        ({"dimensions": ["device"], "form": "top", "description": " "}, "'v': description"),
        ({"dimensions": ["device"], "form": "top"}, "'v': description: is missing"),
        (
            {"dimensions": ["device"], "form": "top", "description": "x", "events": ["click"]},
            "'v': events: 'click'",
        ),
        (
            {"dimensions": ["device"], "form": "top", "description": "x", "colour": 1},
            "'v': colour: is not a key",
        ),
        ({"dimensions": "device", "form": "top", "description": "x"}, "'v': dimensions: must be"),
        (
            {"dimensions": ["device", "device"], "form": "top", "description": "x"},
            "'v': dimensions: names a field twice",
        ),
        (
            {"dimensions": ["event_time"], "form": "top", "description": "x"},
            "'v': dimensions: 'event_time'",
        ),
    ],
)
def test_a_bad_declaration_names_the_view_and_the_field(table: dict, expected: str) -> None:
    with pytest.raises(ViewDeclarationError, match=None) as error:
        parse_views({"views": {"v": table}})
    assert expected in str(error.value), str(error.value)


@pytest.mark.parametrize("name", ["Trending", "9lives", "has-dash", "sessions", "x" * 41])
def test_a_bad_name_is_refused(name: str) -> None:
    with pytest.raises(ViewDeclarationError, match="name"):
        CountView(name, ("device",), "top", "x")


def test_a_name_taken_by_a_built_in_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "views.toml"
    file.write_text('[views.trending]\ndimensions = ["device"]\nform = "top"\ndescription = "x"\n')
    with pytest.raises(ViewDeclarationError, match="'trending': name: is already"):
        declared_views(file)


def test_a_missing_or_broken_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ViewDeclarationError, match="LAMBDA_ARCH_VIEWS_FILE: cannot read"):
        load_views_file(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[views.x\n")
    with pytest.raises(ViewDeclarationError, match="is not TOML"):
        load_views_file(broken)
    stray = tmp_path / "stray.toml"
    stray.write_text("[view.x]\n")
    with pytest.raises(ViewDeclarationError, match="unknown top-level key 'view'"):
        load_views_file(stray)
