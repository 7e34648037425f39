"""Serving layer assets (group `serving`): the store the CLI and the HTTP API answer from.

Each asset is a short story: bring its view of the serving store up to date with the lake
(`lambda_arch.serving.refresh.refresh_view`: changed batch days, new speed micro-batches, both
watermarks, speed rows the batch now covers pruned) and report what changed. No Spark: a
refresh reads Parquet with pyarrow, so it runs in a second or two and never waits for a JVM.
"""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from assets.speed import step_priority
from lambda_arch.serving import answers
from lambda_arch.serving.ranking import markdown_table
from lambda_arch.serving.refresh import refresh_view
from lambda_arch.serving.store import ServingStore, iso
from lambda_arch.views.spec import DISCOVERY, SESSIONS, TRENDING, ViewSpec
from resources import LambdaArchSettings

GROUP = "serving"
KINDS = {"sqlite", "python"}
TOP_WINDOW_MIN = 60


def _top_10(store: ServingStore, view: str) -> dict[str, object]:
    """The answer a user gets right now (no --as-of), as a markdown table."""
    if view == TRENDING.name:
        answer = answers.trending(store, limit=10)
        rows, columns = answer["titles"], ["rank", "title_id", "plays"]
    elif view == DISCOVERY.name:
        answer = answers.discovery(store)
        rows, columns = answer["sources"], ["discovery_source", "plays", "share"]
    else:
        return {}
    title = f"As of {answer['as_of']}, last {answer['window_minutes']} minutes, all countries\n\n"
    return {"top_10": MetadataValue.md(title + markdown_table(rows, columns))}


def _serving_asset(spec: ViewSpec, description: str):
    @asset(
        name=f"{spec.name}_serving",
        group_name=GROUP,
        deps=[AssetKey(spec.speed_query), AssetKey(spec.batch_table)],
        kinds=KINDS,
        # Right after its speed view in a speed run (assets/speed.py PRIORITY).
        op_tags=step_priority(spec.name),
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


trending_serving = _serving_asset(
    TRENDING,
    "Trending titles as served: batch counts before the batch watermark, speed counts after.",
)
discovery_serving = _serving_asset(
    DISCOVERY,
    "Plays and share per discovery source as served: batch before the watermark, speed after.",
)
sessions_serving = _serving_asset(
    SESSIONS,
    "Viewing sessions as served: batch sessions ending before the batch watermark, speed after.",
)

SERVING_ASSETS = [trending_serving, discovery_serving, sessions_serving]
