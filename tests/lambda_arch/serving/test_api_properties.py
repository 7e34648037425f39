"""Hostile requests to the HTTP API: never a 500, never a traceback (CONTRACT section 7).

A property-based test (hypothesis) sends every endpoint any mix of its parameters, each absent,
repeated or holding arbitrary text, odd unicode, invalid UTF-8, huge integers or times out of
range with offsets from -14:00 to +14:00, to the app in-process (an ASGI call: no server, no
socket); every answer is 200 with JSON or 400 with `{"error": "<parameter>: ..."}` naming a
parameter the request gave (or lacked). The requests a black-box fuzz found answered with 500
are pinned as examples, and checked once more against a real `lambda-arch serve` process.
Paging through a member's sessions returns each session exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lambda_arch.serving import answers
from lambda_arch.serving.api import create_app
from lambda_arch.serving.store import MICROS, ServingStore
from tests.lambda_arch.serving.oracle import ROLL_BATCH, rolled_store, utc
from tests.lambda_arch.serving.test_api import serve_process

VIEW_PARAMETERS = ("country", "window", "as_of", "limit", "where")
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "/trending": ("country", "window", "as_of", "limit"),
    "/discovery": ("country", "window", "as_of"),
    "/sessions": ("member_id", "title_id", "limit", "after", "after_title"),
    "/health": (),
    "/views": (),
    "/views/trending": VIEW_PARAMETERS,
    "/views/discovery": VIEW_PARAMETERS,
    "/views/device_mix": VIEW_PARAMETERS,
}
# The requests a black-box fuzz of `serve` got 500 for (issue 12).
FUZZ_500S = [
    "/trending?as_of=0001-01-01T00:00:00Z",
    "/trending?as_of=9999-12-31T23:59:59-14:00",
    "/sessions?member_id=9223372036854775808",
]
MEMBER = 7  # has SESSIONS sessions in the test store
SESSIONS = 23


def fill_sessions(store: ServingStore) -> None:
    """SESSIONS sessions of MEMBER over 4 titles, some starting at the same time (ties broken
    by title_id), on both sides of the batch watermark."""
    start = utc(0, 0, day=1)
    rows = []
    for n in range(SESSIONS):
        begin = start + timedelta(hours=3 * (n // 2))
        micros = int(begin.timestamp()) * MICROS
        rows.append((MEMBER, n % 4 + 10 * (n % 2), micros, micros + 60 * MICROS, 3, 1000))
    with store.writing() as connection:
        connection.executemany(
            "INSERT INTO sessions_batch VALUES ('2026-03-01', ?, ?, ?, ?, ?, ?)",
            [r for r in rows if r[3] < int(utc(0, 0, day=3).timestamp()) * MICROS],
        )
        connection.executemany(
            "INSERT INTO sessions_speed VALUES (?, ?, ?, ?, ?, ?)",
            [r for r in rows if r[3] >= int(utc(0, 0, day=3).timestamp()) * MICROS],
        )
        connection.execute(
            "INSERT INTO views (view, batch_watermark) VALUES ('sessions', ?)",
            (int(utc(0, 0, day=3).timestamp()),),
        )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ServingStore:
    store = rolled_store(
        tmp_path_factory.mktemp("api") / "store.sqlite3", ROLL_BATCH, utc(0, 0, day=3)
    )
    fill_sessions(store)
    return store


@pytest.fixture(scope="module")
def app(store: ServingStore) -> Any:
    return create_app(store)


def call(app: Any, path: str, query: bytes = b"") -> tuple[int, bytes]:
    """One GET through the ASGI app, in-process: (status, body). An exception the app lets
    out (what a server answers with 500) is returned as 500 with its text."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    try:
        asyncio.run(app(scope, receive, send))
    except Exception as error:  # the server would answer 500
        return 500, f"{type(error).__name__}: {error}".encode()
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


