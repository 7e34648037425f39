"""Fault campaign: SIGKILL at a random moment of a random step, recover, compare with the truth.

Each of --trials trials (default 10) runs on a fresh LAMBDA_ARCH_HOME with free loopback ports
(an isolated environment: none of this shell's lambda-arch, Kafka, Spark or Dagster settings):

1. `lambda-arch up --no-traffic` (embedded memory broker, Spark Connect server, Dagster
   webserver and daemon);
2. `lambda-arch produce --events N --duplicates 0.05 --late 0.03 --malformed 0.01 --seed S
   --start ... --speedup ...` (a speedup meant for 2.5 days of event time; 2 to 3.6 were
   seen: at least two batch days complete), then a copy of every record the broker holds,
   read back with kafka-python: partition, offset, key, value. Which records the generator
   made late or malformed is taken from the generator itself (same seed, same records: only
   used to label, matched by payload bytes);
3. one fault, SIGKILL (the whole process tree, stopped with SIGSTOP first so it dies at one
   moment), of one of:
   - `run`: `lambda-arch run` (sensors and schedules stopped first, so its in-process runs do
     all the work) while a step of the chosen kind runs (counts: the query that lands and
     counts every view; sessions; a batch day; a serving refresh), a random 0-3 s after the step started (step times from the
     Dagster instance's event log);
   - `daemon`: the worker process (a descendant of `up`, found by its run id on the command
     line) of a run the sensors launched, while a step of the chosen kind runs;
   - `up`: the whole stack (broker included) at a random moment 5-60 s after producing,
     usually while the lag sensor's speed run lands: what the memory broker held and the
     landing had not committed is lost. `up` is started again and a second, smaller batch of
     traffic is produced into the new incarnation of the topic (and captured too);
4. recovery: sensors and schedules stopped, then `lambda-arch run` until it exits 0 (at most 5
   times). Runs whose process was killed stay STARTED in a Dagster instance without run
   monitoring; when `run` still waits for one after --dead-run-wait seconds, the campaign marks
   it failed (what an operator does in the UI) and says so in the verdict;
5. comparison with an independent recomputation from the captured records (plain Python and
   DuckDB over the warehouse's Parquet files; the product's parsers are not used):
   - lake: every captured valid record exactly once in `play_events` (matched by partition,
     offset and event_id), every malformed one exactly once in the quarantine (partition,
     offset, payload), nothing else;
   - loss: records of a killed memory broker that are in neither table must be a suffix of
     their partition and match, per partition, the `data_lost` alerts in logs/alerts.jsonl;
     only then are they excluded (counted as "reported lost"); anything else missing is lost;
   - answers of `lambda-arch serve`: trending and discovery for all countries and the two
     largest, windows 60, 1440 and 10080 minutes, as-of times before, at and after the batch
     watermark and the default; minutes before the answer's batch watermark must equal the
     recomputation exactly (late events included), minutes after it lie between the on-time
     plays and all plays (the speed layer may drop late events, CONTRACT section 3); the
     default as-of must be the minute after the newest event time; sessions of sampled
     members: those ending before the batch watermark exactly, later ones within a session
     of the recomputation (no event counted twice).

Per trial it prints the fault (what, when, which step) and the verdict; at the end `K of N
trials exact, L events lost, D counted twice` (L: events missing from the lake or the all-history
answer that were neither reported lost nor quarantined; D: events counted more than once), the
core count and the time per trial. Every process it starts runs in its own process group and is
stopped by PID in a finally block (SIGTERM, then SIGKILL for whatever of its tree is left), also
on Ctrl-C.

    .venv/bin/python benchmarks/faults.py [--trials 10] [--seed 1] [--events 3000]
        [--kinds run,daemon,up] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lambda_arch.runtime.broker import free_port  # noqa: E402
from lambda_arch.runtime.processes import isolated_env, spawn  # noqa: E402

START = datetime(2026, 3, 1, tzinfo=UTC)
SPAN = timedelta(
    days=2, hours=12
)  # the intended span of --events records (the generator spreads them over 2-3.6 days)
DENSITY = 100.0  # `produce`'s event density without --rate (events per second of event time)
RATES = {"duplicates": 0.05, "late": 0.03, "malformed": 0.01}
LATENESS = timedelta(minutes=10)
GAP = timedelta(minutes=30)
ALL_HISTORY_MIN = 7 * 24 * 60  # a window that holds every event of a trial
STEP_KINDS = ("counts", "sessions", "batch", "serving")
FAULT_KINDS = ("run", "daemon", "up")
SECOND_BATCH = 600  # events produced into the new incarnation after `up` was killed
POLL_S = 0.3
RECOVERY_ATTEMPTS = 5
CLI_RUN = "cli-run"
REPOSITORY = {"repositoryLocationName": "lambda_arch", "repositoryName": "__repository__"}
INSTIGATORS = """
query ($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) { ... on Sensors { results { name id } } }
  schedulesOrError(repositorySelector: $repo) { ... on Schedules { results { name id } } }
}"""
STOP_SENSOR = """
mutation ($id: String) { stopSensor(id: $id) { __typename } }"""
STOP_SCHEDULE = """
mutation ($id: String) { stopRunningSchedule(id: $id) { __typename } }"""


def step_kind(step_key: str) -> str | None:
    """Which kind of step a Dagster step key is (counts, sessions, batch, serving)."""
    if step_key.endswith("_serving") or "serving" in step_key:
        return "serving"
    if step_key.startswith("sessions_speed"):
        return "sessions"
    if step_key == "counts" or step_key.endswith("_speed"):  # the query that lands and counts
        return "counts"
    if step_key.endswith("_batch") or "play_events_clean" in step_key:
        return "batch"
    return None


# Processes ---------------------------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGTERM or SIGINT: stop every process and leave."""


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclass
class Children:
    """Every process this script started, and every process seen under them."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str], log: Path) -> Any:
        process = spawn(command, log_path=log, env=env, cwd=ROOT)
        self.processes.append((name, process))
        self.remember()
        return process

    def remember(self) -> None:
        for _, process in self.processes:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(process.pid)
                for member in (root, *root.children(recursive=True)):
                    self.seen[member.pid] = member

    def tree(self, process: subprocess.Popen[bytes]) -> list[psutil.Process]:
        try:
            root = psutil.Process(process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop_all(self, timeout_s: float = 90.0) -> list[str]:
        """SIGTERM each live child in reverse start order, SIGKILL after timeout_s; then kill
        whatever of their trees is left. Returns the leftovers that had to be killed."""
        self.remember()
        for name, process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    print(f"    {name} (pid {process.pid}) did not stop in {timeout_s:.0f} s")
                    process.kill()
                    process.wait()
        leftovers = [p for p in self.seen.values() if _alive(p)]
        killed = []
        for member in leftovers:
            with contextlib.suppress(psutil.Error):
                killed.append(f"{member.pid} {' '.join(member.cmdline()[:3])[:80]}")
                member.kill()
        psutil.wait_procs(leftovers, timeout=10)
        self.processes.clear()
        self.seen.clear()
        return killed


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def sigkill_tree(members: list[psutil.Process]) -> int:
    """SIGSTOP every member first (no member reacts to another's death), then SIGKILL all."""
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.suspend()
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.kill()
    gone, alive = psutil.wait_procs(members, timeout=10)
    return len(gone) + len(alive)


def cli(*args: str) -> list[str]:
    # The console script, not `python -m lambda_arch.cli`: that entry point drops main()'s
    # return value and so exits 0 even when the command failed.
    return [str(Path(sys.executable).with_name("lambda-arch")), *args]


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.load(answer)


def wait_until(what: str, check: Any, timeout_s: float, process: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, urllib.error.URLError):
            if check():
                return
        time.sleep(1.0)
    raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")


# A trial's stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    home: Path
    ports: dict[str, int]
    children: Children
    up: Any = None
    up_starts: int = 0

    @property
    def env(self) -> dict[str, str]:
        return isolated_env(
            {
                "LAMBDA_ARCH_HOME": str(self.home),
                "LAMBDA_ARCH_BROKER_PORT": str(self.ports["broker"]),
                "LAMBDA_ARCH_DAGSTER_PORT": str(self.ports["dagster"]),
                "LAMBDA_ARCH_SPARK_CONNECT_PORT": str(self.ports["connect"]),
                "LAMBDA_ARCH_START_DATE": START.date().isoformat(),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT),
            }
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['broker']}"

    @property
    def logs(self) -> Path:
        return self.home / "campaign-logs"

    def start_up(self) -> None:
        self.up_starts += 1
        self.up = self.children.start(
            "up", cli("up", "--no-traffic"), self.env, self.logs / f"up-{self.up_starts}.log"
        )
        port = self.ports["dagster"]
        wait_until(
            "Dagster webserver",
            lambda: get_json(f"http://127.0.0.1:{port}/server_info") is not None,
            300,
            self.up,
        )
        # The code location answers GraphQL once loaded.
        wait_until("code location", lambda: bool(self.instigators()), 300, self.up)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['dagster']}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)["data"]

    def instigators(self) -> tuple[list[str], list[str]]:
        found = self.graphql(INSTIGATORS, {"repo": REPOSITORY})
        sensors = [s["id"] for s in found["sensorsOrError"]["results"]]
        schedules = [s["id"] for s in found["schedulesOrError"]["results"]]
        return (sensors, schedules) if sensors else ()  # type: ignore[return-value]

    def stop_automation(self) -> None:
        """Stop every sensor and schedule: the campaign's runs are then the only new runs."""
        sensors, schedules = self.instigators()
        for sensor_id in sensors:
            self.graphql(STOP_SENSOR, {"id": sensor_id})
        for schedule_id in schedules:
            self.graphql(STOP_SCHEDULE, {"id": schedule_id})

    def produce(self, events: int, seed: int, start: datetime, speedup: float) -> None:
        command = cli(
            "produce",
            *("--events", str(events), "--seed", str(seed), "--quiet"),
            *("--start", start.isoformat().replace("+00:00", "Z"), "--speedup", f"{speedup:g}"),
            *("--duplicates", str(RATES["duplicates"]), "--late", str(RATES["late"])),
            *("--malformed", str(RATES["malformed"])),
        )
        process = self.children.start("produce", command, self.env, self.logs / "produce.log")
        if process.wait(timeout=300) != 0:
            raise RuntimeError(f"produce exited with {process.returncode}")

    def instance(self) -> Any:
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.home / "dagster"))


