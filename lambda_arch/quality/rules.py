"""Data-quality rules of the lake and the views, as plain functions (no Dagster).

`assets/checks.py` turns them into Dagster asset checks; everything here runs on pandas or
Spark DataFrames and returns plain results (`Validation`, `Reconciliation`).

How rows reach Great Expectations: as a **pandas** DataFrame, never a Spark one. Runs may use
Spark Connect (`SPARK_REMOTE`), and GX's Spark datasource expects a classic DataFrame; a pandas
suite is also ~30x faster than the same suite through Spark (FACTS). The price is bringing rows
to the driver, so every frame is bounded before `toPandas()`:
- only the columns the expectations read, and only the run's days (partition pruning on `dt`),
  or for the unpartitioned raw table only the rows landed by its latest run (`ingested_at`);
- at most `max_rows` rows (LAMBDA_ARCH_QUALITY_MAX_ROWS, default 200,000): above that a seeded
  Bernoulli sample. Row rules (not-null, enums, ranges) are then judged on the sample, which
  finds any systematic fault; a single bad row in millions may slip through.
- Rules a sample cannot judge run exactly in Spark and are merged into the same result: the
  schema (from the DataFrame's types, which pandas would blur: a nullable bigint becomes
  float64) and uniqueness of event_id (a sample hides duplicates).

`import great_expectations` takes 4-6 s, so GX is imported inside `run_expectations` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from lambda_arch.ingest.schema import COUNTRIES, DEVICES, DISCOVERY_SOURCES, EVENT_TYPES
from lambda_arch.views.declarations import DIMENSION_TYPES, DIMENSION_VALUES, CountView

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame

SAMPLE_SEED = 7  # fixed: a rerun of a check samples the same rows
BAD_ROW_SAMPLE = 10  # bad rows shown per check
EXAMPLE_VALUES = 5  # unexpected values shown per expectation
DAY_COLUMN = "event_day"  # UTC date of event_time, derived for the clean table's day rule
SHARE_DECIMALS = 4  # CONTRACT section 3: discovery shares have 4 decimals
_MICROS_PER_DAY = 86_400_000_000


# Results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One expectation's verdict: how many rows broke it and a few of their values."""

    expectation: str
    column: str
    success: bool
    unexpected_count: int = 0
    unexpected_percent: float = 0.0
    examples: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Validation:
    """A suite's verdict over one frame: outcomes, rows in scope and validated, bad rows."""

    name: str
    rows: int  # rows in scope (before sampling)
    checked_rows: int  # rows validated (the sample, when sampled)
    outcomes: tuple[Outcome, ...]
    bad_rows: tuple[dict[str, Any], ...] = ()
    scope: str = ""

    @property
    def success(self) -> bool:
        return all(outcome.success for outcome in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    @property
    def sampled(self) -> bool:
        return self.checked_rows < self.rows

    def failures_markdown(self) -> str:
        """The failing expectations as a markdown table (a line when none failed)."""
        if not self.failed:
            return f"_all {len(self.outcomes)} expectations passed_"
        rows = [
            {
                "expectation": o.expectation,
                "column": o.column or "-",
                "unexpected": o.unexpected_count,
                "percent": f"{o.unexpected_percent:.3g}",
                "examples": _cell(", ".join(o.examples) or o.detail),
            }
            for o in self.failed
        ]
        return markdown(rows, ["expectation", "column", "unexpected", "percent", "examples"])

    def bad_rows_markdown(self) -> str:
        """A sample of rows that broke an expectation, as a markdown table."""
        if not self.bad_rows:
            return "_no bad rows_"
        columns = list(self.bad_rows[0])
        return markdown(list(self.bad_rows), columns)


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of rows (a line when empty); cells are escaped and shortened."""
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any, width: int = 80) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# Expectation suites (GX objects, built lazily: GX is slow to import) ----------------------------

# Required event fields (CONTRACT section 2); device and discovery_source get defaults, so a
# valid row never has them NULL either. position_ms is optional.
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "event_time",
    "member_id",
    "title_id",
    "country",
    "device",
    "discovery_source",
)
EVENT_CHECK_COLUMNS: tuple[str, ...] = (*REQUIRED_EVENT_COLUMNS, "position_ms")

# Expected Spark schemas, written out from the contract rather than imported from the code that
# creates the tables: a check should not agree with a bug by construction.
EVENT_SCHEMA: tuple[tuple[str, str], ...] = (
    ("event_id", "string"),
    ("event_type", "string"),
    ("event_time", "timestamp"),
    ("member_id", "bigint"),
    ("title_id", "bigint"),
    ("country", "string"),
    ("device", "string"),
    ("discovery_source", "string"),
    ("position_ms", "bigint"),
)
_KAFKA = (("topic", "string"), ("partition", "int"), ("offset", "bigint"))
RAW_SCHEMA: tuple[tuple[str, str], ...] = (
    *EVENT_SCHEMA,
    *_KAFKA,
    ("kafka_timestamp", "timestamp"),
    ("ingested_at", "timestamp"),
    ("dt", "string"),
    ("hour", "int"),
)
CLEAN_SCHEMA: tuple[tuple[str, str], ...] = (*EVENT_SCHEMA, *_KAFKA, ("dt", "string"))
TRENDING_SCHEMA: tuple[tuple[str, str], ...] = (
    ("minute", "timestamp"),
    ("country", "string"),
    ("title_id", "bigint"),
    ("plays", "bigint"),
    ("dt", "string"),
)
DISCOVERY_SCHEMA: tuple[tuple[str, str], ...] = (
    ("minute", "timestamp"),
    ("country", "string"),
    ("discovery_source", "string"),
    ("plays", "bigint"),
    ("dt", "string"),
)
SESSIONS_SCHEMA: tuple[tuple[str, str], ...] = (
    ("member_id", "bigint"),
    ("title_id", "bigint"),
    ("session_start", "timestamp"),
    ("session_end", "timestamp"),
    ("events", "bigint"),
    ("watched_ms", "bigint"),
    ("dt", "string"),
)


def event_expectations() -> list[Any]:
    """Rules every landed or clean event obeys: not-null, enums, ids and position >= 0."""
    import great_expectations.expectations as gxe

    rules: list[Any] = [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in REQUIRED_EVENT_COLUMNS]
    rules += [
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="device", value_set=list(DEVICES)),
        gxe.ExpectColumnValuesToBeInSet(
            column="discovery_source", value_set=list(DISCOVERY_SOURCES)
        ),
        gxe.ExpectColumnValuesToBeInSet(column="country", value_set=sorted(COUNTRIES)),
        gxe.ExpectColumnValueLengthsToBeBetween(column="event_id", min_value=1),
    ]
    rules += [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0)
        for c in ("member_id", "title_id", "position_ms")
    ]
    return rules


def clean_expectations() -> list[Any]:
    """Event rules plus: each row lies in its partition's day (dt = UTC date of event_time)."""
    import great_expectations.expectations as gxe

    return [
        *event_expectations(),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="dt", column_B=DAY_COLUMN),
    ]


