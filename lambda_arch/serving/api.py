"""The HTTP API of the serving layer (CONTRACT section 7): `lambda-arch serve`.

Bodies are exactly the CLI's JSON (both call `lambda_arch.serving.answers`); a parameter
outside its domain gets 400 with `{"error": "<parameter>: ..."}`, a view name no declaration
gives 404 with `{"error": "view: ..."}`, a store that cannot be read 503; never a 500. Declared
views (CONTRACT section 9): `GET /views` lists them, `GET /views/{name}` answers one, its filters
as repeated `where=DIM:VALUE` (or `where=DIM=VALUE`, `=` URL-encoded as %3D). The work one request may cause has a ceiling (answers.py: a window of at
most 31 days, at most 1,000 rows, times in [1970-01-01, 9999-12-31)). FastAPI serves the
OpenAPI description at `/openapi.json` and pages at `/docs` and `/redoc`.
"""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lambda_arch.serving import answers
from lambda_arch.serving.store import ServingError, ServingStore, UnknownView, iso

BAD_REQUEST = 400
NOT_FOUND = 404
UNAVAILABLE = 503
_TIME_RANGE = f"[{iso(answers.MIN_TIME)}, {iso(answers.MAX_TIME)})"

# Query parameters (module level: FastAPI resolves the annotations by name).
Country = Annotated[
    str | None, Query(description="ISO 3166-1 alpha-2 code, upper case; all when absent")
]
Window = Annotated[
    int,
    Query(
        ge=1,
        le=answers.MAX_WINDOW_MIN,
        description=f"Window length W in minutes, 1 to {answers.MAX_WINDOW_MIN} (31 days)",
    ),
]
AsOf = Annotated[
    str | None,
    Query(
        description=(
            f"T, ISO-8601 with offset (Z or +HH:MM) in {_TIME_RANGE}, cut down to the minute. "
            "Default: the end of the newest minute the speed layer has counted (the batch "
            "watermark when the speed layer has counted nothing)"
        )
    ),
]
Id = Annotated[int, Query(ge=0, le=answers.MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=answers.MAX_LIMIT, description="Top K rows, 1 to 1000")]
Where = Annotated[
    list[str] | None,
    Query(
        description=(
            "A filter DIM:VALUE (or DIM=VALUE): only plays whose dimension DIM, one of the "
            "view's dimensions other than the ranked one, is VALUE; repeat for several, e.g. "
            "`?where=device:tv&where=country:US`. `country` may also be given as `country`."
        )
    ),
]


