"""Freshness: how long a play event takes from Kafka to an answer of `lambda-arch serve`.

Starts, in a temporary LAMBDA_ARCH_HOME with free loopback ports:
- `lambda-arch up --no-traffic` (embedded broker, Spark Connect server, Dagster webserver and
  daemon: the lag sensor launches speed runs, each landing, counting and serving what is new);
- `lambda-arch produce --rate R --events 0 --quiet`: steady generated traffic (default 2,000
  events/s, event clock = wall clock);
- `lambda-arch serve` on a free port.

After a warm-up (the first speed run has served, plus --warmup seconds) it sends --markers
marker events one at a time: a valid play_start of a title no generated event uses, event_time
now, country SE; then polls the default query `GET /trending?country=SE&window=5&limit=1000`
(no as_of: T is the end of the newest minute the speed layer has counted, CONTRACT section 6)
until the title shows; the 5-minute window keeps the marker's minute in it while traffic moves
T on. Between markers it waits a random 0 to --gap seconds, so markers land at
every phase of the sensor / run cycle. Prints p50, p95 and max of marker-to-visible latency
(goal p95 <= 30 s) and, from the Dagster instance of that home, what bounds it: per speed run
its queue-to-start delay, its duration and its steps (landing, trending_speed, ...,
trending_serving), the lag sensor's tick interval, and per marker how its latency splits into
waiting for a run to be created, queue-to-start, and run start to visible. With --stream-s
(default 600: `make demo`'s setting) trending and discovery run as continuous queries
(views_stream_job) and it prints, per marker, the wait for the micro-batch that read it, that
micro-batch, and commit to visible, from the times of the checkpoint's offset and commit logs.

Every process it starts runs in its own process group and is stopped by PID in a finally block
(SIGTERM; SIGKILL for whatever of the tree is left after a timeout).

    .venv/bin/python benchmarks/freshness.py [--markers 20] [--rate 2000] [--warmup 30]
        [--stream-s 600] [--trigger-s 2]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_arch.common.times import format_time
from lambda_arch.runtime.broker import free_port
from lambda_arch.runtime.processes import isolated_env, spawn

ROOT = Path(__file__).resolve().parents[1]
MARKER_TITLE_BASE = 9_000_000  # generated titles are 1..TrafficConfig.titles (2,000)
MARKER_MEMBER = 7
# A small country (1.5% of members): at 2,000 events/s every country together has over 1,000
# titles in 2 minutes, and a one-play marker (the largest title_id, last among ties) would fall
# below the API's largest limit; one country's window stays far below it.
MARKER_COUNTRY = "SE"
# The marker query's window: the marker's minute stays in it while other traffic moves T on.
MARKER_WINDOW_MIN = 5
GOAL_P95_S = 30.0
POLL_S = 0.5
SPEED_JOB = "speed_job"
LAG_SENSOR = "kafka_lag_sensor"


@dataclass
class Marker:
    """One injected event and when it became visible (wall-clock epoch seconds)."""

    title_id: int
    event_time: datetime
    sent_at: float
    visible_at: float | None = None

    @property
    def latency_s(self) -> float | None:
        return None if self.visible_at is None else self.visible_at - self.sent_at


@dataclass
class Children:
    """Every process this script started, and every process seen under them."""

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.processes[name] = spawn(command, log_path=log, env=env, cwd=ROOT)
        self.remember()

    def remember(self) -> None:
        """Note the live tree of every child (for clean-up of what a stop leaves behind)."""
        for process in self.processes.values():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(process.pid)
                for member in (root, *root.children(recursive=True)):
                    self.seen[member.pid] = member

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with code {process.returncode}")

    def stop_one(self, name: str, timeout_s: float = 30.0) -> None:
        """SIGTERM one child by PID and wait for it (SIGKILL after timeout_s); forget it.

        The child alone: `up` stops its own children in order, and lands what its memory
        broker holds in a process it starts while stopping. Signalling its whole tree at once
        (runtime.processes.stop_process) took its Spark Connect server from under that process,
        which then hung, orphaned, after `up` was killed."""
        process = self.processes.pop(name)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"{name} (pid {process.pid}) did not stop in {timeout_s:.0f} s: killing it")
            process.kill()
            process.wait()

    def stop_all(self, timeout_s: float = 60.0) -> None:
        """Stop each child in reverse start order; then kill leftovers of the tree."""
        self.remember()
        for name in reversed(list(self.processes)):
            self.stop_one(name, timeout_s)
        leftovers = [p for p in self.seen.values() if p.is_running()]  # checks the start time
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(leftovers, timeout=10)


def child_env(home: Path, ports: dict[str, int], stream_s: int, trigger_s: float) -> dict[str, str]:
    """This environment without lambda-arch, Kafka, Spark or Dagster settings, plus ours."""
    return isolated_env(
        {
            "LAMBDA_ARCH_HOME": str(home),
            "LAMBDA_ARCH_BROKER_PORT": str(ports["broker"]),
            "LAMBDA_ARCH_DAGSTER_PORT": str(ports["dagster"]),
            "LAMBDA_ARCH_SPARK_CONNECT_PORT": str(ports["connect"]),
            "LAMBDA_ARCH_SPEED_STREAM_S": str(stream_s),
            "LAMBDA_ARCH_SPEED_TRIGGER_S": f"{trigger_s:g}",
            "PYTHONUNBUFFERED": "1",
        }
    )


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lambda_arch.cli", *args]


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.load(answer)


def wait_for(what: str, check: Any, children: Children, timeout_s: float) -> None:
    """Poll check() until true while every child runs; SystemExit after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children.check()
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        children.remember()
        time.sleep(POLL_S)
    raise SystemExit(f"{what}: not within {timeout_s:.0f} s")