def assert_answered(status: int, body: bytes, names: set[str]) -> dict[str, Any]:
    """200 with JSON, or 400 with one error naming a parameter; never a traceback."""
    assert status in (200, 400), (status, body[:500])
    assert b"Traceback" not in body and b'File "' not in body, body[:500]
    document = json.loads(body)
    if status == 400:
        assert set(document) == {"error"}, document
        error = document["error"]
        assert isinstance(error, str) and "\n" not in error and len(error) < 500, error
        assert error.split(":", 1)[0] in names, (error, names)
    return document


# Values -----------------------------------------------------------------------------------------


def offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


times = st.builds(
    lambda moment, offset, zulu, fraction: (
        moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0").replace(" ", "0")
        + (f".{fraction}" if fraction else "")
        + ("Z" if zulu else offset_text(offset))
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.booleans(),
    st.one_of(st.just(""), st.from_regex(r"[0-9]{1,12}", fullmatch=True)),
)
integers = st.one_of(
    st.integers(min_value=-5, max_value=2000),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 44_640, 44_641, 10**4000]),
).map(str)
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(
        [
            "",
            " ",
            "US",
            "us",
            "XX",
            "ÜS",
            "\u0000",
            "١٢",
            "\U0001d7d9\U0001d7da",
            "1e3",
            "0x10",
            "NaN",
        ]
    ),
)
# Filters: well-formed ones on every dimension (valid values or not), and anything else.
wheres = st.one_of(
    st.builds(
        lambda dim, sep, value: f"{dim}{sep}{value}",
        st.sampled_from(["country", "device", "title_id", "discovery_source", "member_id", ""]),
        st.sampled_from([":", "="]),
        st.one_of(st.sampled_from(["US", "tv", "3", "search", "web", ""]), texts, integers),
    ),
    texts,
)
# Percent-encoded text, or raw bytes that need not be UTF-8 at all.
values = st.one_of(
    st.one_of(times, integers, texts, wheres).map(lambda v: quote(v, safe="").encode()),
    st.binary(max_size=20).map(lambda b: quote(b, safe="").encode()),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, set[str]]:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    names = ENDPOINTS[path]
    pairs: list[bytes] = []
    for name in draw(st.lists(st.sampled_from(names), max_size=6)) if names else []:
        pairs.append(name.encode() + b"=" + draw(values))
    if path == "/sessions" and draw(st.booleans()):
        pairs.append(b"member_id=" + draw(st.sampled_from([b"7", b"0", b"9223372036854775807"])))
    if draw(st.booleans()):
        pairs.append(b"unknown=" + draw(values))  # ignored
    return path, b"&".join(draw(st.permutations(pairs))), {*names}


