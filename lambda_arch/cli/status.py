"""`lambda-arch status`: offsets and lag, watermarks of every layer, what the batch layer owes.

Everything here comes from the broker, the checkpoints and small state files: no Spark, no
Dagster (the CLI adds the latest materializations and checks from the Dagster instance).
"""

from __future__ import annotations

from typing import Any

from lambda_arch.batch import layer as batch
from lambda_arch.common.config import Settings
from lambda_arch.ingest.kafka_offsets import KafkaOffsetsError
from lambda_arch.runtime.broker import ServiceError, require_reachable
from lambda_arch.serving.store import ServingStore, iso
from lambda_arch.speed import layer as speed
from lambda_arch.speed.lag import measure_lag

# The layer whose work a sensor or schedule starts: while it fails, that layer stalls.
SENSOR_LAYERS = {
    "kafka_lag_sensor": "speed",
    "views_stream_sensor": "speed",
    "day_complete_sensor": "batch",
    "stale_partition_sensor": "batch",
    "nightly_batch_schedule": "batch",
    "serving_refresh_sensor": "serving",
}


def _kafka(settings: Settings) -> dict[str, Any]:
    checkpoints = speed.checkpoints_of(settings)
    try:
        require_reachable(settings.bootstrap_servers)
        lag = measure_lag(settings.bootstrap_servers, settings.topic, checkpoints)
    except (KafkaOffsetsError, ServiceError) as error:
        return {"topic": settings.topic, "error": str(error)}
    except (OSError, ValueError, IndexError) as error:
        # A damaged checkpoint (what stalls the lag sensor too): status must still answer.
        return {
            "topic": settings.topic,
            "error": f"cannot read the speed checkpoints in {settings.checkpoints_dir}: "
            f"{type(error).__name__}: {error}",
        }
    return {
        "topic": settings.topic,
        "bootstrap_servers": settings.bootstrap_servers,
        "end_offsets": {str(p): o for p, o in sorted(lag.end.items())},
        "lag": {query.query: query.total for query in lag.queries},
    }


def _speed(settings: Settings) -> dict[str, Any]:
    paths = speed.SpeedPaths.from_settings(settings)
    result: dict[str, Any] = {}
    for name in speed.QUERIES:
        state = speed.read_speed_state(paths, name) or {}
        result[name] = {
            "watermark": state.get("watermark"),
            "max_event_time": state.get("max_event_time"),
            "late_events_total": state.get("late_events_total", 0),
            "updated_at": state.get("updated_at"),
        }
    return result


def _batch(settings: Settings) -> dict[str, Any]:
    owed = batch.plan(settings)
    return {
        "landing_watermark": iso(owed.landing_watermark),
        "complete_days": len(owed.complete),
        "missing_days": [d.isoformat() for d in owed.missing],
        "stale_days": [d.isoformat() for d in owed.stale],
    }


def collect_status(settings: Settings) -> dict[str, Any]:
    """One JSON document: kafka, speed, batch and serving sections."""
    return {
        "home": str(settings.home),
        "kafka": _kafka(settings),
        "speed": _speed(settings),
        "batch": _batch(settings),
        "serving": ServingStore.from_settings(settings).summary(),
    }


def render_status(document: dict[str, Any]) -> str:
    """The status document as readable lines."""
    lines = [f"home {document['home']}"]
    kafka = document["kafka"]
    if "error" in kafka:
        lines.append(f"kafka: topic {kafka['topic']}: {kafka['error']}")
    else:
        total = sum(kafka["end_offsets"].values())
        lag = ", ".join(f"{query} {n}" for query, n in kafka["lag"].items())
        lines.append(f"kafka: topic {kafka['topic']}, {total} records; lag: {lag}")
    for name, state in document["speed"].items():
        lines.append(
            f"speed {name}: watermark {state['watermark'] or '-'}, "
            f"late events {state['late_events_total']}, updated {state['updated_at'] or '-'}"
        )
    owed = document["batch"]
    lines.append(
        f"batch: landing watermark {owed['landing_watermark'] or '-'}, "
        f"{owed['complete_days']} complete days, missing {owed['missing_days'] or '-'}, "
        f"stale {owed['stale_days'] or '-'}"
    )
    for name, view in document["serving"].items():
        lines.append(
            f"serving {name}: batch watermark {view['batch_watermark'] or '-'} "
            f"({view['batch_days']} days), speed watermark {view['speed_watermark'] or '-'}, "
            f"refreshed {view['refreshed_at'] or 'never'}"
        )
    dagster = document.get("dagster") or {}
    if "error" in dagster:
        lines.append(f"dagster: {dagster['error']}")
    for name, failing in (dagster.get("failing_sensors") or {}).items():
        layer = SENSOR_LAYERS.get(name)
        what = f"{layer} layer stalled" if layer else "automation failing"
        lines.append(f"{what}: {name} failing since {failing['since']}: {failing['error']}")
    for key, latest in (dagster.get("assets") or {}).items():
        shown = "never" if latest is None else f"{latest['at']} (run {latest['run_id'][:8]})"
        lines.append(f"asset {key}: last materialized {shown}")
    for name, check in (dagster.get("checks") or {}).items():
        shown = "not evaluated" if check is None else f"{check['status']} at {check['at']}"
        lines.append(f"check {name}: {shown}")
    return "\n".join(lines)