def start_stack(children: Children, env: dict[str, str], home: Path, timeout_s: float) -> None:
    """`lambda-arch up --no-traffic` in the home, waited for until it says it is up."""
    up_log = home / "up.out"
    children.start("up", cli("up", "--no-traffic"), env, up_log)
    wait_for(
        "lambda-arch up", lambda: "lambda-arch is up" in up_log.read_text(), children, timeout_s
    )


def send_marker(producer: Any, topic: str, title_id: int) -> Marker:
    """A valid play_start of title_id at the wall clock now, sent and flushed."""
    now = datetime.now(UTC)
    document = {
        "event_id": str(uuid.uuid4()),
        "event_type": "play_start",
        "event_time": format_time(now),
        "member_id": MARKER_MEMBER,
        "title_id": title_id,
        "country": MARKER_COUNTRY,
        "device": "tv",
        "discovery_source": "search",
        "position_ms": 0,
    }
    sent_at = time.time()
    producer.send(topic, key=str(MARKER_MEMBER).encode(), value=json.dumps(document).encode())
    producer.flush()
    return Marker(title_id, now, sent_at)


def marker_url(port: int, marker: Marker) -> str:
    """The default query (what a dashboard asks): no as_of, a window that holds the marker."""
    query = urlencode({"country": MARKER_COUNTRY, "window": MARKER_WINDOW_MIN, "limit": 1000})
    return f"http://127.0.0.1:{port}/trending?{query}"


