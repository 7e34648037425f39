"""Catch-up of `lambda-arch run` on a backlog, against a raw kafka-python read of the same topic.

What a user meets after a replay: `lambda-arch up --no-traffic` (fresh home, free loopback
ports), sensors and schedules stopped (so `run` does all the work and nothing races it), a
backlog of N generated events (default 300,000; 5% duplicates, 3% late, 1% malformed) spread
over 2.5 days of event time by `lambda-arch produce`, then `lambda-arch run` timed from outside
(wall clock of the process: the speed catch-up, the owed batch days, the checks and the serving
refresh). The baseline, in the same run: one kafka-python consumer reading the same topic from
the beginning to its end offsets (`benchmarks/speed_layer.py`'s raw read). Printed: both times,
the rate N / seconds of each, their ratio and the core count.

    .venv/bin/python benchmarks/run_catch_up.py [--events 300000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faults import DENSITY, START, Children, Stack, cli
from speed_layer import raw_read

from lambda_arch.ingest.kafka_options import _c_crc32c_available
from lambda_arch.runtime.broker import free_port

SPAN = timedelta(days=2, hours=12)
TOPIC = "play-events"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="backlog to produce")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lambda-arch-catch-up-"))
    ports = {name: free_port() for name in ("broker", "dagster", "connect")}
    stack = Stack(home, ports, Children())
    stack.logs.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_up()
        stack.stop_automation()
        speedup = SPAN.total_seconds() * DENSITY / args.events
        started = time.perf_counter()
        stack.produce(args.events, 1, START, speedup)
        produced_s = time.perf_counter() - started
        print(f"produced {args.events:,} events in {produced_s:.1f} s (not part of the figures)")

        raw_s, records, _ = raw_read(stack.bootstrap, TOPIC, _c_crc32c_available())
        if records != args.events:
            raise SystemExit(f"raw read {records:,} records, expected {args.events:,}")
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        run = subprocess.run(
            cli("run"), env=stack.env, capture_output=True, text=True, timeout=3600, check=False
        )
        run_s = time.perf_counter() - started
        (home / "run.out").write_text(run.stdout + run.stderr)
        if run.returncode != 0:
            raise SystemExit(f"`lambda-arch run` exited {run.returncode}:\n{run.stderr[-2000:]}")
        print(run.stdout.strip())
        print()
        print(
            f"cores (os.cpu_count): {os.cpu_count()}  events: {args.events:,}  "
            f"load before run {load_before:.2f}, after {os.getloadavg()[0]:.2f}"
        )
        print(f"raw kafka-python read   {raw_s:8.1f} s  {args.events / raw_s:>10,.0f} events/s")
        print(f"`lambda-arch run`       {run_s:8.1f} s  {args.events / run_s:>10,.0f} events/s")
        print(f"ratio run / raw: {raw_s / run_s:.3f}")
    finally:
        stack.children.stop_all()
        if args.keep:
            print(f"home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
