"""Serving read path: `lambda-arch serve` under a steady open-loop load against in-process calls.

Builds a serving store from N generated events (default 5M) spread over D days of event time
(default 7): the per-minute play counts of trending (minute, country, title_id) and discovery
(minute, country, discovery_source) go into the store's `*_batch` tables, one batch day per
UTC date, through `lambda_arch.serving.store.load_batch_days`, with the batch watermark at the end of
the last day (sessions are not loaded: no query here reads them). The store is cached under
`.bench/` keyed by the parameters, so only the first run pays for the generator (~80k events/s).

Then, per repeat (median of --repeats):
- in-process baseline: the same queries called on `ServingStore` one after another, no HTTP;
- HTTP: `lambda-arch serve` in its own process on a free loopback port, and a load generator
  (asyncio, keep-alive connections, one request per connection at a time) sending --rate
  requests/s for --duration seconds on an open-loop schedule: a request's latency runs from its
  scheduled time to the end of its response, so queueing anywhere (client, kernel, server)
  counts. Also printed: how late the load generator itself sent (its own share of the CPUs).

The query mix: 90% GET /trending (country: all one time in four, else one of the 20; as_of: a
random minute within the D days; window 60 or, one time in five, 1440; limit 10), 10% GET
/discovery (same country, as_of and window choices). Goal (issue 5): p99 <= 10 ms at 200
requests/s. Also printed, to tell where the time goes: latency from the actual send, the
client's own send lag, and CPU per request of the server, the load generator and the query.

    .venv/bin/python benchmarks/serving.py [--events 5000000] [--days 7] [--rate 200]
        [--duration 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_arch.ingest.generator import KIND_EVENT, PLAY_START, TrafficConfig, generate
from lambda_arch.ingest.schema import COUNTRIES, PlayEvent, parse_payload
from lambda_arch.runtime.broker import free_port
from lambda_arch.runtime.processes import isolated_env, spawn
from lambda_arch.serving import answers
from lambda_arch.serving.store import STORE_FILE, ServingStore, iso, load_batch_days, parse_iso

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 1, tzinfo=UTC)
CACHE = ROOT / ".bench"
COMPUTED_AT = "benchmarks/serving.py"
SERVER_READY_S = 60.0
GOAL_P99_MS = 10.0
LONG_WINDOW = 1440
ALL_COUNTRIES_SHARE = 0.25


# The store ------------------------------------------------------------------------------------


def store_home(events: int, days: int, seed: int) -> Path:
    """The cached LAMBDA_ARCH_HOME for these parameters (the store is home/serving/...)."""
    return CACHE / f"serving-e{events}-d{days}-s{seed}"


def build_store(home: Path, events: int, days: int, seed: int) -> dict[str, Any]:
    """Generate the events, count plays per minute and load them into a new store file."""
    end = START + timedelta(days=days)
    config = TrafficConfig(seed=seed, start=START, events_per_second=events / (days * 86_400))
    trending: Counter[tuple[str, int, str, int]] = Counter()
    discovery: Counter[tuple[str, int, str, str]] = Counter()
    started = time.monotonic()
    plays = beyond = 0
    last_time = START
    for record in itertools.islice(generate(config), events):
        if record.kind != KIND_EVENT or b'"play_start"' not in record.value:
            continue
        event = parse_payload(record.value)
        if not isinstance(event, PlayEvent) or event.event_type != PLAY_START:
            continue
        last_time = max(last_time, event.event_time)
        if event.event_time >= end:
            beyond += 1  # past the last batch day: not in the store
            continue
        plays += 1
        minute = int(event.event_time.timestamp()) // 60 * 60
        dt = event.event_time.date().isoformat()
        trending[(dt, minute, event.country, event.title_id)] += 1
        discovery[(dt, minute, event.country, event.discovery_source)] += 1
    generated_s = time.monotonic() - started

    path = home / "serving" / STORE_FILE
    partial = path.with_name(path.name + ".building")
    partial.parent.mkdir(parents=True, exist_ok=True)
    for leftover in partial.parent.glob(partial.name + "*"):
        leftover.unlink()
    store = ServingStore(partial)
    started = time.monotonic()
    rows = {}
    for view, counts in (("trending", trending), ("discovery", discovery)):
        by_day: dict[str, list[tuple[Any, ...]]] = {}
        for (dt, minute, country, key), count in sorted(counts.items()):
            by_day.setdefault(dt, []).append((minute, country, key, count))
        days_rows = {dt: (COMPUTED_AT, day_rows) for dt, day_rows in by_day.items()}
        rows[view] = load_batch_days(store, view, days_rows, end)
    store.close()  # the last connection: SQLite checkpoints and removes the WAL file
    partial.rename(path)  # only a complete store is cached
    return {
        "generated_s": round(generated_s, 1),
        "load_s": round(time.monotonic() - started, 1),
        "plays": plays,
        "plays_beyond_end": beyond,
        "last_event_time": iso(last_time),
        "rows": rows,
    }


# The queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One request: its path and the same call on ServingStore."""

    view: str
    params: dict[str, Any]

    @property
    def path(self) -> str:
        return f"/{self.view}?{urlencode(self.params)}"

    def call(self, store: ServingStore) -> dict[str, Any]:
        """What the API's endpoint does for this request, without HTTP."""
        as_of = parse_iso(self.params["as_of"])
        country = self.params.get("country")
        window = int(self.params["window"])
        if self.view == "trending":
            return answers.trending(
                store, country=country, as_of=as_of, window=window, limit=int(self.params["limit"])
            )
        return answers.discovery(store, country=country, as_of=as_of, window=window)