def _count_rules(keys: Sequence[str], plays_min: int = 1) -> list[Any]:
    import great_expectations.expectations as gxe

    rules = [
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in (*keys, "plays")],
        # A bucket exists because something was counted: plays >= 1 (never negative or zero).
        gxe.ExpectColumnValuesToBeBetween(column="plays", min_value=plays_min),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["dt", *keys]),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="dt", column_B=DAY_COLUMN),
    ]
    if "country" in keys:
        rules.append(gxe.ExpectColumnValuesToBeInSet(column="country", value_set=sorted(COUNTRIES)))
    return rules


def view_schema(view: CountView) -> tuple[tuple[str, str], ...]:
    """A count view's batch table schema: minute, its dimensions, plays, dt."""
    dims = tuple((d, DIMENSION_TYPES[d]) for d in view.dimensions)
    return (("minute", "timestamp"), *dims, ("plays", "bigint"), ("dt", "string"))


def view_expectations(view: CountView) -> Callable[[], list[Any]]:
    """A count view's batch rules: one row per (minute, dimensions), plays >= 1, minute in
    its day, each dimension within its field's values (ids >= 0, known enums)."""

    def build() -> list[Any]:
        import great_expectations.expectations as gxe

        rules = _count_rules(("minute", *view.dimensions))
        for dim in view.dimensions:
            if dim in ("title_id", "member_id"):
                rules.append(gxe.ExpectColumnValuesToBeBetween(column=dim, min_value=0))
            elif dim in DIMENSION_VALUES and dim != "country":
                rules.append(
                    gxe.ExpectColumnValuesToBeInSet(
                        column=dim, value_set=list(DIMENSION_VALUES[dim])
                    )
                )
        return rules

    return build


