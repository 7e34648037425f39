"""Serving layer assets (group `serving`): the store the CLI and the HTTP API answer from.

Each asset is a short story: bring its view of the serving store up to date with the lake
(`lambda_arch.serving.refresh.refresh_view`: changed batch days, new speed micro-batches, both
watermarks, speed rows the batch now covers pruned) and report what changed. No Spark: a
refresh reads Parquet with pyarrow, so it runs in a second or two and never waits for a JVM.

One `<view>_serving` asset per declared count view (CONTRACT section 9: the built-in ones and
those of LAMBDA_ARCH_VIEWS_FILE), and `sessions_serving`. A views file that does not load must
not stop the code location from loading: the assets are then the built-in views' ones, and the
error is logged here and is the clear error of every run that opens the store.
"""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
    get_dagster_logger,
)

from assets.speed import PRIORITY
from lambda_arch.common.config import settings_or_defaults
from lambda_arch.serving import answers
from lambda_arch.serving.ranking import markdown_table
from lambda_arch.serving.refresh import refresh_view
from lambda_arch.serving.store import ServingStore, iso
from lambda_arch.views.declarations import (
    BUILT_IN,
    CountView,
    ViewDeclarationError,
    declared_views,
)
from lambda_arch.views.spec import SESSIONS, ViewSpec, spec_of
from resources import LambdaArchSettings

GROUP = "serving"
KINDS = {"sqlite", "python"}
TOP_WINDOW_MIN = 60
# A declared view's refresh runs after discovery's and before sessions' in a speed run, unless
# assets/speed.py gives its view a priority of its own.
DECLARED_PRIORITY = (PRIORITY["discovery"] + PRIORITY["sessions"]) // 2


def loadable_views() -> tuple[CountView, ...]:
    """The declared count views, or the built-in ones (the error logged) when the settings or
    the views file do not load."""
    settings, _ = settings_or_defaults()
    try:
        return declared_views(settings.views_file)
    except ViewDeclarationError as error:
        get_dagster_logger().error(
            f"LAMBDA_ARCH_VIEWS_FILE: {error}; serving assets only for the built-in views"
        )
        return BUILT_IN


def _top_10(store: ServingStore, view: str) -> dict[str, object]:
    """The answer a user gets right now (no --as-of), as a markdown table."""
    declared = store.views.get(view)
    if declared is None:
        return {}
    answer = answers.view(store, view, limit=10)
    columns = ["rank", declared.ranked, "plays"] + (["share"] if declared.form == "shares" else [])
    title = f"As of {answer['as_of']}, last {answer['window_minutes']} minutes, all countries\n\n"
    return {"top_10": MetadataValue.md(title + markdown_table(answer["rows"], columns))}


def _serving_asset(spec: ViewSpec, description: str):
    @asset(
        name=f"{spec.name}_serving",
        group_name=GROUP,
        deps=[AssetKey(spec.speed_query), AssetKey(spec.batch_table)],
        kinds=KINDS,
        # Right after its speed view in a speed run (assets/speed.py PRIORITY).
        op_tags={"dagster/priority": str(PRIORITY.get(spec.name, DECLARED_PRIORITY))},
        description=description,
    )
    def _asset(context: AssetExecutionContext, settings: LambdaArchSettings) -> MaterializeResult:
        config = settings.get()
        store = ServingStore.from_settings(config)
        report = refresh_view(config, store, spec.name)
        context.log.info(
            f"{spec.name}: {len(report.batch_days_loaded)} batch day(s) loaded, "
            f"{report.speed_batches_read} speed micro-batch(es) read, batch watermark "
            f"{iso(report.batch_watermark)}, speed watermark "
            f"{iso(report.speed_watermark)}"
        )
        return MaterializeResult(metadata={**report.metadata(), **_top_10(store, spec.name)})

    return _asset


def _count_serving_asset(view: CountView):
    return _serving_asset(
        spec_of(view),
        f"{view.description} As served: batch counts before the batch watermark, speed counts "
        f"after (dimensions {', '.join(view.dimensions)}; {view.form} of {view.ranked}).",
    )


COUNT_SERVING_ASSETS = {view.name: _count_serving_asset(view) for view in loadable_views()}
trending_serving = COUNT_SERVING_ASSETS["trending"]
discovery_serving = COUNT_SERVING_ASSETS["discovery"]
sessions_serving = _serving_asset(
    SESSIONS,
    "Viewing sessions as served: batch sessions ending before the batch watermark, speed after.",
)

SERVING_ASSETS = [*COUNT_SERVING_ASSETS.values(), sessions_serving]