# Captured records and what the generator says about them ----------------------------------------


@dataclass
class Record:
    incarnation: int
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    kind: str = "?"  # event, duplicate, late, malformed (from the generator)


def capture(bootstrap: str, topic: str, incarnation: int, expected: int) -> list[Record]:
    """Every record of the topic, read from offset 0 of each partition with kafka-python."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=30000,
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Record] = []
        deadline = time.monotonic() + 120
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            got = [r for rs in batch.values() for r in rs]
            for r in got:
                records.append(Record(incarnation, r.partition, r.offset, r.key, r.value))
            if got:
                quiet_since = time.monotonic()
            elif len(records) >= expected and time.monotonic() - quiet_since > 2:
                break
        return records
    finally:
        consumer.close()


def label(records: list[Record], events: int, seed: int, start: datetime, speedup: float) -> int:
    """Set each record's kind from the generator's own stream (same config as `produce`);
    returns how many records could not be matched by payload."""
    from lambda_arch.ingest.generator import TrafficConfig, generate

    config = TrafficConfig(
        seed=seed,
        start=start,
        events_per_second=DENSITY / speedup,
        duplicate_rate=RATES["duplicates"],
        late_rate=RATES["late"],
        malformed_rate=RATES["malformed"],
        allowed_lateness_min=int(LATENESS.total_seconds() // 60),
    )
    kinds: dict[bytes, list[str]] = defaultdict(list)
    for generated in islice(generate(config), events):
        kinds[generated.value].append(generated.kind)
    unmatched = 0
    for record in records:
        found = kinds.get(record.value)
        if found:
            record.kind = found.pop(0) if len(found) > 1 else found[0]
        else:
            unmatched += 1
    return unmatched


@dataclass(frozen=True)
class Event:
    event_id: str
    event_type: str
    time: datetime
    member_id: int
    title_id: int
    country: str
    source: str
    position_ms: int | None
    on_time: bool


def parse_time(value: Any) -> datetime:
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC)
    moment = datetime.fromisoformat(value.replace(" ", "T"))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def events_of(records: list[Record]) -> list[Event]:
    """Valid events once per event_id (plain json; validity from the generator's labels). An
    event is on time when one of its copies was emitted on time."""
    found: dict[str, Event] = {}
    on_time: set[str] = set()
    for record in records:
        if record.kind == "malformed":
            continue
        document = json.loads(record.value)
        event_id = document["event_id"]
        if record.kind == "event":
            on_time.add(event_id)
        if event_id in found:
            continue
        found[event_id] = Event(
            event_id=event_id,
            event_type=document["event_type"],
            time=parse_time(document["event_time"]),
            member_id=int(document["member_id"]),
            title_id=int(document["title_id"]),
            country=document["country"],
            source=document.get("discovery_source") or "other",
            position_ms=document.get("position_ms"),
            on_time=False,
        )
    return [Event(**{**e.__dict__, "on_time": e.event_id in on_time}) for e in found.values()]


# The lake ------------------------------------------------------------------------------------------


def lake_rows(home: Path, table: str, columns: str) -> list[tuple]:
    """Rows of a lake table from its Parquet files (hidden and staging files left out)."""
    import duckdb

    roots = sorted((home / "warehouse").glob(f"*.db/{table}"))
    files = [
        str(path)
        for root in roots
        for path in root.rglob("*")
        if path.is_file()
        and not any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)
        and not path.name.endswith((".crc", ".json"))
    ]
    if not files:
        return []
    with duckdb.connect() as connection:
        return connection.execute(
            f"SELECT {columns} FROM read_parquet(?, hive_partitioning = true, union_by_name = true)",
            [files],
        ).fetchall()


def reported_losses(home: Path) -> tuple[Counter[int], list[str]]:
    """Records the product reported lost (data_lost alerts of the landing), per partition."""
    lost: Counter[int] = Counter()
    notes: list[str] = []
    path = home / "logs" / "alerts.jsonl"
    seen: set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                alert = json.loads(line)
                if alert.get("kind") != "data_lost" or alert.get("alert_id") in seen:
                    continue
                seen.add(alert.get("alert_id"))
                metadata = alert.get("metadata") or {}
                notes.append(
                    f"{metadata.get('records_lost')} ({metadata.get('records_lost_precision')})"
                )
                for name, value in metadata.items():
                    if name.startswith("records_lost_p") and name[14:].isdigit():
                        lost[int(name[14:])] += int(value)
    return lost, notes


# The verdict ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    lost: int = 0  # events missing and not reported lost (lake or all-history answer)
    twice: int = 0  # events counted more than once
    reported_lost: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    answers: int = 0

    @property
    def exact(self) -> bool:
        return not self.problems


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def check_lake(home: Path, records: list[Record], verdict: Verdict) -> set[tuple[int, int, int]]:
    """Compare the lake with the captured records; returns the records lost and reported
    (incarnation, partition, offset), to be left out of the expected answers."""
    raw = Counter(
        (p, o, e) for p, o, e in lake_rows(home, "play_events", '"partition", "offset", event_id')
    )
    quarantined = Counter(
        (p, o, bytes(v))
        for p, o, v in lake_rows(home, "play_events_quarantine", '"partition", "offset", payload')
    )
    missing: list[Record] = []
    expected_raw: Counter[tuple] = Counter()
    expected_quarantine: Counter[tuple] = Counter()
    for record in records:
        if record.kind == "malformed":
            key = (record.partition, record.offset, record.value)
            expected_quarantine[key] += 1
            if quarantined[key] == 0:
                missing.append(record)
        else:
            key = (record.partition, record.offset, json.loads(record.value)["event_id"])
            expected_raw[key] += 1
            if raw[key] == 0:
                missing.append(record)
    for name, got, want in (
        ("lake", raw, expected_raw),
        ("quarantine", quarantined, expected_quarantine),
    ):
        twice = sum(max(0, got[k] - max(want[k], 1)) for k in got if k in want)
        extra = sum(n for k, n in got.items() if k not in want)
        if twice:
            verdict.twice += twice
            verdict.problems.append(f"{name}: {twice} records stored more than once")
        if extra:
            verdict.problems.append(f"{name}: {extra} rows no captured record explains")
    verdict.notes.append(
        f"lake {sum(raw.values())} raw rows, {sum(quarantined.values())} quarantined "
        f"(expected {sum(expected_raw.values())} / {sum(expected_quarantine.values())})"
    )
    # Missing records: lost with a killed memory broker when they are a suffix of their
    # partition and the product reported as many; else lost without a word.
    reported, notes = reported_losses(home)
    if notes:
        verdict.notes.append(f"product reported lost: {', '.join(notes)}")
    excused: set[tuple[int, int, int]] = set()
    by_partition: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for record in missing:
        by_partition[(record.incarnation, record.partition)].append(record)
    ends: dict[tuple[int, int], int] = defaultdict(int)
    for record in records:
        key = (record.incarnation, record.partition)
        ends[key] = max(ends[key], record.offset + 1)
    for (incarnation, partition), gone in sorted(by_partition.items()):
        offsets = sorted(r.offset for r in gone)
        suffix = offsets == list(
            range(ends[(incarnation, partition)] - len(offsets), ends[(incarnation, partition)])
        )
        told = reported.get(partition, 0) if incarnation == 1 else 0
        if suffix and told >= len(offsets) and incarnation == 1:
            excused.update((incarnation, partition, o) for o in offsets)
            reported[partition] -= len(offsets)
            verdict.reported_lost += len(offsets)
            continue
        what = "a gap" if not suffix else f"{told} reported"
        verdict.lost += len(offsets) - (told if suffix else 0)
        verdict.problems.append(
            f"partition {partition} (incarnation {incarnation}): {len(offsets)} records in "
            f"neither lake table, offsets {offsets[0]}..{offsets[-1]} ({what})"
        )
    over = sum(n for n in reported.values() if n > 0)
    if over:
        verdict.notes.append(f"reported lost but found landed or never produced: {over}")
    return excused


@dataclass
class Expected:
    events: list[Event]

    def plays(self) -> list[Event]:
        return [e for e in self.events if e.event_type == "play_start"]


def bounds(
    plays: list[Event],
    key: str,
    as_of: datetime,
    window: int,
    country: str | None,
    bw: datetime | None,
) -> tuple[Counter, Counter]:
    """(lower, upper) plays per key in [T-W, T): exact before the batch watermark bw, between
    the on-time plays and all plays from bw on."""
    end = minute(as_of)
    start = end - timedelta(minutes=window)
    lower: Counter = Counter()
    upper: Counter = Counter()
    for e in plays:
        at = minute(e.time)
        if not start <= at < end or (country is not None and e.country != country):
            continue
        value = getattr(e, key)
        upper[value] += 1
        if bw is None or at >= bw:
            if e.on_time:
                lower[value] += 1
        else:
            lower[value] += 1
    return lower, upper


def compare_counts(
    got: dict[Any, int], lower: Counter, upper: Counter
) -> tuple[int, int, list[str]]:
    """(plays missing below the lower bound, plays above the upper bound, examples)."""
    missing = excess = 0
    examples = []
    for value in set(got) | set(upper) | set(lower):
        n = got.get(value, 0)
        if n < lower[value]:
            missing += lower[value] - n
            examples.append(f"{value}: {n} < {lower[value]}")
        elif n > upper[value]:
            excess += n - upper[value]
            examples.append(f"{value}: {n} > {upper[value]}")
    return missing, excess, examples[:3]


def check_answers(port: int, expected: Expected, verdict: Verdict, rng: random.Random) -> None:
    base = f"http://127.0.0.1:{port}"
    plays = expected.plays()
    if not plays:
        verdict.problems.append("no plays expected at all")
        return
    newest = max(e.time for e in expected.events)
    countries = [c for c, _ in Counter(e.country for e in plays).most_common(2)]
    health = get_json(f"{base}/health")["views"]
    bw_text = health["trending"]["batch_watermark"]
    bw = parse_time(bw_text) if bw_text else None
    verdict.notes.append(
        f"batch watermark {bw_text}, speed watermark {health['trending']['speed_watermark']}"
    )
    # Every day that ends before the newest event time minus the lateness is complete.
    complete = minute(newest - LATENESS).replace(hour=0, minute=0)
    if min(e.time for e in expected.events) < complete and (bw is None or bw < complete):
        verdict.problems.append(
            f"batch watermark {bw_text}: the days before {complete:%Y-%m-%d} are complete"
        )
    as_ofs: list[datetime | None] = [
        None,
        START + timedelta(hours=6, minutes=17),
        START + timedelta(days=1),
        START + timedelta(days=1, hours=13, minutes=37),
        minute(newest) - timedelta(minutes=30),
        minute(newest) + timedelta(minutes=1),
    ]
    if bw is not None:
        as_ofs += [bw, bw + timedelta(minutes=45)]
    worst: dict[str, tuple[int, int]] = {}
    for as_of, window, country in (
        (a, w, c) for a in as_ofs for w in (60, 1440, ALL_HISTORY_MIN) for c in (None, *countries)
    ):
        query: dict[str, Any] = {"window": window}
        if as_of is not None:
            query["as_of"] = as_of.isoformat().replace("+00:00", "Z")
        if country is not None:
            query["country"] = country
        for view, key, rows in (
            ("trending", "title_id", "titles"),
            ("discovery", "source", "sources"),
        ):
            params = {**query, "limit": 1000} if view == "trending" else query
            document = get_json(f"{base}/{view}?{urlencode(params)}")
            verdict.answers += 1
            served_as_of = parse_time(document["as_of"])
            if as_of is None and served_as_of != minute(newest) + timedelta(minutes=1):
                problem = (
                    f"default as-of {document['as_of']}: expected the minute after the newest "
                    f"event time, {minute(newest) + timedelta(minutes=1):%Y-%m-%dT%H:%MZ}"
                )
                if problem not in verdict.problems:
                    verdict.problems.append(problem)
            served_bw = document.get("batch_watermark")
            cut = parse_time(served_bw) if served_bw else None
            field_name = "title_id" if view == "trending" else "discovery_source"
            got = {row[field_name]: row["plays"] for row in document[rows]}
            lower, upper = bounds(plays, key, served_as_of, window, country, cut)
            if view == "trending" and len(document[rows]) == 1000:
                # A full page: titles below its last count may be left out by the limit.
                floor = min(got.values())
                for value in list(upper):
                    if value not in got and lower[value] <= floor:
                        del lower[value], upper[value]
            missing, excess, examples = compare_counts(got, lower, upper)
            order = [(-row["plays"], row[field_name]) for row in document[rows]]
            if order != sorted(order):
                verdict.problems.append(f"{view} {query}: not in rank order")
            if view == "discovery" and got:
                total = sum(got.values())
                for row in document[rows]:
                    if abs(row["share"] - round(row["plays"] / total, 4)) > 1e-9:
                        verdict.problems.append(f"discovery {query}: share of {row[field_name]}")
                        break
            if missing or excess:
                verdict.problems.append(
                    f"{view} as_of={document['as_of']} window={window} country={country}: "
                    f"{missing} plays missing, {excess} too many ({'; '.join(examples)})"
                )
                name = f"{view}/{country}"
                if window == ALL_HISTORY_MIN and as_of == minute(newest) + timedelta(minutes=1):
                    worst[name] = (missing, excess)
    # Events (not answer cells): the all-history, all-country trending answer.
    if "trending/None" in worst:
        missing, excess = worst["trending/None"]
        verdict.lost = max(verdict.lost, missing)
        verdict.twice = max(verdict.twice, excess)
    check_sessions(base, expected, bw, verdict, rng)


def stitch(events: list[Event]) -> list[dict[str, Any]]:
    """CONTRACT section 3 sessions of one member's events."""
    by_title: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        by_title[e.title_id].append(e)
    sessions = []
    for title, group in by_title.items():
        group.sort(key=lambda e: e.time)
        current: list[Event] = []
        for e in [*group, None]:
            if current and (e is None or e.time - current[-1].time >= GAP):
                positions = [x.position_ms for x in current if x.position_ms is not None]
                sessions.append(
                    {
                        "title_id": title,
                        "start": current[0].time,
                        "end": current[-1].time,
                        "events": len(current),
                        "watched_ms": max(positions) - min(positions) if positions else 0,
                    }
                )
                current = []
            if e is not None:
                current.append(e)
    return sessions


def check_sessions(
    base: str, expected: Expected, bw: datetime | None, verdict: Verdict, rng: random.Random
) -> None:
    per_member: dict[int, list[Event]] = defaultdict(list)
    for e in expected.events:
        per_member[e.member_id].append(e)
    busiest = [m for m, _ in Counter({m: len(v) for m, v in per_member.items()}).most_common(5)]
    members = busiest + rng.sample(sorted(per_member), min(5, len(per_member)))
    for member in members:
        document = get_json(f"{base}/sessions?{urlencode({'member_id': member, 'limit': 1000})}")
        verdict.answers += 1
        truth = stitch(per_member[member])
        served = [
            {
                "title_id": s["title_id"],
                "start": parse_time(s["session_start"]),
                "end": parse_time(s["session_end"]),
                "events": s["events"],
                "watched_ms": s["watched_ms"],
            }
            for s in document["sessions"]
        ]

        def key(s: dict[str, Any]) -> tuple:
            return (s["title_id"], s["start"], s["end"], s["events"], s["watched_ms"])

        if bw is not None:
            want = sorted(key(s) for s in truth if s["end"] < bw)
            got = sorted(key(s) for s in served if s["end"] < bw)
            if want != got:
                verdict.problems.append(
                    f"sessions of member {member} before the batch watermark: "
                    f"{len(got)} served, {len(want)} expected, "
                    f"{len(set(got) - set(want))} differ"
                )
        for s in served:
            if bw is not None and s["end"] < bw:
                continue
            covering = [
                t
                for t in truth
                if t["title_id"] == s["title_id"]
                and t["start"] <= s["start"]
                and s["end"] <= t["end"]
            ]
            if not covering or s["events"] > covering[0]["events"]:
                verdict.problems.append(
                    f"speed session of member {member} title {s['title_id']} at {s['start']:%d %H:%M}: "
                    f"{s['events']} events, no session of the recomputation holds it"
                )


# Faults -----------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float | None = None  # seconds after the trial's traffic was produced
    steps: list[str] = field(default_factory=list)  # steps running at the kill, with their age
    run_id: str | None = None
    processes: int = 0
    dead_runs: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.at_s is None:
            return f"SIGKILL {self.kind} at a {self.target} step: missed ({'; '.join(self.steps)})"
        where = ", ".join(self.steps) or "no step running"
        run = f" run {self.run_id[:8]}" if self.run_id else ""
        return (
            f"SIGKILL {self.kind}{run} ({self.processes} processes) at t+{self.at_s:.1f} s, "
            f"target {self.target}: {where}"
        )


def running_steps(instance: Any, run_id: str) -> dict[str, float]:
    """Steps of a run that started and have not ended: step key -> start (epoch seconds)."""
    from dagster import DagsterEventType

    started: dict[str, float] = {}
    for entry in instance.all_logs(
        run_id,
        of_type={
            DagsterEventType.STEP_START,
            DagsterEventType.STEP_SUCCESS,
            DagsterEventType.STEP_FAILURE,
        },
    ):
        step = entry.step_key
        if entry.dagster_event.event_type == DagsterEventType.STEP_START:
            started[step] = entry.timestamp
        else:
            started.pop(step, None)
    return started


def active_runs(instance: Any, cli_only: bool | None) -> list[Any]:
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=20)
    if cli_only is None:
        return list(runs)
    return [r for r in runs if (r.tags.get("lambda_arch/reason") == CLI_RUN) == cli_only]