def trending_expectations() -> list[Any]:
    """Per (minute, country, title): one row, plays >= 1, title_id >= 0, minute in its day."""
    import great_expectations.expectations as gxe

    return [
        *_count_rules(("minute", "country", "title_id")),
        gxe.ExpectColumnValuesToBeBetween(column="title_id", min_value=0),
    ]


def discovery_expectations() -> list[Any]:
    """Per (minute, country, source): one row, plays >= 1, a known source, minute in its day."""
    import great_expectations.expectations as gxe

    return [
        *_count_rules(("minute", "country", "discovery_source")),
        gxe.ExpectColumnValuesToBeInSet(
            column="discovery_source", value_set=list(DISCOVERY_SOURCES)
        ),
    ]


def sessions_expectations() -> list[Any]:
    """Sessions: end >= start, events >= 1, watched_ms >= 0, ids >= 0, ending in their day."""
    import great_expectations.expectations as gxe

    columns = ("member_id", "title_id", "session_start", "session_end", "events", "watched_ms")
    return [
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns],
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="session_end", column_B="session_start", or_equal=True
        ),
        gxe.ExpectColumnValuesToBeBetween(column="events", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="watched_ms", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="member_id", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="title_id", min_value=0),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["dt", "member_id", "title_id", "session_start"]
        ),
        # Sessions belong to the day of their last event (lambda_arch.batch.layer).
        gxe.ExpectColumnPairValuesToBeEqual(column_A="dt", column_B=DAY_COLUMN),
    ]


# Running a suite -------------------------------------------------------------------------------


def run_expectations(
    name: str,
    frame: pd.DataFrame,
    expectations: Sequence[Any],
    *,
    rows: int | None = None,
    extra: Iterable[Outcome] = (),
    extra_bad_rows: Iterable[Mapping[str, Any]] = (),
    scope: str = "",
) -> Validation:
    """Validate a pandas frame with GX (ephemeral context) and map the result to a Validation.

    `rows` is the size of the scope the frame was sampled from (default: the frame's length);
    `extra` outcomes (rules judged exactly in Spark) join the GX ones. Bad rows are taken from
    the indexes GX reports for the failing expectations (its first 20 per expectation).
    """
    outcomes: list[Outcome] = []
    bad_index: list[Any] = []
    if len(frame.columns) and expectations:
        results = _gx_validate(name, frame, expectations)
        for result in results:
            outcome, indexes = _outcome(result)
            outcomes.append(outcome)
            bad_index += [i for i in indexes if i not in bad_index]
    outcomes += list(extra)
    bad_rows = [_plain_row(frame.loc[i]) for i in bad_index[:BAD_ROW_SAMPLE]]
    bad_rows += [dict(row) for row in extra_bad_rows]
    return Validation(
        name=name,
        rows=len(frame) if rows is None else rows,
        checked_rows=len(frame),
        outcomes=tuple(outcomes),
        bad_rows=tuple(bad_rows[:BAD_ROW_SAMPLE]),
        scope=scope,
    )


