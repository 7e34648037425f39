"""Options of the `lambda_kafka` source: parsed and checked once on the driver, and built from
Python values.

bootstrap.servers (or kafka.bootstrap.servers), topic, maxEventsPerBatch,
startingOffsets (earliest | latest | JSON {"0": 42, "1": -2}; -2 earliest, -1 latest),
endingOffsets (latest | JSON; batch only), startingTimestamp / endingTimestamp (epoch ms),
failOnDataLoss (true), chunkRows (rows per Arrow batch, 20000), checkCrcs (auto: on when a C
crc32c is installed), fetchTimeoutMs (60000), and `kafka.<setting>` passed to kafka-python
(e.g. kafka.security_protocol).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CHUNK_ROWS = 20_000
DEFAULT_FETCH_TIMEOUT_MS = 60_000
EARLIEST, LATEST = -2, -1  # the JSON offset markers Spark's Kafka source uses
# Appended to every data-loss error: how to read on anyway.
CONTINUE_HINT = (
    ". Set the source option failOnDataLoss=false to continue from the earliest available offset."
)


def _c_crc32c_available() -> bool:
    # kafka-python checks CRCs in pure Python unless the `crc32c` C package is installed; that
    # costs about 5x the read time, so "auto" checks only when it is cheap. Brokers validate
    # CRCs on produce and TCP protects the wire.
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return False
    return True


def _coerce(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    text = options.get(name.lower())
    if text is None or text == "":
        return default
    if str(text).strip().lower() not in ("true", "false"):
        raise ValueError(f"option {name} must be true or false, not {text!r}")
    return str(text).strip().lower() == "true"


def _positive_int(options: Mapping[str, str], name: str) -> int | None:
    text = options.get(name.lower())
    if text is None or str(text).strip() == "":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"option {name} must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"option {name} must be >= 1, not {value}")
    return value


def _timestamp(options: Mapping[str, str], name: str) -> int | None:
    text = options.get(name.lower())
    if text is None or str(text).strip() == "":
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"option {name} must be epoch milliseconds, not {text!r}") from None


def _offsets_spec(text: str | None, name: str, default: str) -> str | dict[int, int]:
    """earliest | latest, or a JSON object of partition -> offset (-2 earliest, -1 latest)."""
    spec = (text or default).strip()
    if spec.lower() in ("earliest", "latest"):
        return spec.lower()
    try:
        parsed = json.loads(spec)
        if not isinstance(parsed, dict):
            raise ValueError
        # Spark's Kafka source nests offsets under the topic name: accept that shape too.
        if len(parsed) == 1 and isinstance(next(iter(parsed.values())), dict):
            parsed = next(iter(parsed.values()))
        return {int(p): int(o) for p, o in parsed.items()}
    except (ValueError, TypeError):
        raise ValueError(
            f'option {name} must be earliest, latest or JSON like {{"0": 42, "1": -2}}, '
            f"not {spec!r}"
        ) from None


@dataclass(frozen=True)
class SourceOptions:
    """The source's options, parsed and checked once on the driver."""

    bootstrap: str
    topic: str
    max_events_per_batch: int | None = None
    starting_offsets: str | dict[int, int] = "earliest"
    ending_offsets: str | dict[int, int] = "latest"
    starting_timestamp: int | None = None
    ending_timestamp: int | None = None
    fail_on_data_loss: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    check_crcs: bool = False
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_MS / 1000
    kafka: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> SourceOptions:
        """Parse Spark's (case-insensitive) options; a bad value raises ValueError naming it."""
        options = {str(k).lower(): v for k, v in raw.items()}
        bootstrap = options.get("bootstrap.servers") or options.get("kafka.bootstrap.servers")
        if not bootstrap:
            raise ValueError("option bootstrap.servers is required (host:port[,host:port])")
        topic = options.get("topic") or options.get("subscribe")
        if not topic:
            raise ValueError("option topic is required")
        crcs = str(options.get("checkcrcs", "auto")).strip().lower()
        kafka = {
            k.removeprefix("kafka."): _coerce(str(v))
            for k, v in options.items()
            if k.startswith("kafka.") and k != "kafka.bootstrap.servers"
        }
        return cls(
            bootstrap=str(bootstrap),
            topic=str(topic),
            max_events_per_batch=_positive_int(options, "maxEventsPerBatch"),
            starting_offsets=_offsets_spec(
                options.get("startingoffsets"), "startingOffsets", "earliest"
            ),
            ending_offsets=_offsets_spec(options.get("endingoffsets"), "endingOffsets", "latest"),
            starting_timestamp=_timestamp(options, "startingTimestamp"),
            ending_timestamp=_timestamp(options, "endingTimestamp"),
            fail_on_data_loss=_flag(options, "failOnDataLoss", True),
            chunk_rows=_positive_int(options, "chunkRows") or DEFAULT_CHUNK_ROWS,
            check_crcs=_c_crc32c_available()
            if crcs == "auto"
            else _flag(options, "checkCrcs", False),
            fetch_timeout_s=(_positive_int(options, "fetchTimeoutMs") or DEFAULT_FETCH_TIMEOUT_MS)
            / 1000,
            kafka=kafka,
        )


def source_options(
    bootstrap: str, topic: str, *, max_events_per_batch: int | None = None, **extra: Any
) -> dict[str, str]:
    """Options for `.options(**...)` from Python values (e.g. from lambda_arch Settings)."""
    options = {"bootstrap.servers": bootstrap, "topic": topic}
    if max_events_per_batch is not None:
        options["maxEventsPerBatch"] = str(max_events_per_batch)
    for name, value in extra.items():
        if isinstance(value, dict):
            options[name] = json.dumps({str(k): v for k, v in value.items()})
        elif isinstance(value, bool):
            options[name] = "true" if value else "false"
        else:
            options[name] = str(value)
    return options
