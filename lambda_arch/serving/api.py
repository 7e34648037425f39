"""The HTTP API of the serving layer (CONTRACT section 7): `lambda-arch serve`.

Bodies are exactly the CLI's JSON (both call `lambda_arch.serving.answers`); a bad
parameter gets 400 with `{"error": "..."}`. FastAPI serves the OpenAPI description at
`/openapi.json` and pages at `/docs` and `/redoc`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lambda_arch.serving import answers
from lambda_arch.serving.store import ServingError, ServingStore, iso, parse_iso
from lambda_arch.views.spec import VIEWS

BAD_REQUEST = 400

# Query parameters (module level: FastAPI resolves the annotations by name).
Country = Annotated[
    str | None, Query(description="ISO 3166-1 alpha-2 code, upper case; all when absent")
]
Window = Annotated[
    int,
    Query(ge=1, le=answers.MAX_WINDOW_MIN, description="Window length W in minutes"),
]
AsOf = Annotated[
    str | None,
    Query(description="T, ISO-8601 with offset; default the speed (else batch) watermark"),
]


def _validation_message(error: RequestValidationError) -> str:
    """FastAPI's first validation error as one line naming the parameter."""
    first: dict[str, Any] = error.errors()[0]
    name = str(first.get("loc", ["", "parameter"])[-1])
    given = first.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    return f"{name}: {first.get('msg', 'invalid')}{shown}"


def create_app(store: ServingStore) -> FastAPI:
    """The API over one serving store."""
    app = FastAPI(
        title="lambda-arch serving API",
        description=(
            "Trending titles, discovery sources and viewing sessions from the lambda-arch "
            "serving layer: batch results before the batch watermark, speed results after it."
        ),
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error)}, status_code=BAD_REQUEST)

    @app.exception_handler(ServingError)
    async def _bad_value(_: Request, error: ServingError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=BAD_REQUEST)

    def as_of_time(as_of: str | None) -> Any:
        return parse_iso(as_of) if as_of is not None else None

    @app.get("/trending", summary="Titles ranked by plays in [T-W, T)")
    def trending(
        country: Country = None,
        window: Window = answers.DEFAULT_WINDOW_MIN,
        as_of: AsOf = None,
        limit: Annotated[int, Query(ge=1, le=answers.MAX_LIMIT)] = answers.DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        return answers.trending(
            store, country=country, window=window, as_of=as_of_time(as_of), limit=limit
        )

    @app.get("/discovery", summary="Plays and share per discovery source in [T-W, T)")
    def discovery(
        country: Country = None,
        window: Window = answers.DEFAULT_WINDOW_MIN,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        return answers.discovery(store, country=country, window=window, as_of=as_of_time(as_of))

    @app.get("/sessions", summary="A member's stitched viewing sessions")
    def sessions(
        member_id: Annotated[int, Query(ge=0)],
        title_id: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict[str, Any]:
        return answers.sessions(store, member_id=member_id, title_id=title_id)

    @app.get("/health", summary="Liveness, and the watermarks the answers stand on")
    def health() -> dict[str, Any]:
        views = {
            name: {
                "batch_watermark": iso(state.batch_watermark),
                "speed_watermark": iso(state.speed_watermark),
                "refreshed_at": state.refreshed_at,
            }
            for name in VIEWS
            for state in [store.view_state(name)]
        }
        return {"status": "ok", "views": views}

    return app


def run_server(store: ServingStore, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn handles both)."""
    import uvicorn

    uvicorn.run(create_app(store), host=host, port=port, log_level="warning", access_log=False)
