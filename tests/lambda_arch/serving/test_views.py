"""Declared count views in the serving layer (CONTRACT section 9): the store's tables follow each
declaration, a refresh reads every view's lake tables, and every view's answer (country, window,
as-of, limit, where filters) equals a plain-Python count of the events the lake rows were made
from; trending and discovery answer byte for byte as before the views were generic."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.serving import answers
from lambda_arch.serving.refresh import pending_views, refresh_all
from lambda_arch.serving.store import ServingError, ServingStore, UnknownView, iso
from lambda_arch.views.declarations import (
    BUILT_IN,
    DEVICE_MIX,
    DISCOVERY,
    TRENDING,
    CountView,
    declared_views,
)
from tests.lambda_arch.serving.oracle import (
    ROLL_AS_OF,
    ROLL_BATCH,
    ROLL_WATERMARKS,
    ROLL_WINDOWS,
    rolled_store,
    utc,
)
from tests.lambda_arch.serving.views_lake import (
    BATCH_WATERMARK,
    SPEED_EVENTS,
    VIEWS_TOML,
    ViewOracle,
    hourly_sums,
    write_view,
)


def view_settings(tmp_path: Path) -> Settings:
    """A home whose views file declares VIEWS_TOML's views."""
    views_file = tmp_path / "views.toml"
    views_file.write_text(VIEWS_TOML)
    return Settings(
        LAMBDA_ARCH_HOME=str(tmp_path / "home"),
        LAMBDA_ARCH_START_DATE="2026-03-01",
        LAMBDA_ARCH_VIEWS_FILE=str(views_file),
    )


@pytest.fixture(scope="module")
def lake_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, ServingStore]:
    """Every declared view but trending and discovery written to the lake, the store refreshed."""
    settings = view_settings(tmp_path_factory.mktemp("views"))
    for view in declared_views(settings.views_file):
        if view not in (TRENDING, DISCOVERY):
            write_view(settings, view)
    store = ServingStore.from_settings(settings)
    refresh_all(settings, store)
    return settings, store


def custom(settings: Settings, name: str) -> CountView:
    return next(v for v in declared_views(settings.views_file) if v.name == name)


def filter_grid(view: CountView) -> list[dict[str, Any]]:
    """No filter, each filter dimension alone, and all of them at once."""
    values = {"country": "US", "device": "tv", "title_id": 3, "discovery_source": "search"}
    single = [{d: values[d]} for d in view.filters]
    return [{}, *single] + ([{d: values[d] for d in view.filters}] if len(single) > 1 else [])


@pytest.mark.parametrize("name", ["device_mix", "title_by_device", "source_by_device"])
def test_view_answers_equal_a_plain_recomputation(
    lake_store: tuple[Settings, ServingStore], name: str
) -> None:
    settings, store = lake_store
    view = custom(settings, name)
    oracle = ViewOracle()
    compared = 0
    for filters, as_of, window in itertools.product(filter_grid(view), ROLL_AS_OF, ROLL_WINDOWS):
        country = filters.get("country")
        where = [(d, str(v)) for d, v in filters.items() if d != "country"]
        for limit in (2, 1000):
            got = answers.view(
                store, name, country=country, as_of=as_of, window=window, limit=limit, where=where
            )
            want = oracle.rows(view, as_of, window, filters, limit)
            assert got["rows"] == want, (filters, as_of, window, limit)
            compared += 1
        assert list(got) == [
            "view",
            "country",
            "as_of",
            "window_minutes",
            "batch_watermark",
            "speed_watermark",
            "rows",
        ]
        assert got["view"] == name and got["country"] == country
        assert got["as_of"] == iso(as_of.replace(second=0, microsecond=0))
        assert got["batch_watermark"] == iso(BATCH_WATERMARK)
    assert compared == len(filter_grid(view)) * len(ROLL_AS_OF) * len(ROLL_WINDOWS) * 2
    # Without as_of: the minute after the newest event the speed layer counted.
    newest = max(e.event_time for e in SPEED_EVENTS)
    default = answers.view(store, name, limit=1000)
    end = newest.replace(second=0) + (utc(0, 1) - utc(0, 0))
    assert default["as_of"] == iso(end)
    assert default["rows"] == oracle.rows(view, end, 60, {}, 1000)


