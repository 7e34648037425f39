"""One spec per view: the speed, batch and serving layers all name a view's tables from it."""

from __future__ import annotations

from pathlib import Path

from lambda_arch.batch import layer as batch
from lambda_arch.serving import store
from lambda_arch.speed import layer as speed
from lambda_arch.views.spec import DISCOVERY, SESSIONS, TRENDING, VIEWS
from lambda_arch.views.transforms import DISCOVERY_COLUMNS, SESSION_COLUMNS, TRENDING_COLUMNS


def test_specs_name_each_view_in_every_layer() -> None:
    assert list(VIEWS) == ["trending", "discovery", "sessions"]
    assert (TRENDING.speed_query, TRENDING.batch_table) == ("trending_speed", "trending_batch")
    assert (DISCOVERY.speed_query, DISCOVERY.batch_table) == ("discovery_speed", "discovery_batch")
    assert (SESSIONS.speed_query, SESSIONS.batch_table) == ("sessions_speed", "sessions_batch")
    assert TRENDING.columns == TRENDING_COLUMNS
    assert DISCOVERY.columns == DISCOVERY_COLUMNS
    assert SESSIONS.columns == SESSION_COLUMNS


def test_count_views_rank_a_key_and_roll_up_by_hour() -> None:
    assert (TRENDING.key, TRENDING.time_column) == ("title_id", "minute")
    assert (DISCOVERY.key, DISCOVERY.time_column) == ("discovery_source", "minute")
    assert TRENDING.rolled_up == ("trending_batch", "trending_speed")
    assert (TRENDING.batch_store, TRENDING.speed_store) == ("trending_batch", "trending_speed")
    # Sessions are not counted per minute: no key, no roll-up, split at their end.
    assert SESSIONS.key is None and SESSIONS.rolled_up == ()
    assert SESSIONS.time_column == "session_end"


def test_layers_use_the_specs() -> None:
    assert tuple(spec.speed_query for spec in VIEWS.values()) == (
        speed.TRENDING,
        speed.DISCOVERY,
        speed.SESSIONS,
    )
    assert tuple(spec.batch_table for spec in VIEWS.values()) == (
        batch.TRENDING_TABLE,
        batch.DISCOVERY_TABLE,
        batch.SESSIONS_TABLE,
    )
    for spec in VIEWS.values():
        assert batch.TABLE_COLUMNS[spec.batch_table] == spec.columns
    # The serving store keys its tables by the same specs (one per declared view).
    served = store.ServingStore(Path("unopened")).specs
    assert all(served[name] == spec for name, spec in VIEWS.items())