def await_step(
    stack: Stack, target: str, cli_only: bool, timeout_s: float, quit_when: Any
) -> tuple[Any, str, float] | None:
    """The first run (of `run` or of the daemon) seen with a step of kind target running:
    (run, step key, step start)."""
    deadline = time.monotonic() + timeout_s
    with stack.instance() as instance:
        while time.monotonic() < deadline and not quit_when():
            for run in active_runs(instance, cli_only):
                for step, began in running_steps(instance, run.run_id).items():
                    if step_kind(step) == target:
                        return run, step, began
            time.sleep(POLL_S)
    return None


def describe_steps(stack: Stack, cli_only: bool | None) -> list[str]:
    now = time.time()
    with stack.instance() as instance:
        return [
            f"{run.job_name}/{step} {now - began:.1f} s in"
            for run in active_runs(instance, cli_only)
            for step, began in running_steps(instance, run.run_id).items()
        ]


def worker_of(stack: Stack, run_id: str) -> list[psutil.Process]:
    """The process tree executing run_id under `up` (its command line names the run)."""
    for member in stack.children.tree(stack.up):
        with contextlib.suppress(psutil.Error):
            if run_id in " ".join(member.cmdline()):
                return [member, *member.children(recursive=True)]
    return []


def inject(stack: Stack, fault: Fault, rng: random.Random, produced_at: float) -> Any:
    """Run the fault; returns the `run` process when the fault used one (None otherwise)."""
    if fault.kind == "up":
        delay = rng.uniform(5, 60)
        time.sleep(max(0.0, produced_at + delay - time.monotonic()))
        fault.steps = describe_steps(stack, None)
        with stack.instance() as instance:
            fault.dead_runs = [r.run_id for r in active_runs(instance, None)]
        fault.processes = sigkill_tree(stack.children.tree(stack.up))
        fault.at_s = time.monotonic() - produced_at
        stack.up.wait()
        return None
    if fault.kind == "run":
        process = stack.children.start("run", cli("run"), stack.env, stack.logs / "run-fault.log")
        found = await_step(stack, fault.target, True, 900, lambda: process.poll() is not None)
        if found is None:
            fault.steps = [f"`run` exited {process.returncode} before a {fault.target} step"]
            return process
        run, _step, began = found
        time.sleep(max(0.0, began + rng.uniform(0, 3) - time.time()))
        fault.steps = describe_steps(stack, True)
        fault.run_id = run.run_id
        with stack.instance() as instance:  # in-process runs die with `run`: nothing ends them
            fault.dead_runs = [r.run_id for r in active_runs(instance, True)]
        fault.processes = sigkill_tree(stack.children.tree(process))
        fault.at_s = time.monotonic() - produced_at
        process.wait()
        return process
    # daemon: a run the sensors launched
    found = await_step(stack, fault.target, False, 600, lambda: stack.up.poll() is not None)
    if found is None:
        fault.steps = [f"no daemon run reached a {fault.target} step within 600 s"]
        return None
    run, _step, began = found
    time.sleep(max(0.0, began + rng.uniform(0, 3) - time.time()))
    fault.steps = describe_steps(stack, False)
    fault.run_id = run.run_id
    members = worker_of(stack, run.run_id)
    if not members:
        fault.steps.append("worker process not found")
        fault.at_s = None
        return None
    fault.processes = sigkill_tree(members)
    fault.dead_runs = [run.run_id]
    fault.at_s = time.monotonic() - produced_at
    return None


