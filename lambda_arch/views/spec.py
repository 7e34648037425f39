"""One spec per view: its serving name, the speed query and table, the batch table, its columns.

The speed layer, the batch layer and the serving store all name a view's tables from here, so
a view is renamed (or added) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from lambda_arch.views import declarations
from lambda_arch.views.declarations import CountView
from lambda_arch.views.transforms import SESSION_COLUMNS


@dataclass(frozen=True)
class ViewSpec:
    """How one view maps onto the two layers and the serving store."""

    name: str  # the serving view (and API) name
    speed_query: str  # the speed layer's query: its table, checkpoint and state file
    batch_table: str  # the batch layer's Hive table
    columns: tuple[str, ...]  # the view's columns in the lake (without the batch's dt)
    key: str | None  # the ranked column of a count view; None for sessions
    time_column: str  # the column the merge splits at the batch watermark

    @property
    def batch_store(self) -> str:
        return f"{self.name}_batch"

    @property
    def speed_store(self) -> str:
        return f"{self.name}_speed"

    @property
    def rolled_up(self) -> tuple[str, ...]:
        """The minute tables that have an hourly roll-up (`<table>_hourly`): a count view's."""
        return () if self.key is None else (self.batch_store, self.speed_store)


def spec_of(view: CountView) -> ViewSpec:
    """A declared count view's tables: `<name>_speed`, `<name>_batch`, ranked by its last
    dimension, split at the batch watermark by minute."""
    return ViewSpec(
        view.name, f"{view.name}_speed", f"{view.name}_batch", view.columns, view.ranked, "minute"
    )


TRENDING = spec_of(declarations.TRENDING)
DISCOVERY = spec_of(declarations.DISCOVERY)
SESSIONS = ViewSpec(
    "sessions", "sessions_speed", "sessions_batch", SESSION_COLUMNS, None, "session_end"
)
VIEWS: dict[str, ViewSpec] = {spec.name: spec for spec in (TRENDING, DISCOVERY, SESSIONS)}
