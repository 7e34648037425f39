"""The `lambda-arch` command line (CONTRACT section 6).

Errors of any kind print one line on stderr and exit 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from lambda_arch.common.config import ConfigError, Settings, load_settings

PROG = "lambda-arch"
EXIT_USAGE = 2


class CliError(click.ClickException):
    """An error the user can act on: printed as one line, exit 2."""

    exit_code = EXIT_USAGE


def fail(message: str) -> NoReturn:
    raise CliError(message)


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error))


class IsoTime(click.ParamType):
    """An ISO-8601 time with offset (or Z), as an aware UTC datetime."""

    name = "ISO-8601 time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from lambda_arch.serving.answers import check_time
        from lambda_arch.serving.store import ServingError, parse_iso

        if isinstance(value, datetime):
            return value
        try:
            return check_time(parse_iso(str(value)), "")  # the HTTP API's rule too
        except ServingError as error:
            self.fail(str(error).removeprefix(": "), param, ctx)


class CountryCode(click.ParamType):
    name = "country code"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from lambda_arch.serving.answers import check_country
        from lambda_arch.serving.store import ServingError

        try:
            return check_country(value)  # the HTTP API's rule too
        except ServingError as error:
            self.fail(str(error), param, ctx)


RATE = click.FloatRange(min=0, min_open=True)
MAX_ID = 2**63 - 1  # member and title ids are int64 (CONTRACT section 2)
ID = click.IntRange(min=0, max=MAX_ID)
SHARE = click.FloatRange(min=0.0, max=0.5)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lambda-arch", prog_name=PROG)
def cli() -> None:
    """Fresh and correct play-event datasets: a Dagster-orchestrated lambda architecture."""


@cli.command()
@click.option("--no-traffic", is_flag=True, help="Do not produce live synthetic traffic.")
@click.option("--rate", type=RATE, default=200.0, show_default=True, help="Live traffic, events/s.")
@click.option(
    "--speedup", type=RATE, default=60.0, show_default=True, help="Event clock / wall clock."
)
@click.option(
    "--start",
    type=IsoTime(),
    default=None,
    help="Event clock start. Default: 23:30 UTC yesterday (a day completes within minutes).",
)
@click.option(
    "--burst-after",
    type=click.FloatRange(min=0),
    default=240.0,
    show_default=True,
    help="Seconds until one burst of malformed records (0: none).",
)
def up(
    no_traffic: bool, rate: float, speedup: float, start: datetime | None, burst_after: float
) -> None:
    """Run the embedded stack until SIGINT or SIGTERM: broker, Dagster webserver and daemon, traffic."""
    from lambda_arch.runtime.stack import Traffic, demo_start, run_stack

    traffic = Traffic(
        rate=rate, speedup=speedup, start=start or demo_start(), burst_after_s=burst_after
    )
    run_stack(settings(), None if no_traffic else traffic)


@cli.command()
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=None,
    help="How many events (0: until interrupted). Default 10,000, or the whole --from file.",
)
@click.option(
    "--rate", type=RATE, default=None, help="Events/s, steady. Default: as fast as possible."
)
@click.option("--seed", type=int, default=None, help="Same seed (and --start): same events.")
@click.option(
    "--from",
    "from_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Replay a CSV, JSON-lines or Parquet file of event fields, in file order.",
)
@click.option("--start", type=IsoTime(), default=None, help="Event clock start. Default: now.")
@click.option("--speedup", type=RATE, default=1.0, show_default=True, help="Event clock speed.")
@click.option("--duplicates", type=SHARE, default=0.0, show_default=True, help="Share re-sent.")
@click.option("--late", type=SHARE, default=0.0, show_default=True, help="Share arriving late.")
@click.option("--malformed", type=SHARE, default=0.0, show_default=True, help="Share malformed.")
@click.option("--topic", default=None, help="Topic (default: LAMBDA_ARCH_TOPIC).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def produce(
    events: int | None,
    rate: float | None,
    seed: int | None,
    from_file: Path | None,
    start: datetime | None,
    speedup: float,
    duplicates: float,
    late: float,
    malformed: float,
    topic: str | None,
    quiet: bool,
) -> None:
    """Produce synthetic play events, or replay a file, to the play-events topic."""
    current = settings()
    from lambda_arch.ingest.producer import ProduceRequest, run_produce

    request = ProduceRequest(
        events=events,
        rate=rate,
        seed=seed,
        from_file=from_file,
        start=start,
        speedup=speedup,
        duplicate_rate=duplicates,
        late_rate=late,
        malformed_rate=malformed,
        topic=topic,
        progress=not quiet,
    )
    summary = run_produce(current, request)
    click.echo(summary.describe(), err=True)


@cli.command()
def run() -> None:
    """One headless pass: speed catch-up, complete batch partitions, serving refresh."""
    headless_run(settings())


def headless_run(current: Settings) -> None:
    """Run speed_job, then batch_job for every complete day that is missing or stale, in this
    process and recorded in the Dagster instance of LAMBDA_ARCH_HOME (the UI shows these runs).

    Next to `lambda-arch up` it shares the Connect server (one metastore owner) and reuses the
    work its sensors, schedule and backfills have in flight: it waits for in-flight speed runs
    before its own (which then reads only what is left), and for in-flight batch runs and
    backfills covering the days it owes, then plans again and launches only what is still
    owed. Should two launches still meet, the speed checkpoints' and the batch tables' locks
    make the later one wait: never two writers at once.
    """
    from dagster import DagsterInstance

    from lambda_arch.batch import layer as batch
    from lambda_arch.runtime.stack import write_dagster_yaml

    if not (current.dagster_home / "dagster.yaml").exists():
        write_dagster_yaml(current)
    defs = _definitions()

    from sensors.runs import in_process_run_tags

    run_tags = {"lambda_arch/reason": "cli-run", **in_process_run_tags()}
    started = datetime.now(UTC)
    # The home's instance by its folder, not through DAGSTER_HOME: the process environment
    # stays as the user set it (every run here executes in this process).
    with DagsterInstance.from_config(str(current.dagster_home)) as instance:
        _await_speed_runs(instance)
        click.echo("speed layer: catching up with the topic ...")
        speed = defs.resolve_job_def("speed_job").execute_in_process(
            instance=instance, tags=run_tags, raise_on_error=False
        )
        _check_run("speed_job", speed)
        for event in speed.get_asset_materialization_events():
            metadata = event.materialization.metadata
            read = metadata.get("events_read")
            click.echo(
                f"  {event.asset_key.to_user_string()}: "
                f"{read.value if read is not None else '?'} events read"
            )
        owed, days = _owed_after_work_in_flight(current, instance, defs)
        if not days:
            click.echo(
                f"batch layer: nothing owed ({len(owed.complete)} complete days, "
                f"landing watermark {owed.landing_watermark})"
            )
        batch_job = defs.resolve_job_def("batch_job")
        for first, last in batch.day_ranges(days):
            click.echo(f"batch layer: recomputing {first} .. {last} ...")
            tags = {
                **run_tags,
                "dagster/asset_partition_range_start": first.isoformat(),
                "dagster/asset_partition_range_end": last.isoformat(),
            }
            result = batch_job.execute_in_process(
                instance=instance, tags=tags, raise_on_error=False
            )
            _check_run(f"batch_job {first}..{last}", result)
        # speed_job refreshed the store; batch runs change it: ours, those we waited for, and
        # those that finished before we looked (a sensor's run that left nothing owed, whose
        # serving sensor may not have ticked yet). Refreshing is cheap when nothing changed.
        click.echo("serving layer: refreshing the store ...")
        result = defs.resolve_job_def("serving_job").execute_in_process(
            instance=instance, tags=run_tags, raise_on_error=False
        )
        _check_run("serving_job", result)
    seconds = (datetime.now(UTC) - started).total_seconds()
    from lambda_arch.serving.store import ServingStore

    for view, summary in ServingStore.from_settings(current).summary().items():
        click.echo(
            f"  {view}: batch watermark {summary['batch_watermark'] or '-'}, "
            f"speed watermark {summary['speed_watermark'] or '-'}"
        )
    click.echo(f"done in {seconds:.1f} s")


# How often `run` looks at the runs it waits for, and how long it waits for others' work in
# flight at most: the locks keep overlapping writers apart anyway, so past this bound `run` goes
# ahead. (A run of a killed `lambda-arch run` is marked failed at once: sensors.runs.live_runs.)
_IN_FLIGHT_POLL_S = 2.0
IN_FLIGHT_WAIT_S = 3600.0


def _await_runs(instance: Any, describe: dict[str, str], deadline: float) -> None:
    """Wait until none of the runs `describe` names (run id -> text) is queued or running."""
    import time

    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    from sensors.runs import live_runs

    waiting = dict(describe)
    began = time.monotonic()
    for text in waiting.values():
        click.echo(f"  waiting for {text} ...")
    while waiting:
        if time.monotonic() >= deadline:
            click.echo(
                f"  stopped waiting after {time.monotonic() - began:.0f} s: {', '.join(waiting.values())}"
            )
            return
        time.sleep(_IN_FLIGHT_POLL_S)
        for run_id in list(waiting):
            run = instance.get_run_by_id(run_id)
            if (
                run is not None
                and run.status in NOT_FINISHED_STATUSES
                and not live_runs(instance, [run])
            ):
                run = instance.get_run_by_id(run_id)  # marked failed: its process is gone
            if run is None or run.status not in NOT_FINISHED_STATUSES:
                status = run.status.value.lower() if run is not None else "gone"
                click.echo(
                    f"  {waiting.pop(run_id)}: {status} after {time.monotonic() - began:.0f} s"
                )


def _await_speed_runs(instance: Any) -> None:
    """Wait for speed_job runs in flight (the lag sensor's, say): they read the topic this run
    would read, and ours then only reads what they left (no two speed runs on the 2 cores)."""
    import time

    from assets.jobs import SPEED_JOB_NAME
    from sensors.runs import runs_in_flight

    runs = runs_in_flight(instance, SPEED_JOB_NAME)
    if runs:
        click.echo("speed layer: a speed run is in flight; reusing it")
        _await_runs(
            instance,
            {run.run_id: f"speed_job run {run.run_id[:8]}" for run in runs},
            time.monotonic() + IN_FLIGHT_WAIT_S,
        )


def _owed_after_work_in_flight(
    current: Settings, instance: Any, defs: Any
) -> tuple[Any, list[Any]]:
    """(batch plan, days to launch): the owed days once the
    batch runs and backfills in flight that cover some of them have finished (they may have
    computed them, or failed: then they are still owed)."""
    import time

    from assets.batch import BATCH_ASSETS
    from assets.jobs import BATCH_JOB_NAME
    from lambda_arch.batch import layer as batch
    from sensors.runs import batch_work_in_flight

    keys = [asset.key for asset in BATCH_ASSETS]
    graph = defs.resolve_asset_graph()
    deadline = time.monotonic() + IN_FLIGHT_WAIT_S
    while True:
        owed = batch.plan(current)
        days = sorted({*owed.missing, *owed.stale})
        if not days or time.monotonic() >= deadline:
            return owed, days
        work = [
            w
            for w in batch_work_in_flight(instance, BATCH_JOB_NAME, keys, graph)
            if w.overlaps(days)
        ]
        if not work:
            return owed, days
        click.echo(
            f"batch layer: {len(days)} owed days are being computed already; reusing that work"
        )
        runs = {w.id: f"batch {w.describe()}" for w in work if w.kind == "run"}
        if runs:
            _await_runs(instance, runs, deadline)
        elif _backfill_daemon_alive(instance):
            # Backfills between runs: their next run starts within a daemon tick.
            time.sleep(_IN_FLIGHT_POLL_S)
        else:
            return owed, days  # no daemon launches their runs: nothing to wait for


def _backfill_daemon_alive(instance: Any) -> bool:
    """Whether a Dagster daemon (`lambda-arch up`'s) is launching backfill runs right now."""
    import time

    heartbeat = instance.get_daemon_heartbeats().get("BACKFILL")
    return heartbeat is not None and time.time() - heartbeat.timestamp < 120


def _definitions() -> Any:
    """The Definitions, without Dagster's beta and supersession warnings on the terminal (they
    are about APIs the project chose knowingly; the UI and tests still show them)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lambda_arch.definitions import defs
    return defs


def _check_run(name: str, result: Any) -> None:
    if result.success:
        return
    failures = [
        event.event_specific_data.error.message.strip()
        for event in result.all_events
        if event.is_step_failure and event.event_specific_data is not None
    ]
    reason = failures[0].splitlines()[-1] if failures else "see the Dagster UI"
    fail(f"{name} failed (run {result.run_id}): {reason}")


def _view_options(function: Any) -> Any:
    for option in reversed(
        [
            click.option("--country", type=CountryCode(), default=None, help="ISO country code."),
            click.option("--window", type=click.IntRange(min=1), default=60, show_default=True),
            click.option("--as-of", "as_of", type=IsoTime(), default=None, help="ISO-8601 time."),
        ]
    ):
        function = option(function)
    return function


def _store(current: Settings) -> Any:
    """The home's serving store over every declared view; a bad LAMBDA_ARCH_VIEWS_FILE is one
    line naming the view and the field."""
    from lambda_arch.serving.store import ServingStore
    from lambda_arch.views.declarations import ViewDeclarationError

    try:
        return ServingStore.from_settings(current)
    except ViewDeclarationError as error:
        fail(
            f"LAMBDA_ARCH_VIEWS_FILE: {_one_line(str(error)).removeprefix('LAMBDA_ARCH_VIEWS_FILE: ')}"
        )


def _answer(document: dict[str, Any], as_json: bool, table: Any) -> None:
    """The exact JSON with --json, else a readable table."""
    if as_json:
        from lambda_arch.serving.answers import dumps

        click.echo(dumps(document))
    else:
        click.echo(table(document))


def _header_lines(document: dict[str, Any]) -> list[str]:
    return [
        f"{document['country'] or 'all countries'}, {document['window_minutes']} min "
        f"before {document['as_of']}",
        f"batch watermark {document['batch_watermark'] or '-'}, "
        f"speed watermark {document['speed_watermark'] or '-'}",
    ]


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> list[str]:
    if not rows:
        return [empty]
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return out


def _serving_call(call: Any) -> dict[str, Any]:
    import sqlite3

    from lambda_arch.serving.store import ServingError

    try:
        return call()
    except ServingError as error:
        fail(str(error))
    except sqlite3.Error as error:  # a locked, unreadable or damaged store file
        fail(f"the serving store cannot be read: {error}")


@cli.command()
@_view_options
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def trending(
    country: str | None, window: int, as_of: datetime | None, limit: int, as_json: bool
) -> None:
    """Titles ranked by plays in [as-of - window, as-of)."""
    from lambda_arch.serving import answers

    store = _store(settings())
    document = _serving_call(
        lambda: answers.trending(store, country=country, as_of=as_of, window=window, limit=limit)
    )
    _answer(
        document,
        as_json,
        lambda d: "\n".join(
            [*_header_lines(d), *_table(d["titles"], ["rank", "title_id", "plays"], "no plays")]
        ),
    )


@cli.command()
@_view_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def discovery(country: str | None, window: int, as_of: datetime | None, as_json: bool) -> None:
    """Plays and share per discovery source in [as-of - window, as-of)."""
    from lambda_arch.serving import answers

    store = _store(settings())
    document = _serving_call(
        lambda: answers.discovery(store, country=country, as_of=as_of, window=window)
    )
    columns = ["discovery_source", "plays", "share"]
    _answer(
        document,
        as_json,
        lambda d: "\n".join([*_header_lines(d), *_table(d["sources"], columns, "no plays")]),
    )


@cli.command()
@click.argument("name")
@_view_options
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="DIM=VALUE",
    help="Only plays whose DIM (a dimension of the view other than the ranked one) is VALUE; "
    "repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def view(
    name: str,
    country: str | None,
    window: int,
    as_of: datetime | None,
    limit: int,
    where: tuple[str, ...],
    as_json: bool,
) -> None:
    """A declared count view (see `lambda-arch views`) in [as-of - window, as-of)."""
    from lambda_arch.serving import answers

    store = _store(settings())
    document = _serving_call(
        lambda: answers.view(
            store,
            name,
            country=country,
            as_of=as_of,
            window=window,
            limit=limit,
            where=[answers.parse_where(text) for text in where],
        )
    )

    def table(d: dict[str, Any]) -> str:
        declared = store.count_view(d["view"])
        columns = ["rank", declared.ranked, "plays"] + (
            ["share"] if declared.form == "shares" else []
        )
        return "\n".join(
            [
                f"{d['view']}" + (f" where {', '.join(where)}" if where else ""),
                *_header_lines(d),
                *_table(d["rows"], columns, "no plays"),
            ]
        )

    _answer(document, as_json, table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def views(as_json: bool) -> None:
    """The declared count views: dimensions, ranked dimension, form, description."""
    from lambda_arch.serving import answers

    document = answers.views(_store(settings()))

    def table(d: dict[str, Any]) -> str:
        rows = [
            {**v, "dimensions": ",".join(v["dimensions"]), "events": ",".join(v["events"])}
            for v in d["views"]
        ]
        columns = ["name", "form", "ranked", "dimensions", "events", "description"]
        cells = [[str(row[c]) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
        lines += [
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells
        ]
        return "\n".join(lines)

    _answer(document, as_json, table)


@cli.command()
@click.option("--member", type=ID, required=True, help="member_id")
@click.option("--title", type=ID, default=None, help="title_id")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=1000),
    default=100,
    show_default=True,
    help="Sessions per page.",
)
@click.option(
    "--after",
    type=IsoTime(),
    default=None,
    help="Page cursor: the session_start of the last session seen (the answer's next.after).",
)
@click.option(
    "--after-title",
    "after_title",
    type=ID,
    default=None,
    help="Page cursor: that session's title_id (next.after_title).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def sessions(
    member: int,
    title: int | None,
    limit: int,
    after: datetime | None,
    after_title: int | None,
    as_json: bool,
) -> None:
    """Stitched viewing sessions of a member, ordered by session_start, a page at a time."""
    from lambda_arch.serving import answers

    store = _store(settings())
    document = _serving_call(
        lambda: answers.sessions(
            store,
            member_id=member,
            title_id=title,
            limit=limit,
            after=after,
            after_title=after_title,
        )
    )
    columns = ["title_id", "session_start", "session_end", "events", "watched_ms"]

    def table(d: dict[str, Any]) -> str:
        lines = [f"member {d['member_id']}", *_table(d["sessions"], columns, "no sessions")]
        if d["next"]:
            cursor = d["next"]
            lines.append(f"more: --after {cursor['after']} --after-title {cursor['after_title']}")
        return "\n".join(lines)

    _answer(document, as_json, table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def status(as_json: bool) -> None:
    """Offsets and lag, watermarks, latest materializations, checks."""
    from lambda_arch.cli.status import collect_status, render_status

    current = settings()
    document = collect_status(current)
    document["dagster"] = _dagster_status(current)
    _answer(document, as_json, render_status)


def _dagster_status(current: Settings) -> dict[str, Any]:
    """Latest materialization and check results per asset, from the home's Dagster instance."""
    dagster_yaml = current.dagster_home / "dagster.yaml"
    if not dagster_yaml.exists():
        return {"error": f"no Dagster instance in {current.dagster_home} yet"}
    from dagster import DagsterInstance

    defs = _definitions()

    assets: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    graph = defs.resolve_asset_graph()
    with DagsterInstance.from_config(str(current.dagster_home)) as instance:
        for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
            event = instance.get_latest_materialization_event(key)
            assets[key.to_user_string()] = (
                None
                if event is None
                else {
                    "at": datetime.fromtimestamp(event.timestamp, UTC).isoformat(),
                    "run_id": event.run_id,
                    "partition": event.dagster_event.partition if event.dagster_event else None,
                }
            )
        check_keys = list(graph.asset_check_keys)
        records = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
        for check_key in check_keys:
            record = records.get(check_key)
            name = f"{check_key.asset_key.to_user_string()}:{check_key.name}"
            # A planned (not yet finished) check has an event without passed or severity.
            evaluation = record.evaluation if record is not None else None
            severity = getattr(evaluation, "severity", None)
            checks[name] = (
                None
                if record is None
                else {
                    "status": record.status.value,
                    "passed": getattr(evaluation, "passed", None),
                    "severity": severity.value if severity is not None else None,
                    "at": datetime.fromtimestamp(record.create_timestamp, UTC).isoformat(),
                }
            )
        failing = _failing_sensors(instance)
    return {"assets": assets, "checks": checks, "failing_sensors": failing}


def _failing_sensors(instance: Any) -> dict[str, Any]:
    """Sensors and schedules whose latest tick failed: since when, and why (one line)."""
    from sensors.alerts import instigator_failures

    return {
        name: {
            "since": datetime.fromtimestamp(failure.since, UTC).isoformat(),
            "error": failure.error,
        }
        for name, failure in sorted(instigator_failures(instance).items())
    }


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def serve(host: str, port: int) -> None:
    """The HTTP API (OpenAPI page at /docs)."""
    from lambda_arch.runtime.broker import port_in_use
    from lambda_arch.serving.api import run_server

    current = settings()
    if port_in_use(port, host):
        fail(f"{host}:{port} is already in use: choose another --port")
    click.echo(
        f"serving {current.home / 'serving'} on http://{host}:{port} (docs: /docs)", err=True
    )
    run_server(_store(current), host, port)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr and exit 2 on any error the user can act on."""
    # The process's entry point, so the place to set its environment (library code does not):
    # Spark's web UI binds SPARK_LOCAL_IP, else 0.0.0.0, and its launcher warns when it is
    # unset. pyspark hands os.environ to the JVM it starts; the children of `up` inherit it.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from lambda_arch.runtime.broker import ServiceError
    from lambda_arch.runtime.java import JavaMissing

    try:
        result = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else PROG
        hint = f" (see '{command} --help')"
        click.echo(f"{command}: {_one_line(error.format_message())}{hint}", err=True)
        return EXIT_USAGE
    except click.ClickException as error:
        click.echo(f"{PROG}: {_one_line(error.format_message())}", err=True)
        return EXIT_USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(f"{PROG}: interrupted", err=True)
        return 130
    except (ConfigError, ServiceError, JavaMissing, OSError) as error:
        click.echo(f"{PROG}: {_one_line(str(error))}", err=True)
        return EXIT_USAGE
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