def make_queries(count: int, days: int, seed: int) -> list[Query]:
    """The query mix of the module docstring, reproducible from the seed."""
    rng = random.Random(seed)
    minutes = days * 24 * 60
    queries = []
    for _ in range(count):
        params: dict[str, Any] = {}
        if rng.random() >= ALL_COUNTRIES_SHARE:
            params["country"] = rng.choice(sorted(COUNTRIES))
        params["window"] = LONG_WINDOW if rng.random() < 0.2 else 60
        params["as_of"] = iso(START + timedelta(minutes=rng.randint(1, minutes)))
        if rng.random() < 0.9:
            params["limit"] = 10
            queries.append(Query("trending", params))
        else:
            queries.append(Query("discovery", params))
    return queries


# Measurements ---------------------------------------------------------------------------------


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max of latencies in seconds, as milliseconds."""
    ordered = sorted(samples_s)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1] * 1000}


def in_process(store: ServingStore, queries: list[Query]) -> dict[str, float]:
    """Latency of each query called directly on the store, one after another."""
    for query in queries[:50]:
        query.call(store)  # warm the page cache and the connection
    samples = []
    for query in queries:
        started = time.perf_counter()
        query.call(store)
        samples.append(time.perf_counter() - started)
    figures = percentiles(samples)
    figures["mean"] = statistics.fmean(samples) * 1000
    figures["queries"] = len(samples) + 50
    return figures


class Client:
    """Keep-alive HTTP/1.1 connections to one server: each carries one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.stale = 0

    async def get(self, path: str) -> int:
        """GET path; returns the status after reading the whole body. A kept-alive
        connection the server closed meanwhile (idle timeout) is retried on a new one, as
        HTTP clients do."""
        while self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, path)
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                self.stale += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.opened += 1
        return await self._exchange(reader, writer, path)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _load(
    port: int, queries: list[Query], rate: float, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    client = Client(port)
    latencies: list[float] = []
    from_send: list[float] = []
    send_lag: list[float] = []
    errors: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds

    async def one(query: Query, due: float, counted: bool) -> None:
        lag = clock() - due
        try:
            status = await client.get(query.path)
        except (OSError, asyncio.IncompleteReadError) as error:
            errors[type(error).__name__] += 1
            return
        if not counted:
            return
        if status != 200:
            errors[f"HTTP {status}"] += 1
        done = clock()
        latencies.append(done - due)
        from_send.append(done - due - lag)
        send_lag.append(lag)

    total = int((warmup_s + duration_s) * rate)
    warm = int(warmup_s * rate)
    begin = clock() + 0.05
    for index in range(total):
        due = begin + index / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(queries[index % len(queries)], due, index >= warm))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_s = clock() - (begin + warm / rate)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    client.close()
    figures: dict[str, Any] = percentiles(latencies) if latencies else {}
    figures["achieved_rps"] = (total - warm) / sent_s
    figures["answered"] = len(latencies)
    figures["errors"] = dict(errors)
    figures["connections"] = client.opened
    figures["stale_retries"] = client.stale
    figures["from_send"] = percentiles(from_send) if from_send else {}
    figures["send_lag_p99"] = percentiles(send_lag)["p99"] if send_lag else float("nan")
    return figures


def http_load(
    port: int, queries: list[Query], rate: float, duration_s: float, warmup_s: float = 2.0
) -> dict[str, Any]:
    """Open-loop load at `rate` requests/s for duration_s (after an uncounted warm-up)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(_load(port, queries, rate, duration_s, warmup_s))
    return asyncio.run(_load(port, queries, rate, duration_s, warmup_s))


# The server -----------------------------------------------------------------------------------


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`lambda-arch serve` on 127.0.0.1:port over home's store, in its own process group."""
    command = [sys.executable, "-m", "lambda_arch.cli", "serve", "--port", str(port)]
    env = isolated_env({"LAMBDA_ARCH_HOME": str(home)})
    process = spawn(command, log_path=log, env=env, cwd=ROOT)
    deadline = time.monotonic() + SERVER_READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lambda-arch serve exited with {process.returncode}: {log}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer,
        ):
            if answer.status == 200:
                return process
        time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"lambda-arch serve did not answer within {SERVER_READY_S:.0f} s: {log}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's PID, SIGKILL after 10 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Main -----------------------------------------------------------------------------------------