_GX_CONTEXT: Any = None


def _gx_context() -> Any:
    """One ephemeral GX context per process (each new one makes a temporary docs folder)."""
    global _GX_CONTEXT
    if _GX_CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        # No usage statistics from checks: the context's own setting, not GX_ANALYTICS_ENABLED
        # in the process environment. (GX 1.24 ships no analytics client at all; this keeps
        # it off should a release bring one back.)
        context.enable_analytics(False)
        # Progress bars belong to a terminal, not to Dagster's captured logs.
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GX_CONTEXT = context
    return _GX_CONTEXT


def _gx_validate(name: str, frame: pd.DataFrame, expectations: Sequence[Any]) -> list[Any]:
    import great_expectations as gx

    context = _gx_context()
    source = context.data_sources.add_or_update_pandas(f"{name}_source")
    asset = source.add_dataframe_asset(f"{name}_{len(source.assets)}")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame}
    )
    # Expectations are not registered in the context: a suite of this validation only.
    suite = gx.ExpectationSuite(name=f"{name}_suite", expectations=list(expectations))
    result = batch.validate(suite, result_format={"result_format": "SUMMARY"})
    return list(result.results)


def _outcome(result: Any) -> tuple[Outcome, list[Any]]:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column") or ", ".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
    )
    if not column and "column_list" in kwargs:
        column = ", ".join(kwargs["column_list"])
    details = result.result or {}
    detail = ""
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = str(result.exception_info.get("exception_message"))
    elif "observed_value" in details and not result.success:
        detail = f"observed {details['observed_value']}"
    examples = tuple(_cell(v, 40) for v in (details.get("partial_unexpected_list") or []))
    outcome = Outcome(
        expectation=config.type,
        column=str(column),
        success=bool(result.success),
        unexpected_count=int(details.get("unexpected_count") or 0),
        unexpected_percent=float(details.get("unexpected_percent") or 0.0),
        examples=tuple(dict.fromkeys(examples))[:EXAMPLE_VALUES],
        detail=detail,
    )
    indexes = [] if result.success else list(details.get("partial_unexpected_index_list") or [])
    return outcome, indexes


def _plain_row(row: Any) -> dict[str, Any]:
    return {str(k): (None if _is_missing(v) else v) for k, v in row.to_dict().items()}


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# Spark helpers: bounded frames and rules judged exactly -----------------------------------------


def utc_day(column: Column) -> Column:
    """yyyy-MM-dd of a timestamp in UTC, by arithmetic on epoch micros (any session time zone)."""
    from pyspark.sql import functions as F

    micros = F.unix_micros(column)
    days = F.floor(micros / F.lit(_MICROS_PER_DAY)).cast("int")
    return F.date_from_unix_date(days).cast("string")


def bounded_pandas(
    frame: DataFrame, max_rows: int, *, seed: int = SAMPLE_SEED
) -> tuple[pd.DataFrame, int]:
    """(rows as pandas, rows in scope): all rows up to max_rows, else a seeded sample of them.

    A Bernoulli sample with 10% head room, then capped: it stays within max_rows and is close to
    it, at the cost of one count job.
    """
    total = frame.count()
    if total > max_rows:
        fraction = min(1.0, max_rows * 1.1 / total)
        frame = frame.sample(withReplacement=False, fraction=fraction, seed=seed).limit(max_rows)
    return frame.toPandas(), total