def test_the_rollups_of_every_view_sum_its_minutes(
    lake_store: tuple[Settings, ServingStore],
) -> None:
    settings, store = lake_store
    with closing(sqlite3.connect(store.path)) as connection:
        for view in declared_views(settings.views_file):
            for layer in ("batch", "speed"):
                table = f"{view.name}_{layer}"
                columns = ", ".join(view.columns)
                rows = connection.execute(f"SELECT {columns} FROM {table}").fetchall()
                got = connection.execute(f"SELECT * FROM {table}_hourly").fetchall()
                assert {tuple(r[:-1]): r[-1] for r in got} == hourly_sums(view, rows), table
                assert len(got) == len(hourly_sums(view, rows))
            if view not in (TRENDING, DISCOVERY):
                assert rows, view.name  # the speed rows from the watermark on
    assert pending_views(settings, store) == {}


def test_views_lists_every_declaration(lake_store: tuple[Settings, ServingStore]) -> None:
    _, store = lake_store
    listed = answers.views(store)["views"]
    assert [v["name"] for v in listed] == [
        "trending",
        "discovery",
        "device_mix",
        "title_by_device",
        "source_by_device",
    ]
    assert listed[3] == {
        "name": "title_by_device",
        "dimensions": ["country", "device", "title_id"],
        "ranked": "title_id",
        "events": ["play_start"],
        "form": "top",
        "description": "Titles ranked by plays, per country and device",
    }


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("nope", {}, "view: 'nope' is not a declared view"),
        ("title_by_device", {"where": [("member_id", "3")]}, "where: 'member_id' is not a dim"),
        ("title_by_device", {"where": [("title_id", "3")]}, "where: title_id is the dimension"),
        ("title_by_device", {"where": [("device", "fridge")]}, "where: device='fridge' is not"),
        ("title_by_device", {"where": [("device", "tv"), ("device", "web")]}, "filtered twice"),
        (
            "source_by_device",
            {"country": "US"},
            "country: view 'source_by_device' does not filter by country",
        ),
        ("device_mix", {"country": "us"}, "country: "),
        ("device_mix", {"window": 0}, "window: "),
        ("device_mix", {"limit": 1001}, "limit: "),
        ("trending", {"where": [("country", "USA")]}, "where: country='USA' is not"),
    ],
)
def test_bad_view_parameters_are_clear_errors(
    lake_store: tuple[Settings, ServingStore], name: str, kwargs: dict, message: str
) -> None:
    _, store = lake_store
    with pytest.raises(ServingError, match=message) as caught:
        answers.view(store, name, **kwargs)
    assert isinstance(caught.value, UnknownView) == (name == "nope")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("device=tv", ("device", "tv")),
        ("device:tv", ("device", "tv")),
        ("title_id=12", ("title_id", "12")),
        ("device=a:b", ("device", "a:b")),
        ("device:a=b", ("device", "a=b")),
        ("=tv", None),
        ("device", None),
        ("", None),
    ],
)
def test_where_is_dim_equals_or_colon_value(text: str, want: tuple[str, str] | None) -> None:
    if want is None:
        with pytest.raises(ServingError, match="where: "):
            answers.parse_where(text)
    else:
        assert answers.parse_where(text) == want


def test_trending_and_discovery_equal_their_views(
    lake_store: tuple[Settings, ServingStore],
) -> None:
    """The `trending` and `discovery` views answer what the trending and discovery commands do,
    as rows under the section 9 header (discovery's sources with a rank)."""
    store = ServingStore(lake_store[1].path.parent / "rolled.sqlite3")
    rolled_store(store.path, ROLL_BATCH, BATCH_WATERMARK)
    for as_of, country in itertools.product(ROLL_AS_OF, [None, "US"]):
        old = answers.trending(store, country=country, as_of=as_of, window=90, limit=5)
        new = answers.view(store, "trending", country=country, as_of=as_of, window=90, limit=5)
        assert new == {"view": "trending", **{k: v for k, v in old.items() if k != "titles"}} | {
            "rows": old["titles"]
        }
        old = answers.discovery(store, country=country, as_of=as_of, window=90)
        new = answers.view(store, "discovery", country=country, as_of=as_of, window=90, limit=10)
        assert [{k: v for k, v in r.items() if k != "rank"} for r in new["rows"]] == old["sources"]
        assert [r["rank"] for r in new["rows"]] == list(range(1, len(old["sources"]) + 1))