def _line(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name}: p50 {figures['p50']:.2f} ms, p95 {figures['p95']:.2f} ms, "
        f"p99 {figures['p99']:.2f} ms, max {figures['max']:.2f} ms"
    )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="generated records")
    parser.add_argument("--days", type=int, default=7, help="days of event time they span")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0, help="HTTP requests/s")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached store")
    args = parser.parse_args()

    home = store_home(args.events, args.days, args.seed)
    path = home / "serving" / STORE_FILE
    if args.rebuild or not path.exists():
        print(f"building the store from {args.events:,} events over {args.days} days ...")
        built = build_store(home, args.events, args.days, args.seed)
        print(f"built {path}: {built}")
    store = ServingStore(path)
    counts = {view: store.row_counts(view) for view in ("trending", "discovery")}
    size_mb = path.stat().st_size / 1e6
    queries = make_queries(int(args.rate * args.duration) + 1000, args.days, args.seed)

    port = free_port()
    log = home / "serve.log"
    loads: list[tuple[float, ...]] = [os.getloadavg()]
    baseline_runs: list[dict[str, Any]] = []
    http_runs: list[dict[str, Any]] = []
    server = start_server(home, port, log)
    try:
        for attempt in range(args.repeats):
            cpu = time.process_time()
            baseline = in_process(store, queries[: int(args.rate * args.duration)])
            baseline["cpu_ms"] = (time.process_time() - cpu) * 1000 / baseline["queries"]
            server_cpu, cpu = _cpu_s(server.pid), time.process_time()
            loaded = http_load(port, queries, args.rate, args.duration)
            answered = max(loaded["answered"], 1)
            loaded["client_cpu_ms"] = (time.process_time() - cpu) * 1000 / answered
            loaded["server_cpu_ms"] = (_cpu_s(server.pid) - server_cpu) * 1000 / answered
            baseline_runs.append(baseline)
            http_runs.append(loaded)
            loads.append(os.getloadavg())
            print(
                f"run {attempt + 1}: {_line('http', loaded)}, {loaded['achieved_rps']:.1f} req/s, "
                f"{loaded['answered']} answered, errors {loaded['errors']}, "
                f"{loaded['connections']} connections ({loaded['stale_retries']} stale), client "
                f"send lag p99 {loaded['send_lag_p99']:.2f} ms, from send p99 "
                f"{loaded['from_send']['p99']:.2f} ms, CPU/request server "
                f"{loaded['server_cpu_ms']:.2f} ms client {loaded['client_cpu_ms']:.2f} ms; "
                f"{_line('in-process', baseline)}, CPU/query {baseline['cpu_ms']:.2f} ms "
                f"(load {loads[-1][0]:.1f})"
            )
    finally:
        stop_server(server)
        store.close()

    figures = {
        key: _median(http_runs, key)
        for key in (
            "p50",
            "p95",
            "p99",
            "max",
            "achieved_rps",
            "send_lag_p99",
            "server_cpu_ms",
            "client_cpu_ms",
        )
    }
    from_send = {
        key: statistics.median(run["from_send"][key] for run in http_runs)
        for key in ("p50", "p95", "p99", "max")
    }
    base = {
        key: _median(baseline_runs, key) for key in ("p50", "p95", "p99", "max", "mean", "cpu_ms")
    }
    print()
    print(
        f"cores: {os.cpu_count()}, load average (1 min) before {loads[0][0]:.1f}, "
        f"during runs {', '.join(f'{load[0]:.1f}' for load in loads[1:])}"
    )
    print(
        f"store: {args.events:,} events over {args.days} days from {iso(START)}, "
        f"{size_mb:.1f} MB, rows {counts}"
    )
    print(
        f"load: {args.rate:g} requests/s open loop for {args.duration:g} s, "
        f"median of {args.repeats} runs"
    )
    print(
        f"{_line('HTTP (lambda-arch serve)', figures)}, achieved "
        f"{figures['achieved_rps']:.1f} req/s, client send lag p99 {figures['send_lag_p99']:.2f} ms"
    )
    print(f"{_line('HTTP measured from the actual send', from_send)}")
    print(f"{_line('in-process ServingStore', base)}, mean {base['mean']:.2f} ms")
    print(
        f"CPU per request: server {figures['server_cpu_ms']:.2f} ms "
        f"({figures['server_cpu_ms'] * args.rate / 1000:.2f} cores at {args.rate:g}/s), "
        f"load generator {figures['client_cpu_ms']:.2f} ms, in-process query "
        f"{base['cpu_ms']:.2f} ms"
    )
    print(
        f"ratio HTTP / in-process: p50 {figures['p50'] / base['p50']:.1f}, "
        f"p99 {figures['p99'] / base['p99']:.1f}"
    )
    verdict = "met" if figures["p99"] <= GOAL_P99_MS else "NOT met"
    print(f"goal p99 <= {GOAL_P99_MS:g} ms: {verdict}")


if __name__ == "__main__":
    main()