def schema_outcome(
    actual: Sequence[tuple[str, str]], expected: Sequence[tuple[str, str]]
) -> Outcome:
    """Exact column names and Spark types (`DataFrame.dtypes`) against the expected schema."""
    have = {name: kind for name, kind in actual}
    problems = [
        f"{name}: missing" if name not in have else f"{name}: {have[name]}, expected {kind}"
        for name, kind in expected
        if have.get(name) != kind
    ]
    wanted = {name for name, _ in expected}
    problems += [f"{name}: unexpected column" for name in have if name not in wanted]
    return Outcome(
        expectation="expect_spark_schema_to_match",
        column="",
        success=not problems,
        unexpected_count=len(problems),
        unexpected_percent=100.0 * len(problems) / max(len(expected), 1),
        detail="; ".join(problems),
    )


def duplicates_outcome(
    frame: DataFrame, keys: Sequence[str], *, sample: int = BAD_ROW_SAMPLE
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Uniqueness of `keys` over the whole frame (exact, in Spark): repeated keys and examples."""
    from pyspark.sql import functions as F

    repeated = frame.groupBy(*keys).agg(F.count(F.lit(1)).alias("copies")).where("copies > 1")
    stats = repeated.agg(F.count(F.lit(1)).alias("keys"), F.sum("copies").alias("rows")).first()
    keys_repeated = int(stats["keys"] or 0) if stats else 0
    rows = [
        row.asDict() for row in repeated.orderBy(F.desc("copies"), *keys).limit(sample).collect()
    ]
    total = frame.count() if keys_repeated else 0
    outcome = Outcome(
        expectation="expect_compound_columns_to_be_unique (exact, Spark)",
        column=", ".join(keys),
        success=keys_repeated == 0,
        unexpected_count=int(stats["rows"] or 0) if stats else 0,
        unexpected_percent=100.0 * (int(stats["rows"] or 0) if stats else 0) / max(total, 1),
        examples=tuple(_cell(row[keys[-1]], 40) for row in rows[:EXAMPLE_VALUES]),
    )
    return outcome, rows


def share_outcome(
    frame: pd.DataFrame,
    decimals: int = SHARE_DECIMALS,
    filters: Sequence[str] = ("country",),
) -> Outcome:
    """Shares per (dt, minute, filter dimensions) sum to 1 within rounding (discovery's
    filters: country).

    share = round(plays / total, 4) per source; each rounding moves a share by at most half a
    unit of the last decimal, so the sum may miss 1 by n_sources * 0.00005 (plus float noise).
    A bucket with a NULL, zero or negative count breaks it.
    """
    keys = ["dt", "minute", *filters]
    if frame.empty:
        return Outcome("expect_discovery_shares_to_sum_to_one", "plays", True)
    plays = frame["plays"].astype("float64")
    totals = plays.groupby([frame[k] for k in keys]).transform("sum")
    shares = (plays / totals).round(decimals)
    grouped = shares.groupby([frame[k] for k in keys])
    sums = grouped.sum(min_count=1)
    sizes = grouped.size()
    tolerance = sizes * (0.5 * 10**-decimals) + 1e-9
    bad = sums[~((sums - 1.0).abs() <= tolerance)]
    return Outcome(
        expectation="expect_discovery_shares_to_sum_to_one",
        column="plays",
        success=bad.empty,
        unexpected_count=len(bad),
        unexpected_percent=100.0 * len(bad) / max(len(sums), 1),
        examples=tuple(
            f"{' '.join(str(x) for x in k[1:])}: {v}" for k, v in list(bad.items())[:EXAMPLE_VALUES]
        ),
    )


# Quarantine ratio -------------------------------------------------------------------------------

OK, WARN, ERROR = "ok", "warn", "error"


def quarantine_level(ratio: float, warn_ratio: float, error_ratio: float) -> str:
    """ok at or below warn_ratio, warn above it, error above error_ratio."""
    if ratio > error_ratio:
        return ERROR
    if ratio > warn_ratio:
        return WARN
    return OK


def ratio(part: int, whole: int) -> float:
    """part / whole rounded to 6 decimals; 0.0 for an empty whole."""
    return round(part / whole, 6) if whole else 0.0


# The lambda invariant: speed counts against batch counts ----------------------------------------

BUCKET_KEYS: tuple[str, ...] = ("minute", "country", "title_id")
_TOTALS = ("batch", "speed", "diff")


@dataclass(frozen=True)
class Reconciliation:
    """Speed against batch plays over the buckets both layers have settled.

    Per bucket, diff = batch - speed. The speed layer only ever *drops* events (late ones),
    both count an event_id once, so with both layers at the same Kafka offsets every diff is
    >= 0 and their sum is at most the speed layer's late events. When the two read different
    amounts of the topic, each record one layer read and the other did not moves the sum by at
    most one: that is the allowance on each side.
    """

    buckets: int
    batch_plays: int
    speed_plays: int
    missing_in_speed: int  # sum of positive diffs (batch counted, speed did not)
    missing_in_batch: int  # sum of negative diffs, as a positive number
    late_events_total: int
    landing_ahead: int  # records landed for the batch layer that the speed layer has not read
    speed_ahead: int  # records the speed layer read that have not landed
    offenders: tuple[dict[str, Any], ...] = field(default=())
    buckets_differing: int = 0

    @property
    def allowed_missing_in_speed(self) -> int:
        return self.late_events_total + self.landing_ahead

    @property
    def passed(self) -> bool:
        return (
            self.missing_in_speed <= self.allowed_missing_in_speed
            and self.missing_in_batch <= self.speed_ahead
        )

    def summary(self) -> str:
        verdict = "explained" if self.passed else "NOT explained"
        return (
            f"{self.buckets} buckets, {self.buckets_differing} differ: batch - speed = "
            f"+{self.missing_in_speed} (allowed {self.allowed_missing_in_speed}: "
            f"{self.late_events_total} late + {self.landing_ahead} unread), "
            f"-{self.missing_in_batch} (allowed {self.speed_ahead} not landed): {verdict}"
        )

    def offenders_markdown(self) -> str:
        keys = list(self.offenders[0]) if self.offenders else [*BUCKET_KEYS]
        columns = [*[k for k in keys if k not in _TOTALS], *_TOTALS]
        return markdown(list(self.offenders), columns) if self.offenders else "_no differences_"


def settled_cutoff(speed_watermark: datetime) -> datetime:
    """Buckets before this minute are settled in the speed layer: the watermark has passed
    their end, so any event of theirs still to come is late and dropped, never counted."""
    moment = speed_watermark.astimezone(UTC)
    return moment.replace(second=0, microsecond=0)


def covered_range(
    days: Sequence[date], speed_watermark: datetime
) -> list[tuple[datetime, datetime]]:
    """Half-open minute ranges covered by both layers: each day, cut at the settled cutoff."""
    cutoff = settled_cutoff(speed_watermark)
    ranges = []
    for day in sorted(set(days)):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = min(start + timedelta(days=1), cutoff)
        if end > start:
            ranges.append((start, end))
    return ranges


def covered_spans(
    ranges: Sequence[tuple[datetime, datetime]],
) -> list[tuple[str, datetime, datetime]]:
    """Ranges merged where they overlap or touch, then cut at UTC midnights: (yyyy-MM-dd,
    start, end) pieces, disjoint, at most one per day."""
    merged: list[list[datetime]] = []
    for start, end in sorted((s.astimezone(UTC), e.astimezone(UTC)) for s, e in ranges):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces = []
    for start, end in merged:
        while start < end:
            midnight = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
            piece_end = min(end, midnight)
            pieces.append((start.date().isoformat(), start, piece_end))
            start = piece_end
    return pieces


def bucket_differences(
    batch: DataFrame,
    speed: DataFrame,
    ranges: Sequence[tuple[datetime, datetime]],
    keys: Sequence[str] = BUCKET_KEYS,
) -> DataFrame:
    """Per bucket of the covered ranges: the bucket's `keys` (a count view's minute and
    dimensions; trending's by default), batch, speed, diff.

    `batch` and `speed` have the view's columns (keys, plays). The ranges
    are a small table joined on the bucket's UTC day, not one condition per range: an OR of a
    condition per day nests deeper with every day, and Spark Connect refuses a plan nested
    deeper than its protobuf limit (a 215-day backfill failed so).
    """
    from pyspark.sql import functions as F

    spark = batch.sparkSession
    pieces = covered_spans(ranges)
    if not pieces:
        fields = batch.select(*keys).schema.fields
        typed = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in fields)
        return spark.createDataFrame([], f"{typed}, batch bigint, speed bigint, diff bigint")
    covered = spark.createDataFrame(pieces, "__day string, __start timestamp, __end timestamp")

    def plays(frame: DataFrame, alias: str) -> DataFrame:
        # One piece per day at most: the equi-join on the day keeps each row at most once.
        inside = (
            frame.withColumn("__day", utc_day(F.col("minute")))
            .join(F.broadcast(covered), "__day")
            .where((F.col("minute") >= F.col("__start")) & (F.col("minute") < F.col("__end")))
        )
        # Summed per bucket: a table may hold a bucket in more than one row (speed deltas).
        return inside.groupBy(*keys).agg(F.sum("plays").cast("bigint").alias(alias))

    joined = plays(batch, "batch").join(plays(speed, "speed"), list(keys), "full_outer")
    return joined.select(
        *keys,
        F.coalesce("batch", F.lit(0)).alias("batch"),
        F.coalesce("speed", F.lit(0)).alias("speed"),
        (F.coalesce("batch", F.lit(0)) - F.coalesce("speed", F.lit(0))).alias("diff"),
    )


def reconcile(
    differences: DataFrame,
    *,
    late_events_total: int,
    landing_ahead: int = 0,
    speed_ahead: int = 0,
    top: int = 10,
) -> Reconciliation:
    """Sum the bucket differences (one Spark job) and judge them against the allowances."""
    from pyspark.sql import functions as F

    diff = F.col("diff")
    totals = differences.agg(
        F.count(F.lit(1)).alias("buckets"),
        F.coalesce(F.sum("batch"), F.lit(0)).alias("batch"),
        F.coalesce(F.sum("speed"), F.lit(0)).alias("speed"),
        F.coalesce(F.sum(F.when(diff > 0, diff)), F.lit(0)).alias("plus"),
        F.coalesce(F.sum(F.when(diff < 0, -diff)), F.lit(0)).alias("minus"),
        F.count_if(diff != 0).alias("differing"),
    ).first()
    offenders: list[dict[str, Any]] = []
    if totals and totals["differing"]:
        keys = [c for c in differences.columns if c not in _TOTALS]
        rows = differences.where(diff != 0).orderBy(F.desc(F.abs(diff)), *keys).limit(top)
        offenders = [row.asDict() for row in rows.collect()]
    return Reconciliation(
        buckets=int(totals["buckets"]) if totals else 0,
        batch_plays=int(totals["batch"]) if totals else 0,
        speed_plays=int(totals["speed"]) if totals else 0,
        missing_in_speed=int(totals["plus"]) if totals else 0,
        missing_in_batch=int(totals["minus"]) if totals else 0,
        late_events_total=late_events_total,
        landing_ahead=landing_ahead,
        speed_ahead=speed_ahead,
        offenders=tuple(offenders),
        buckets_differing=int(totals["differing"]) if totals else 0,
    )


def offset_gaps(landing: Mapping[str, int], speed: Mapping[str, int]) -> tuple[int, int]:
    """(records landing read that speed did not, records speed read that landing did not),
    from the next offsets per partition each query saved."""
    partitions = set(landing) | set(speed)
    landing_ahead = sum(max(0, landing.get(p, 0) - speed.get(p, 0)) for p in partitions)
    speed_ahead = sum(max(0, speed.get(p, 0) - landing.get(p, 0)) for p in partitions)
    return landing_ahead, speed_ahead