def wait_visible(port: int, marker: Marker, children: Children, timeout_s: float) -> None:
    url = marker_url(port, marker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            titles = get_json(url)["titles"]
            if any(t["title_id"] == marker.title_id for t in titles):
                marker.visible_at = time.time()
                return
        children.check()
        time.sleep(POLL_S)


# What bounds it: the Dagster instance ---------------------------------------------------------


@dataclass
class SpeedRun:
    """One speed run's timeline (epoch seconds) and step durations."""

    run_id: str
    status: str
    created: float
    started: float | None
    ended: float | None
    step_start: dict[str, float]
    step_end: dict[str, float]

    @property
    def queue_s(self) -> float | None:
        return None if self.started is None else self.started - self.created

    @property
    def duration_s(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started

    def step_s(self, step: str) -> float | None:
        if step in self.step_start and step in self.step_end:
            return self.step_end[step] - self.step_start[step]
        return None


def _epoch(moment: datetime) -> float:
    """Epoch seconds of a Dagster timestamp (naive ones are UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def speed_runs(dagster_home: Path) -> list[SpeedRun]:
    """Every speed run of the instance, oldest first, with its step start and end times."""
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        runs = []
        for record in instance.get_run_records(filters=RunsFilter(job_name=SPEED_JOB)):
            starts: dict[str, float] = {}
            ends: dict[str, float] = {}
            kinds = {
                DagsterEventType.STEP_START,
                DagsterEventType.STEP_SUCCESS,
                DagsterEventType.STEP_FAILURE,
            }
            for entry in instance.all_logs(record.dagster_run.run_id, of_type=kinds):
                if entry.step_key is None or entry.dagster_event is None:
                    continue
                target = starts if entry.dagster_event_type == DagsterEventType.STEP_START else ends
                target[entry.step_key] = entry.timestamp
            runs.append(
                SpeedRun(
                    record.dagster_run.run_id,
                    record.dagster_run.status.value,
                    _epoch(record.create_timestamp),
                    record.start_time,
                    record.end_time,
                    starts,
                    ends,
                )
            )
        return sorted(runs, key=lambda run: run.created)
    finally:
        instance.dispose()


def failed_steps(dagster_home: Path) -> list[str]:
    """One line per failed step of any run of the instance: job, step and the error's message."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        lines = []
        for record in instance.get_run_records():
            run = record.dagster_run
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE):
                data = entry.dagster_event.event_specific_data if entry.dagster_event else None
                error = getattr(data, "error", None)
                message = error.message.strip().splitlines()[0] if error else "?"
                lines.append(f"{run.job_name} {run.run_id[:8]} step {entry.step_key}: {message}")
        return lines
    finally:
        instance.dispose()


def sensor_ticks(dagster_home: Path, name: str) -> list[float]:
    """Timestamps of the sensor's ticks, oldest first (empty when it cannot be read)."""
    from dagster import DagsterInstance
    from dagster._core.scheduler.instigation import InstigatorType

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == name:
                ticks = instance.get_ticks(
                    state.instigator_origin_id, state.selector_id, limit=2000
                )
                return sorted(tick.timestamp for tick in ticks)
        return []
    finally:
        instance.dispose()


def step_order(runs: list[SpeedRun]) -> list[str]:
    """Every step key of the runs (speed steps, asset checks, serving steps), in the order
    they run: by median start offset within their run."""
    offsets: dict[str, list[float]] = {}
    for run in runs:
        if run.started is None:
            continue
        for step, at in run.step_start.items():
            offsets.setdefault(step, []).append(at - run.started)
    return sorted(offsets, key=lambda step: statistics.median(offsets[step]))


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"median {statistics.median(ordered):.1f} s, p95 {p95:.1f} s, "
        f"min {ordered[0]:.1f} s, max {ordered[-1]:.1f} s (n={len(ordered)})"
    )