@settings(
    max_examples=int(os.environ.get("LAMBDA_ARCH_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
@example(request=("/trending", b"as_of=0001-01-01T00:00:00Z", {"as_of"}))
@example(request=("/trending", b"as_of=9999-12-31T23:59:59-14:00", {"as_of"}))
@example(request=("/sessions", b"member_id=9223372036854775808", {"member_id"}))
@example(request=("/discovery", b"as_of=1970-01-01T00:00:00%2B14:00&window=44640", {"as_of"}))
@example(request=("/sessions", b"member_id=7&after_title=3", {"after_title"}))
@example(request=("/trending", b"window=" + b"9" * 5000, {"window"}))
@example(request=("/trending", b"as_of=1" + b"0" * 4000 + b"T12:00:00Z", {"as_of"}))
@example(request=("/views/device_mix", b"where=device:tv", {"where"}))
@example(request=("/views/device_mix", b"where=country%3DUS&where=country:BR", {"where"}))
@example(request=("/views/trending", b"where=title_id:99999999999999999999", {"where"}))
def test_no_request_gets_a_500_or_a_traceback(app: Any, request: tuple[str, bytes, set]) -> None:
    path, query, names = request
    status, body = call(app, path, query)
    assert_answered(status, body, names)


@settings(
    max_examples=int(os.environ.get("LAMBDA_ARCH_FUZZ_EXAMPLES", "300")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.one_of(
        st.text(min_size=1, max_size=30), st.sampled_from(["device_mix", "trending", "Trending"])
    )
)
@example(name="nope")
@example(name="a/b")
@example(name="..")
def test_any_view_name_is_answered_or_404(app: Any, name: str) -> None:
    """A declared view's name answers 200; any other, 404 with `{"error": "view: ..."}` (or
    `path: ...` when it cannot be one path segment); never a 500."""
    path = "/views/" + quote(name, safe="")
    status, body = call(app, path)
    assert status in (200, 404), (status, body[:300])
    assert b"Traceback" not in body
    document = json.loads(body)
    if status == 404:
        assert set(document) == {"error"} and document["error"].split(":")[0] in ("view", "path")
        assert name not in ("device_mix", "trending")
    else:
        assert document["view"] == name


@pytest.mark.parametrize(
    ("path", "query", "needle"),
    [
        ("/views/device_mix", b"where=device:tv", "where: device is the dimension"),
        ("/views/device_mix", b"where=title_id:3", "where: 'title_id' is not a dimension"),
        ("/views/device_mix", b"where=country:usa", "where: country='usa'"),
        ("/views/device_mix", b"where=country", "where: 'country' is not DIM=VALUE"),
        ("/views/device_mix", b"where=country:US&where=country:BR", "where: country is filtered"),
        ("/views/device_mix", b"country=US&where=country:BR", "where: country is filtered"),
        ("/views/trending", b"where=title_id:3", "where: title_id is the dimension"),
        ("/views/trending", b"window=0", "window:"),
        ("/views/trending", b"limit=1001", "limit:"),
        ("/views/trending", b"as_of=noon", "as_of:"),
        ("/views/discovery", b"country=XX", "country:"),
    ],
)
def test_bad_view_parameters_get_400_naming_them(
    app: Any, path: str, query: bytes, needle: str
) -> None:
    status, body = call(app, path, query)
    assert status == 400 and json.loads(body)["error"].startswith(needle), body


def test_views_list_and_answer(app: Any, store: ServingStore) -> None:
    status, body = call(app, "/views")
    assert status == 200
    assert [v["name"] for v in json.loads(body)["views"]] == ["trending", "discovery", "device_mix"]
    query = b"country=US&window=600&as_of=2026-03-02T03:00:00Z&limit=3"
    status, body = call(app, "/views/trending", query)
    trending = answers.trending(store, country="US", window=600, as_of=utc(3, 0), limit=3)
    assert status == 200 and json.loads(body) == {
        "view": "trending",
        **{k: v for k, v in trending.items() if k != "titles"},
        "rows": trending["titles"],
    }
    assert trending["titles"]
    # The same filter as where=, in both spellings.
    for where in (b"where=country:US", b"where=country%3DUS"):
        status, other = call(
            app, "/views/trending", where + b"&window=600&as_of=2026-03-02T03:00:00Z&limit=3"
        )
        assert status == 200 and json.loads(other) == json.loads(body)


def test_the_fuzzed_500s_are_400s_naming_the_parameter(app: Any) -> None:
    for request in FUZZ_500S:
        path, query = request.split("?", 1)
        status, body = call(app, path, query.encode())
        document = assert_answered(status, body, set(ENDPOINTS[path]))
        assert status == 400, document
        assert document["error"].startswith(query.split("=", 1)[0] + ":"), document


def test_the_ceiling_on_one_request(app: Any) -> None:
    """A 31-day window and the ends of the as_of range are answered; one minute more is not."""
    ok = [
        b"window=44640&as_of=2026-03-02T00:00:00Z",
        b"as_of=1970-01-01T00:00:00Z",
        b"as_of=9999-12-30T23:59:00Z",
    ]
    for query in ok:
        assert call(app, "/trending", query)[0] == 200, query
    for query, name in (
        (b"window=44641", "window"),
        (b"as_of=1969-12-31T23:59:59Z", "as_of"),
        (b"as_of=9999-12-31T00:00:00Z", "as_of"),
        (b"limit=1001", "limit"),
    ):
        status, body = call(app, "/trending", query)
        assert status == 400 and json.loads(body)["error"].startswith(f"{name}:"), body
    status, body = call(app, "/sessions", b"member_id=7&limit=1001")
    assert status == 400 and json.loads(body)["error"].startswith("limit:")


def test_sessions_page_by_session_start(app: Any, store: ServingStore) -> None:
    """Pages of 1, 5 and 100 sessions, following `next`, give every session once, in order."""
    everything = answers.sessions(store, member_id=MEMBER, limit=1000)
    assert len(everything["sessions"]) == SESSIONS and everything["next"] is None
    order = [(s["session_start"], s["title_id"]) for s in everything["sessions"]]
    assert order == sorted(order) and len(set(order)) == SESSIONS
    assert len({s["session_start"] for s in everything["sessions"]}) < SESSIONS  # ties exist
    assert answers.sessions(store, member_id=MEMBER)["sessions"] == everything["sessions"]
    for limit in (1, 5, 100):
        seen: list[dict] = []
        query = f"member_id={MEMBER}&limit={limit}"
        while True:
            status, body = call(app, "/sessions", query.encode())
            page = assert_answered(status, body, set())
            assert len(page["sessions"]) <= limit
            seen += page["sessions"]
            if page["next"] is None:
                break
            cursor = page["next"]
            query = (
                f"member_id={MEMBER}&limit={limit}&after={quote(cursor['after'])}"
                f"&after_title={cursor['after_title']}"
            )
        assert seen == everything["sessions"], limit
    # `after` alone: the sessions that start after it.
    first_start = everything["sessions"][0]["session_start"]
    later = answers.sessions(
        store, member_id=MEMBER, after=datetime.fromisoformat(first_start).astimezone(UTC)
    )
    assert later["sessions"] == [
        s for s in everything["sessions"] if s["session_start"] > first_start
    ]


def test_the_openapi_page_documents_limits_and_paging(app: Any) -> None:
    status, body = call(app, "/openapi.json")
    assert status == 200
    spec = json.loads(body)
    parameters = {p["name"]: p for p in spec["paths"]["/sessions"]["get"]["parameters"]}
    assert {"member_id", "title_id", "limit", "after", "after_title"} <= set(parameters)
    assert parameters["limit"]["schema"]["maximum"] == 1000
    assert "next" in spec["paths"]["/sessions"]["get"]["description"]
    window = {p["name"]: p for p in spec["paths"]["/trending"]["get"]["parameters"]}["window"]
    assert window["schema"]["maximum"] == 44_640
    assert "/views" in spec["paths"]
    view = spec["paths"]["/views/{name}"]["get"]
    assert {"name", "country", "window", "as_of", "limit", "where"} == {
        p["name"] for p in view["parameters"]
    }
    assert "404" in view["responses"]
    where = {p["name"]: p for p in view["parameters"]}["where"]
    assert "DIM:VALUE" in where["description"]


# One real server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(store: ServingStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lambda-arch serve` over the test store (a home whose serving/ holds it)."""
    home = tmp_path_factory.mktemp("serve-home")
    (home / "serving").mkdir()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{store.path}{suffix}")
        if source.exists():
            (home / "serving" / f"serving.sqlite3{suffix}").write_bytes(source.read_bytes())
    with serve_process(home) as base:
        yield base


def test_a_real_server_answers_the_fuzzed_500s_with_400(server: str) -> None:
    for request in [
        *FUZZ_500S,
        "/trending?window=%FF%FE",
        "/sessions?member_id=7&after=%00",
        "/views/device_mix?where=device:tv",
        "/views/device_mix?where=%FF%FE",
    ]:
        try:
            with urllib.request.urlopen(server + request, timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        path = request.split("?", 1)[0]
        document = assert_answered(status, body, set(ENDPOINTS[path]))
        assert status == 400, (request, document)
    try:
        urllib.request.urlopen(server + "/views/nope", timeout=10)
        pytest.fail("an unknown view was answered")
    except urllib.error.HTTPError as error:
        assert error.code == 404
        assert json.loads(error.read())["error"].startswith("view: 'nope' is not a declared view")