def recover(stack: Stack, fault: Fault, verdict: Verdict, dead_run_wait_s: float) -> None:
    """Sensors and schedules off, then `lambda-arch run` until it exits 0 (at most 5 times)."""
    stack.stop_automation()
    for attempt in range(1, RECOVERY_ATTEMPTS + 1):
        log = stack.logs / f"run-recover-{attempt}.log"
        process = stack.children.start("run", cli("run"), stack.env, log)
        began = time.monotonic()
        marked = False
        while process.poll() is None:
            time.sleep(2)
            if time.monotonic() - began > 1800:
                process.kill()
                process.wait()
                break
            if fault.dead_runs and not marked and time.monotonic() - began > dead_run_wait_s:
                marked = mark_dead_runs(stack, fault, verdict)
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        if process.returncode == 0:
            verdict.notes.append(
                f"recovered by `run` attempt {attempt} in {time.monotonic() - began:.0f} s"
            )
            return
        verdict.notes.append(
            f"`run` attempt {attempt} exited {process.returncode}: {' '.join(tail)[:200]}"
        )
    verdict.problems.append(f"`lambda-arch run` never exited 0 ({RECOVERY_ATTEMPTS} attempts)")


def mark_dead_runs(stack: Stack, fault: Fault, verdict: Verdict) -> bool:
    """Runs whose process the fault killed and that still look in flight: mark them failed, as
    an operator would in the UI (the instance has no run monitoring to do it)."""
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    with stack.instance() as instance:
        stuck = [
            run
            for run_id in fault.dead_runs
            for run in [instance.get_run_by_id(run_id)]
            if run is not None and run.status in NOT_FINISHED_STATUSES
        ]
        for run in stuck:
            instance.report_run_failed(run, "killed by the fault campaign (SIGKILL)")
    if stuck:
        verdict.notes.append(
            f"operator step: {len(stuck)} killed run(s) still {stuck[0].status.value} after the "
            "dead-run wait; `run` waited for them; marked failed by the campaign"
        )
    return True