def _clipped(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _validation_message(error: RequestValidationError) -> str:
    """FastAPI's first validation error as one line naming the parameter (the value it got
    quoted and clipped: a hostile value is not echoed whole)."""
    first: dict[str, Any] = error.errors()[0]
    name = str(first.get("loc", ["", "parameter"])[-1])
    given = first.get("input")
    shown = f" (got {_clipped(given)})" if given is not None and not isinstance(given, dict) else ""
    message = " ".join(str(first.get("msg", "invalid")).split())
    return f"{name}: {message}{shown}"


def create_app(store: ServingStore) -> FastAPI:
    """The API over one serving store."""
    app = FastAPI(
        title="lambda-arch serving API",
        description=(
            "Trending titles, discovery sources, any declared count view and viewing sessions "
            "from the lambda-arch serving layer: batch results before the batch watermark, "
            "speed results after it."
        ),
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error)}, status_code=BAD_REQUEST)

    @app.exception_handler(ServingError)
    async def _bad_value(_: Request, error: ServingError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=BAD_REQUEST)

    @app.exception_handler(HTTPException)
    async def _no_route(_: Request, error: HTTPException) -> JSONResponse:
        # No such path (a view name with a slash in it, say), or method: {"error"} as well.
        return JSONResponse({"error": f"path: {error.detail}"}, status_code=error.status_code)

    @app.exception_handler(UnknownView)
    async def _unknown_view(_: Request, error: UnknownView) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=NOT_FOUND)

    @app.exception_handler(sqlite3.Error)
    async def _store_unavailable(_: Request, error: sqlite3.Error) -> JSONResponse:
        # A locked, missing or damaged store file: the server's trouble, not a crash.
        message = " ".join(str(error).split())
        return JSONResponse(
            {"error": f"the serving store cannot be read: {message}"}, status_code=UNAVAILABLE
        )

    def time_parameter(text: str | None, name: str) -> Any:
        return answers.parse_time_parameter(text, name) if text is not None else None

    @app.get("/trending", summary="Titles ranked by plays in [T-W, T)")
    def trending(
        country: Country = None,
        window: Window = answers.DEFAULT_WINDOW_MIN,
        as_of: AsOf = None,
        limit: Annotated[
            int, Query(ge=1, le=answers.MAX_LIMIT, description="Top K titles, 1 to 1000")
        ] = answers.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        return answers.trending(
            store,
            country=country,
            window=window,
            as_of=time_parameter(as_of, "as_of"),
            limit=limit,
        )

    @app.get("/discovery", summary="Plays and share per discovery source in [T-W, T)")
    def discovery(
        country: Country = None,
        window: Window = answers.DEFAULT_WINDOW_MIN,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        return answers.discovery(
            store, country=country, window=window, as_of=time_parameter(as_of, "as_of")
        )

    @app.get(
        "/views",
        summary="The declared count views",
        description="Each view's name, dimensions, ranked dimension, counted events, answer form "
        "(`top` or `shares`) and description (CONTRACT section 9).",
    )
    def list_views() -> dict[str, Any]:
        return answers.views(store)

    @app.get(
        "/views/{name}",
        summary="A declared count view's rows in [T-W, T)",
        description=(
            "The `rows` of the view's ranked dimension: `top` views by plays, ties by key "
            "ascending; `shares` views with each key's share of all the window's plays (4 "
            "decimals), most plays first, ties by name. Filters: `country` and repeated "
            '`where=DIM:VALUE`. An unknown view name gets 404 with `{"error": "view: ..."}`.'
        ),
        responses={NOT_FOUND: {"description": "No declared view has this name"}},
    )
    def one_view(
        name: str,
        country: Country = None,
        window: Window = answers.DEFAULT_WINDOW_MIN,
        as_of: AsOf = None,
        limit: Limit = answers.DEFAULT_LIMIT,
        where: Where = None,
    ) -> dict[str, Any]:
        store.count_view(name)  # an unknown view: 404, before the answer's own checks
        return answers.view(
            store,
            name,
            country=country,
            window=window,
            as_of=time_parameter(as_of, "as_of"),
            limit=limit,
            where=[answers.parse_where(text) for text in where or ()],
        )

    @app.get(
        "/sessions",
        summary="A member's stitched viewing sessions, a page at a time",
        description=(
            "Sessions ordered by (session_start, title_id), at most `limit` (default 100, at "
            "most 1000). The body's `next` is the cursor of the following page: pass its "
            "`after` and `after_title` to get it (null on the last page). `after` alone starts "
            "after every session that starts at or before it."
        ),
    )
    def sessions(
        member_id: Id,
        title_id: Annotated[int | None, Query(ge=0, le=answers.MAX_ID)] = None,
        limit: Annotated[
            int, Query(ge=1, le=answers.MAX_SESSIONS_LIMIT, description="Sessions per page")
        ] = answers.DEFAULT_SESSIONS_LIMIT,
        after: Annotated[
            str | None,
            Query(description=f"Cursor: a session_start (ISO-8601 with offset) in {_TIME_RANGE}"),
        ] = None,
        after_title: Annotated[
            int | None,
            Query(ge=0, le=answers.MAX_ID, description="Cursor: the title_id of that session"),
        ] = None,
    ) -> dict[str, Any]:
        return answers.sessions(
            store,
            member_id=member_id,
            title_id=title_id,
            limit=limit,
            after=time_parameter(after, "after"),
            after_title=after_title,
        )

    @app.get("/health", summary="Liveness, and the watermarks the answers stand on")
    def health() -> dict[str, Any]:
        views = {
            name: {
                "batch_watermark": iso(state.batch_watermark),
                "speed_watermark": iso(state.speed_watermark),
                "refreshed_at": state.refreshed_at,
            }
            for name in store.specs
            for state in [store.view_state(name)]
        }
        return {"status": "ok", "views": views}

    return app


def run_server(store: ServingStore, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn handles both)."""
    import uvicorn

    uvicorn.run(create_app(store), host=host, port=port, log_level="warning", access_log=False)