def _clock(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S.%f")[:-4]


def report_runs(
    runs: list[SpeedRun], markers: list[Marker], ticks: list[float], per_marker: bool
) -> None:
    """What bounds freshness: sensor ticks, run queueing, run and step durations, per marker
    (when speed runs serve the markers, not a continuous query)."""
    from sensors.kafka_lag import LAG_SENSOR_INTERVAL_S

    if markers:
        first = min(m.sent_at for m in markers)
        last = max(m.visible_at or m.sent_at for m in markers)
        window = [r for r in runs if r.ended is None or r.ended >= first - 1]
        window = [r for r in window if r.created <= last + 1]
        scope = "while markers were in flight"
    else:
        first, last, window, scope = -math.inf, math.inf, runs, "in all (no markers)"
    print()
    print(f"speed runs {scope}: {len(window)} (of {len(runs)} in all)")
    steps = step_order(window)
    for run in window:
        queue = f"{run.queue_s:.1f}" if run.queue_s is not None else "-"
        duration = f"{run.duration_s:.1f}" if run.duration_s is not None else "-"
        timeline = ", ".join(
            f"{step} {seconds:.1f}" for step in steps if (seconds := run.step_s(step)) is not None
        )
        print(
            f"  run {run.run_id[:8]} {run.status}: created {_clock(run.created)}, queue {queue} s, "
            f"run {duration} s; steps in order (s): {timeline}"
        )
    done = [r for r in window if r.duration_s is not None]
    print(f"  queue-to-start: {_stats([r.queue_s for r in done if r.queue_s is not None])}")
    print(f"  run duration:   {_stats([r.duration_s for r in done if r.duration_s is not None])}")
    for step in steps:
        values = [seconds for r in done if (seconds := r.step_s(step)) is not None]
        print(f"  step {step}: {_stats(values)}")
    first_step = [
        min(r.step_start.values()) - r.started for r in done if r.started and r.step_start
    ]
    print(f"  run start to first step (process, resources, Spark client): {_stats(first_step)}")
    between = [
        b.created - a.ended
        for a, b in itertools.pairwise(done)
        if a.ended is not None and b.created >= a.ended
    ]
    print(f"  previous run end to next run created (sensor wait): {_stats(between)}")
    in_window = [t for t in ticks if first - 60 <= t <= last + 60]
    intervals = [b - a for a, b in itertools.pairwise(in_window)]
    print(
        f"lag sensor: minimum interval {LAG_SENSOR_INTERVAL_S} s; observed tick interval "
        f"{_stats(intervals)}"
    )

    if not markers or not per_marker:
        return
    print()
    print("per marker: latency = wait for a run to be created + queue + run start to visible")
    waits, queues, runnings = [], [], []
    for marker in markers:
        if marker.visible_at is None:
            print(f"  title {marker.title_id}: not visible")
            continue
        # The run that served it: the first whose counts step (trending_speed) started after the send.
        serving = next(
            (
                r
                for r in runs
                if r.step_start.get("counts", 0) >= marker.sent_at and r.started is not None
            ),
            None,
        )
        if serving is None or serving.started is None:
            print(f"  title {marker.title_id}: {marker.latency_s:.1f} s (run not found)")
            continue
        # A run that started before the send still serves it when its counts step
        # reads the topic after the send: then all of the latency counts as run time.
        wait = max(serving.created - marker.sent_at, 0.0)
        queue = max(serving.started - max(serving.created, marker.sent_at), 0.0)
        running = marker.visible_at - max(serving.started, marker.sent_at)
        waits.append(wait), queues.append(queue), runnings.append(running)
        print(
            f"  title {marker.title_id}: {marker.latency_s:5.1f} s = wait {wait:5.1f} + "
            f"queue {queue:4.1f} + run {running:5.1f} (run {serving.run_id[:8]})"
        )
    print(f"  wait for a run:  {_stats(waits)}")
    print(f"  queue-to-start:  {_stats(queues)}")
    print(f"  run to visible:  {_stats(runnings)}")


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of a checkpoint: when Spark planned it (offset log) and committed it."""

    batch_id: int
    planned: float
    committed: float


def micro_batches(checkpoint: Path) -> list[MicroBatch]:
    """Every committed micro-batch of a local checkpoint, from its log files' times."""
    batches = []
    for commit in (checkpoint / "commits").glob("[0-9]*"):
        offsets = checkpoint / "offsets" / commit.name
        if offsets.exists():
            batches.append(
                MicroBatch(int(commit.name), offsets.stat().st_mtime, commit.stat().st_mtime)
            )
    return sorted(batches, key=lambda batch: batch.batch_id)


def report_stream(batches: list[MicroBatch], markers: list[Marker], trigger_s: float) -> None:
    """What bounds freshness with a continuous trending query: per marker, the wait for the
    micro-batch that read it, that batch, and commit to visible (serving refresh, API poll)."""
    print()
    print(f"continuous trending query: {len(batches)} micro-batches, trigger every {trigger_s:g} s")
    print(f"  micro-batch (plan to commit): {_stats([b.committed - b.planned for b in batches])}")
    spacing = [b.planned - a.planned for a, b in itertools.pairwise(batches)]
    print(f"  between micro-batch starts:   {_stats(spacing)}")
    print("per marker: latency = wait for its micro-batch + micro-batch + commit to visible")
    waits, runs, rests = [], [], []
    for marker in markers:
        if marker.visible_at is None:
            print(f"  title {marker.title_id}: not visible")
            continue
        batch = next((b for b in batches if b.planned >= marker.sent_at), None)
        if batch is None:
            print(f"  title {marker.title_id}: {marker.latency_s:.1f} s (micro-batch not found)")
            continue
        wait, run = batch.planned - marker.sent_at, batch.committed - batch.planned
        rest = marker.visible_at - batch.committed
        waits.append(wait), runs.append(run), rests.append(rest)
        print(
            f"  title {marker.title_id}: {marker.latency_s:5.1f} s = wait {wait:4.1f} + "
            f"batch {batch.batch_id} {run:4.1f} + to visible {rest:4.1f}"
        )
    print(f"  wait for its micro-batch: {_stats(waits)}")
    print(f"  micro-batch:              {_stats(runs)}")
    print(f"  commit to visible:        {_stats(rests)}")


# Main -----------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """SIGINT or SIGTERM: stop sending markers, clean up, report what was measured."""


def _interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markers", type=int, default=20, help="marker events, one at a time")
    parser.add_argument("--rate", type=float, default=2000.0, help="steady traffic, events/s")
    parser.add_argument("--warmup", type=float, default=30.0, help="s after the first serve")
    parser.add_argument("--gap", type=float, default=20.0, help="most s between markers")
    parser.add_argument("--marker-timeout", type=float, default=300.0, help="s per marker")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="s for the stack")
    parser.add_argument(
        "--budget", type=float, default=1500.0, help="s in all; no new marker after it"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--stream-s",
        type=int,
        default=600,
        help="LAMBDA_ARCH_SPEED_STREAM_S: seconds per continuous views run (0: availableNow "
        "speed runs only, launched by the lag sensor)",
    )
    parser.add_argument("--trigger-s", type=float, default=2.0, help="LAMBDA_ARCH_SPEED_TRIGGER_S")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    warnings.filterwarnings("ignore", module="dagster")  # beta notes when it loads definitions
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="lambda-arch-freshness-"))
    ports = {name: free_port() for name in ("broker", "dagster", "connect", "api")}
    env = child_env(home, ports, args.stream_s, args.trigger_s)
    batches: list[MicroBatch] = []
    failures: list[str] = []
    children = Children()
    markers: list[Marker] = []
    runs: list[SpeedRun] = []
    ticks: list[float] = []
    producer = None
    loads = [os.getloadavg()]
    started = time.monotonic()
    deadline = started + args.budget
    print(f"home {home}, ports {ports}, cores {os.cpu_count()}, load {loads[0][0]:.1f}")
    mode = (
        f"continuous views runs of {args.stream_s} s, trigger {args.trigger_s:g} s"
        if args.stream_s
        else "availableNow speed runs only"
    )
    print(f"speed layer: {mode}", flush=True)
    try:
        start_stack(children, env, home, args.ready_timeout)
        print(f"stack up after {time.monotonic() - started:.0f} s", flush=True)
        children.start(
            "traffic",
            cli("produce", "--rate", f"{args.rate:g}", "--events", "0", "--quiet"),
            env,
            home / "traffic.out",
        )
        children.start("serve", cli("serve", "--port", str(ports["api"])), env, home / "serve.out")
        health = f"http://127.0.0.1:{ports['api']}/health"
        wait_for(
            "first speed run served",
            lambda: get_json(health)["views"]["trending"]["speed_watermark"] is not None,
            children,
            args.ready_timeout,
        )
        print(f"first speed run served after {time.monotonic() - started:.0f} s", flush=True)
        time.sleep(args.warmup)
        children.check()

        from lambda_arch.ingest.producer import make_producer

        producer = make_producer(f"127.0.0.1:{ports['broker']}")
        for index in range(args.markers):
            if time.monotonic() > deadline:
                print(f"time budget of {args.budget:.0f} s spent: no more markers")
                break
            time.sleep(rng.uniform(0, args.gap))
            marker = send_marker(producer, "play-events", MARKER_TITLE_BASE + index)
            markers.append(marker)
            wait_visible(ports["api"], marker, children, args.marker_timeout)
            children.remember()
            loads.append(os.getloadavg())
            shown = f"{marker.latency_s:.1f} s" if marker.latency_s is not None else "timed out"
            print(
                f"marker {index + 1}/{args.markers}: {shown} (load {loads[-1][0]:.1f})",
                flush=True,
            )
    except (_Interrupted, SystemExit) as stop:
        print(f"stopped early: {stop or 'interrupted'}", flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # the clean-up is not cut short
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)
        children.stop_all()
        with contextlib.suppress(Exception):
            batches = micro_batches(home / "checkpoints" / "counts")
        with contextlib.suppress(Exception):
            runs = speed_runs(home / "dagster")
        with contextlib.suppress(Exception):
            failures = failed_steps(home / "dagster")
            ticks = sensor_ticks(home / "dagster", LAG_SENSOR)
        traffic_log = home / "traffic.out"
        tail = traffic_log.read_text()[-300:] if traffic_log.exists() else ""
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home}")

    latencies = [m.latency_s for m in markers if m.latency_s is not None]
    loads.append(os.getloadavg())
    print()
    print(
        f"cores: {os.cpu_count()}, load average (1 min) at start {loads[0][0]:.1f}, "
        f"later median {statistics.median(lo[0] for lo in loads[1:]):.1f}, "
        f"max {max(lo[0] for lo in loads[1:]):.1f}"
    )
    print(f"traffic: {args.rate:g} events/s generated; producer output tail: {tail.strip()!r}")
    ordered = sorted(latencies)
    if ordered:
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(
            f"marker to visible ({len(ordered)} of {len(markers)} markers): "
            f"p50 {statistics.median(ordered):.1f} s, p95 {p95:.1f} s, max {ordered[-1]:.1f} s; "
            f"goal p95 <= {GOAL_P95_S:g} s: {'met' if p95 <= GOAL_P95_S else 'NOT met'}"
        )
    else:
        print(f"no marker became visible ({len(markers)} sent)")
    if args.stream_s:
        report_stream(batches, markers, args.trigger_s)
    for failure in failures:
        print(f"failed: {failure}")
    report_runs(runs, markers, ticks, per_marker=not args.stream_s)


if __name__ == "__main__":
    main()