def start_serve(stack: Stack) -> int:
    """`lambda-arch serve` on a port picked just now (one picked at the trial's start may be
    taken minutes later); another port when it says the port is in use. Returns the port."""
    for attempt in range(1, 4):
        port = free_port()
        process = stack.children.start(
            "serve",
            cli("serve", "--port", str(port)),
            stack.env,
            stack.logs / f"serve-{attempt}.log",
        )
        try:
            wait_until(
                "serve", lambda port=port: get_json(f"http://127.0.0.1:{port}/health"), 120, process
            )
            return port
        except RuntimeError:
            if process.poll() is None or attempt == 3:
                raise
    raise AssertionError("unreachable")


# A trial ------------------------------------------------------------------------------------------


def trial(index: int, args: argparse.Namespace, rng: random.Random) -> tuple[Fault, Verdict, float]:
    began = time.monotonic()
    kind = args.kinds[(index - 1) % len(args.kinds)]  # every kind in turn; the rest is random
    target = rng.choice(STEP_KINDS if kind != "up" else ("counts",))
    fault = Fault(kind, target if kind != "up" else "any (stack)")
    verdict = Verdict()
    seed = rng.randrange(1, 2**31)
    speedup = SPAN.total_seconds() * DENSITY / args.events
    home = Path(tempfile.mkdtemp(prefix=f"faults-{index}-"))
    ports = {name: free_port() for name in ("broker", "dagster", "connect")}
    stack = Stack(home, ports, Children())
    print(f"trial {index}: {kind} / {fault.target}, seed {seed}, home {home}", flush=True)
    try:
        stack.start_up()
        if kind == "run":
            stack.stop_automation()
        stack.produce(args.events, seed, START, speedup)
        produced_at = time.monotonic()
        records = capture(stack.bootstrap, "play-events", 1, args.events)
        unmatched = label(records, args.events, seed, START, speedup)
        if unmatched or len(records) != args.events:
            verdict.problems.append(
                f"capture: {len(records)} records of {args.events}, {unmatched} not from the generator"
            )
        inject(stack, fault, rng, produced_at)
        print(f"  fault: {fault.describe()}", flush=True)
        if kind == "up":
            stack.start_up()
            second_start = START + SPAN + timedelta(minutes=5)
            stack.produce(SECOND_BATCH, seed + 1, second_start, speedup)
            second = capture(stack.bootstrap, "play-events", 2, SECOND_BATCH)
            label(second, SECOND_BATCH, seed + 1, second_start, speedup)
            records += second
        recover(stack, fault, verdict, args.dead_run_wait)
        excused = check_lake(home, records, verdict)
        kept = [r for r in records if (r.incarnation, r.partition, r.offset) not in excused]
        expected = Expected(events_of(kept))
        ports["serve"] = start_serve(stack)
        check_answers(ports["serve"], expected, verdict, rng)
    except Exception as error:  # a trial that cannot finish is a failed trial, not the end
        verdict.problems.append(f"trial aborted: {type(error).__name__}: {error}")
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        handlers = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
        leftovers = stack.children.stop_all()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if leftovers:
            verdict.notes.append(f"killed {len(leftovers)} leftover processes at the stop")
        if not args.keep and not verdict.problems:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    return fault, verdict, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=3000, help="records per trial")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS), help="run,daemon,up")
    parser.add_argument(
        "--dead-run-wait",
        type=float,
        default=120.0,
        help="seconds `run` may wait for a killed run before the campaign marks it failed",
    )
    parser.add_argument("--keep", action="store_true", help="keep every trial's home")
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= set(FAULT_KINDS):
        parser.error(f"--kinds: choose from {','.join(FAULT_KINDS)}")
    rng = random.Random(args.seed)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    results: list[tuple[Fault, Verdict, float]] = []
    print(
        f"fault campaign: {args.trials} trials, {args.events} records each, seed {args.seed}, "
        f"{os.cpu_count()} cores"
    )
    try:
        for index in range(1, args.trials + 1):
            fault, verdict, seconds = trial(index, args, rng)
            results.append((fault, verdict, seconds))
            state = "EXACT" if verdict.exact else "NOT EXACT"
            print(
                f"  verdict: {state} in {seconds:.0f} s; {verdict.answers} answers compared; "
                f"lost {verdict.lost}, counted twice {verdict.twice}, reported lost {verdict.reported_lost}"
            )
            for note in verdict.notes:
                print(f"    - {note}")
            for problem in verdict.problems[:12]:
                print(f"    ! {problem}")
            if len(verdict.problems) > 12:
                print(f"    ! ... and {len(verdict.problems) - 12} more")
            sys.stdout.flush()
    except Interrupted as stop:
        print(f"interrupted ({stop}): every process was stopped")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not results:
        return 1
    exact = sum(v.exact for _, v, _ in results)
    lost = sum(v.lost for _, v, _ in results)
    twice = sum(v.twice for _, v, _ in results)
    reported = sum(v.reported_lost for _, v, _ in results)
    times = [s for _, _, s in results]
    print(
        f"{exact} of {len(results)} trials exact, {lost} events lost, {twice} counted twice "
        f"({reported} records lost with a killed broker and reported by the product); "
        f"{os.cpu_count()} cores, {statistics.median(times):.0f} s per trial "
        f"(min {min(times):.0f}, max {max(times):.0f}); load {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
