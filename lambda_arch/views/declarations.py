"""Count views as declarations (CONTRACT section 9): a name, dimensions, counted event types, an
answer form and a description. Everything else (speed deltas, batch partitions, serving tables,
Dagster assets and checks, CLI and HTTP answers) is derived from the declaration.

Built in: `trending`, `discovery` and `device_mix`. More come from the TOML file named by
`LAMBDA_ARCH_VIEWS_FILE`, one table per view:

    [views.title_by_device]
    dimensions = ["device", "title_id"]     # the last one is ranked; the others filter
    events = ["play_start"]                 # optional, default ["play_start"]
    form = "top"                            # "top" (ranked by plays) or "shares"
    description = "Titles ranked by plays, per device"

A bad declaration raises `ViewDeclarationError`, whose message names the view and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lambda_arch.ingest.schema import COUNTRIES, DEVICES, DISCOVERY_SOURCES, EVENT_TYPES

Form = Literal["top", "shares"]
FORMS: tuple[str, ...] = ("top", "shares")
PLAY_START = "play_start"
# The event fields a view may count by (CONTRACT section 2), with their SQL type. Not event_id
# (one row per event), event_time (every view is per minute already) or position_ms.
DIMENSION_TYPES: dict[str, str] = {
    "country": "string",
    "title_id": "bigint",
    "member_id": "bigint",
    "device": "string",
    "discovery_source": "string",
    "event_type": "string",
}
# The values a string dimension may take (CONTRACT section 2), in a stable order; the bigint
# ones are ids from 0 to 2^63 - 1. The serving layer checks filters against them, the GX
# suites each view's rows.
DIMENSION_VALUES: dict[str, tuple[str, ...]] = {
    "country": tuple(sorted(COUNTRIES)),
    "device": DEVICES,
    "discovery_source": DISCOVERY_SOURCES,
    "event_type": EVENT_TYPES,
}
# The longest name a view may have: its tables are `<name>_batch_hourly` and alike.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_KEYS = {"dimensions", "events", "form", "description"}
# Names the product uses for other things: a view may not take them.
RESERVED_NAMES = frozenset({"sessions", "views", "health", "play_events", "quarantine"})


class ViewDeclarationError(ValueError):
    """A view declaration that does not fit; the message names the view and the field."""


@dataclass(frozen=True)
class CountView:
    """One declared count view: plays per minute and dimension values, answered as top-K or
    shares of its ranked (last) dimension, filtered by any other dimension."""

    name: str
    dimensions: tuple[str, ...]
    form: Form
    description: str
    event_types: tuple[str, ...] = (PLAY_START,)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def ranked(self) -> str:
        """The dimension an answer ranks (its rows' key); the others are filters."""
        return self.dimensions[-1]

    @property
    def filters(self) -> tuple[str, ...]:
        """The dimensions an answer may filter by (`--where DIM=VALUE`, `--country`)."""
        return self.dimensions[:-1]

    @property
    def columns(self) -> tuple[str, ...]:
        """The view's columns in the lake: minute, the dimensions, plays."""
        return ("minute", *self.dimensions, "plays")

    @property
    def spark_schema(self) -> str:
        """The DDL schema of `columns`, for reading speed deltas back."""
        dims = ", ".join(f"{d} {DIMENSION_TYPES[d]}" for d in self.dimensions)
        return f"minute timestamp, {dims}, plays bigint"

    def to_json(self) -> dict[str, Any]:
        """What `lambda-arch views` and `GET /views` say about the view."""
        return {
            "name": self.name,
            "dimensions": list(self.dimensions),
            "ranked": self.ranked,
            "events": list(self.event_types),
            "form": self.form,
            "description": self.description,
        }


def _fail(name: str, field: str, problem: str) -> ViewDeclarationError:
    return ViewDeclarationError(f"view {name!r}: {field}: {problem}")


def validate(view: CountView) -> None:
    """Raise ViewDeclarationError naming the view and the field when a declaration is bad."""
    name = view.name
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(
            str(name), "name", "must be a lower-case identifier of 1-40 characters [a-z0-9_]"
        )
    if name in RESERVED_NAMES:
        raise _fail(name, "name", f"is reserved ({', '.join(sorted(RESERVED_NAMES))})")
    dims = view.dimensions
    if not isinstance(dims, tuple) or not dims:
        raise _fail(name, "dimensions", "must be a non-empty list of event fields")
    for dim in dims:
        if dim not in DIMENSION_TYPES:
            raise _fail(
                name,
                "dimensions",
                f"{dim!r} is not a countable event field (one of {', '.join(DIMENSION_TYPES)})",
            )
    if len(set(dims)) != len(dims):
        raise _fail(name, "dimensions", "names a field twice")
    if view.form not in FORMS:
        raise _fail(name, "form", f"{view.form!r} is not one of {', '.join(FORMS)}")
    if not isinstance(view.description, str) or not view.description.strip():
        raise _fail(name, "description", "must be a non-empty string")
    types = view.event_types
    if not isinstance(types, tuple) or not types:
        raise _fail(name, "events", "must be a non-empty list of event types")
    for event_type in types:
        if event_type not in EVENT_TYPES:
            raise _fail(
                name, "events", f"{event_type!r} is not an event type ({', '.join(EVENT_TYPES)})"
            )
    if len(set(types)) != len(types):
        raise _fail(name, "events", "names an event type twice")


TRENDING = CountView(
    "trending",
    ("country", "title_id"),
    "top",
    "Titles ranked by plays in a window, per country or over all countries.",
)
DISCOVERY = CountView(
    "discovery",
    ("country", "discovery_source"),
    "shares",
    "Plays per discovery source (the row a play was started from) and its share of all plays.",
)
DEVICE_MIX = CountView(
    "device_mix",
    ("country", "device"),
    "shares",
    "Plays per device and its share of all plays.",
)
BUILT_IN: tuple[CountView, ...] = (TRENDING, DISCOVERY, DEVICE_MIX)


def _strings(name: str, field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(name, field, "must be a list of strings")
    return tuple(value)


def parse_views(document: Mapping[str, Any], source: str = "the views file") -> list[CountView]:
    """The views of a parsed TOML document (`[views.NAME]` tables)."""
    unknown = set(document) - {"views"}
    if unknown:
        raise ViewDeclarationError(
            f"{source}: unknown top-level key {sorted(unknown)[0]!r} (declare views as [views.NAME])"
        )
    tables = document.get("views", {})
    if not isinstance(tables, dict):
        raise ViewDeclarationError(f"{source}: 'views' must be a table of [views.NAME] tables")
    declared = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise _fail(name, "declaration", "must be a table ([views.NAME] with its keys)")
        extra = set(table) - _KEYS
        if extra:
            raise _fail(
                name, sorted(extra)[0], f"is not a key of a view ({', '.join(sorted(_KEYS))})"
            )
        for key in ("dimensions", "form", "description"):
            if key not in table:
                raise _fail(name, key, "is missing")
        if not isinstance(table["form"], str):
            raise _fail(name, "form", "must be a string")
        declared.append(
            CountView(
                name=name,
                dimensions=_strings(name, "dimensions", table["dimensions"]),
                form=table["form"],
                description=table["description"] if isinstance(table["description"], str) else "",
                event_types=_strings(name, "events", table.get("events", [PLAY_START])),
            )
        )
    return declared


def load_views_file(path: Path) -> list[CountView]:
    """The views declared in a TOML file; ViewDeclarationError for a missing or bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ViewDeclarationError(
            f"LAMBDA_ARCH_VIEWS_FILE: cannot read {path}: {error.strerror or error}"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ViewDeclarationError(f"LAMBDA_ARCH_VIEWS_FILE: {path} is not TOML: {error}") from None
    return parse_views(document, source=str(path))


def combine(built_in: Sequence[CountView], extra: Iterable[CountView]) -> tuple[CountView, ...]:
    """Built-in views then the declared ones, with names unique."""
    views = list(built_in)
    for view in extra:
        if any(view.name == other.name for other in views):
            raise _fail(view.name, "name", "is already a view's name")
        views.append(view)
    return tuple(views)


def declared_views(views_file: Path | None) -> tuple[CountView, ...]:
    """Every count view: the built-in ones and those of the views file (when set)."""
    return combine(BUILT_IN, load_views_file(views_file) if views_file is not None else ())


def views_or_built_in(
    views_file: Path | None,
) -> tuple[tuple[CountView, ...], ViewDeclarationError | None]:
    """The declared views, or the built-in ones and the error when the views file is bad (for
    the Dagster definitions, which must load whatever the file holds; runs then fail naming
    the error, as `declared_views` raises it)."""
    try:
        return declared_views(views_file), None
    except ViewDeclarationError as error:
        return BUILT_IN, error


__all__ = [
    "BUILT_IN",
    "DEVICE_MIX",
    "DIMENSION_TYPES",
    "DISCOVERY",
    "TRENDING",
    "CountView",
    "ViewDeclarationError",
    "declared_views",
    "load_views_file",
    "parse_views",
    "views_or_built_in",
]