# The JSON of trending and discovery over the roll-up grid (4 countries x 8 as-of times x 7
# windows x 3 watermarks; trending at limits 1, 3 and 1000; plus the default answers where a
# batch watermark makes them independent of the clock), printed by
# the code of commit fa28956, before views were generic: its count and SHA-256.
BEFORE_GENERIC_VIEWS = (2692, "de1b15026bfb59f68330597dadacdc720718cf488f38c09617db7a1cc1e4e3cd")


def test_trending_and_discovery_json_is_byte_identical_to_before(tmp_path: Path) -> None:
    lines = []
    for n, watermark in enumerate(ROLL_WATERMARKS.values()):
        store = rolled_store(tmp_path / f"store{n}.sqlite3", ROLL_BATCH, watermark)
        for country, as_of, window in itertools.product(
            [None, "US", "BR", "FR"], ROLL_AS_OF, ROLL_WINDOWS
        ):
            for limit in (1, 3, 1000):
                answer = answers.trending(
                    store, country=country, as_of=as_of, window=window, limit=limit
                )
                lines.append(answers.dumps(answer))
            answer = answers.discovery(store, country=country, as_of=as_of, window=window)
            lines.append(answers.dumps(answer))
        if watermark is not None:  # else the default as-of time is now
            lines.append(answers.dumps(answers.trending(store)))
            lines.append(answers.dumps(answers.discovery(store)))
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert (len(lines), digest) == BEFORE_GENERIC_VIEWS


def test_a_store_of_before_opens_with_the_new_views_added(tmp_path: Path) -> None:
    """A store written with trending and discovery only (as fa28956 wrote them) opens with every
    declared view's tables, empty, and answers as before."""
    path = tmp_path / "store.sqlite3"
    rolled_store(path, ROLL_BATCH, BATCH_WATERMARK).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as old:
        for layer, suffix in itertools.product(("batch", "speed"), ("", "_hourly")):
            old.execute(f"DROP TABLE device_mix_{layer}{suffix}")
    before = answers.trending(ServingStore(path, (TRENDING,)), as_of=utc(1, 0, day=3))
    settings = view_settings(tmp_path)
    store = ServingStore(path, declared_views(settings.views_file))
    assert answers.trending(store, as_of=utc(1, 0, day=3)) == before
    assert before["titles"]
    for name in ("device_mix", "title_by_device", "source_by_device"):
        assert answers.view(store, name, as_of=utc(1, 0, day=3))["rows"] == []
    assert set(store.summary()) == {
        *(v.name for v in BUILT_IN),
        "title_by_device",
        "source_by_device",
        "sessions",
    }
    assert DEVICE_MIX.name in store.views


@pytest.mark.parametrize(
    ("name", "country", "where"),
    [
        ("title_by_device", None, []),
        ("title_by_device", "US", []),
        ("title_by_device", None, [("device", "tv")]),
        ("title_by_device", "BR", [("device", "web")]),
        ("device_mix", None, []),
        ("source_by_device", None, [("device", "tv")]),
    ],
)
def test_a_window_reads_one_rollup_range_per_hour_and_key(
    lake_store: tuple[Settings, ServingStore], name: str, country: str | None, where: list
) -> None:
    """Whatever its filters, an answer reads the roll-up's whole hours as one range of the index
    that leads with every filter dimension (each given a value or `*`): a day's window reads
    about 24 rows per key there, not every dimension value's."""
    _, store = lake_store
    statements: list[str] = []
    connection = store._connection()
    connection.set_trace_callback(statements.append)
    try:
        answers.view(store, name, country=country, where=where, window=1440, as_of=utc(12, 30))
    finally:
        connection.set_trace_callback(None)
    query = next(s for s in statements if "_hourly" in s)
    plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}")]
    view = store.count_view(name)
    hourly = [step for step in plan if "_hourly" in step]
    assert hourly, plan
    for step in hourly:
        index = f"_hourly_{'_'.join(view.filters)} (" if view.filters else " USING PRIMARY KEY"
        assert index in step, step
        for dimension in view.filters:
            assert f"{dimension}=?" in step, step
