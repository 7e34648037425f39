"""Fixed cost of one speed run: a classic local session per process against a warm Connect server.

Every run is what a Dagster run of the speed layer does, in a new Python process: import, get a
session (lambda_arch.runtime.spark.build_session), register the Kafka source, run the trending query
with availableNow over a topic with 0 new events, stop the session, exit. The wall time of the
whole process is measured. Mode (a) starts a JVM in every run (a local session, as without
`lambda-arch up`); mode (b) connects to one running Spark Connect server (what `up` starts).
Runs alternate between the two, so load drift on a shared machine hits both alike; a first,
untimed run per mode reads the topic's events (and pays the Connect server's first client).

The script starts its own embedded broker and Connect server (free ports, a temporary
LAMBDA_ARCH_HOME) and stops them by PID.

    .venv/bin/python benchmarks/run_fixed_cost.py [--runs 5] [--events 200] [--master local[2]]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from lambda_arch.runtime.spark_connect import ConnectServer

TOPIC = "bench-fixed-cost"
MODES = ("local", "connect")
LABELS = {"local": "(a) local session per run", "connect": "(b) Spark Connect client"}
PHASES = ("imported", "session", "query", "stopped")
T0_VARIABLE = "BENCH_T0"  # the parent's clock (time.time()) when it spawned the run


def child() -> None:
    """One run; prints its phases (seconds since spawn) as JSON on the last line of stdout."""
    t0 = float(os.environ[T0_VARIABLE])
    from lambda_arch.common.config import load_settings
    from lambda_arch.ingest.kafka_source import register_kafka_source
    from lambda_arch.runtime.spark import build_session
    from lambda_arch.speed.layer import run_trending_speed

    phases = {"imported": time.time() - t0}
    settings = load_settings()
    spark = build_session(settings, app_name="bench-fixed-cost")
    register_kafka_source(spark)  # as resources.SparkResource.session() does
    phases["session"] = time.time() - t0
    report = run_trending_speed(spark, settings)
    phases["query"] = time.time() - t0
    spark.stop()  # as a run's resource teardown does
    phases["stopped"] = time.time() - t0
    print(json.dumps({"phases": phases, "events_read": report.events_read}))


def produce(bootstrap: str, events: int) -> None:
    ensure_topic(bootstrap, TOPIC, 2)
    producer = make_producer(bootstrap)
    for record in itertools.islice(generate(TrafficConfig(seed=7)), events):
        producer.send(TOPIC, key=record.key, value=record.value)
    producer.flush()
    producer.close()


def run_env(home: Path, bootstrap: str, master: str, remote: str | None) -> dict[str, str]:
    """This environment without lambda-arch settings, plus the run's; SPARK_REMOTE for (b)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LAMBDA_ARCH_") and name not in ("SPARK_REMOTE", "DAGSTER_HOME")
    }
    env.update(
        LAMBDA_ARCH_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        LAMBDA_ARCH_TOPIC=TOPIC,
        LAMBDA_ARCH_SPARK_MASTER=master,
        PYTHONUNBUFFERED="1",
    )
    if remote is not None:
        env["SPARK_REMOTE"] = remote
    return env


def run_once(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one run process, and what it printed."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--child"],
        env=env | {T0_VARIABLE: repr(time.time())},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"a run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, json.loads(result.stdout.strip().splitlines()[-1])


def summary(seconds: list[float]) -> str:
    return (
        f"median {statistics.median(seconds):5.2f} s  min {min(seconds):5.2f} s  "
        f"max {max(seconds):5.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode")
    parser.add_argument("--events", type=int, default=200, help="events the first runs read")
    parser.add_argument("--master", default="local[2]", help="master of (a) and of the server")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    phases: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-fixed-cost-") as temp:
        homes = {mode: Path(temp) / mode for mode in MODES}
        broker = EmbeddedBroker(free_port(), log_path=Path(temp) / "broker.log").start()
        settings = Settings(
            LAMBDA_ARCH_HOME=str(homes["connect"]), LAMBDA_ARCH_SPARK_MASTER=args.master
        )
        server = ConnectServer(settings, port=free_port())
        try:
            produce(broker.bootstrap_servers, args.events)
            server_s = server.start()
            print(f"Spark Connect server {server.url}: answered {server_s:.1f} s after launch")
            bootstrap = broker.bootstrap_servers
            envs = {
                "local": run_env(homes["local"], bootstrap, args.master, None),
                "connect": run_env(homes["connect"], bootstrap, args.master, server.url),
            }
            for mode in MODES:
                seconds, out = run_once(envs[mode])
                print(f"first run {mode}: {seconds:.2f} s, {out['events_read']} events read")
            for _ in range(args.runs):
                for mode in MODES:
                    seconds, out = run_once(envs[mode])
                    if out["events_read"] != 0:
                        raise SystemExit(f"a {mode} run read {out['events_read']} events, not 0")
                    times[mode].append(seconds)
                    phases[mode].append(out["phases"])
                    print(f"  {mode:<8} {seconds:6.2f} s", flush=True)
        finally:
            server.stop()
            broker.stop()

    print(
        f"\ncpu_count: {os.cpu_count()}, master: {args.master}, runs per mode: {args.runs}, "
        f"load average now: {os.getloadavg()[0]:.1f}"
    )
    for mode in MODES:
        print(f"{LABELS[mode]:<27} {summary(times[mode])}")
        step = {name: statistics.median(p[name] for p in phases[mode]) for name in PHASES}
        print(
            f"{'':<27} median seconds since spawn: imports {step['imported']:.2f}, session "
            f"{step['session']:.2f}, query done {step['query']:.2f}, stopped {step['stopped']:.2f}"
        )
    local, connect = (statistics.median(times[mode]) for mode in MODES)
    print(f"ratio (b)/(a) of the medians: {connect / local:.2f} ({local / connect:.1f}x lower)")


if __name__ == "__main__":
    main()
