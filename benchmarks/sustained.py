"""Sustained load: does the demo's whole stack keep up with steady traffic, and up to what rate?

Starts, in a temporary LAMBDA_ARCH_HOME with free loopback ports, what `make demo` runs:
`lambda-arch up --no-traffic` with the continuous speed layer (LAMBDA_ARCH_SPEED_STREAM_S=600:
the counts query and the sessions query side by side, sensors, batch days, checks, serving),
then `lambda-arch produce --rate R --events 0 --quiet` (generated traffic, event clock = wall
clock) for each phase of `--rates` in turn: the first phase lasts --hold-s (default 900 s, the
15 minutes of the goal), every later one --step-s.

Every --sample-s seconds it prints one line of the lag over time: the traffic the broker took
(events/s since the last sample), what the counts query committed (events/s), the records each
query is behind the topic (`lambda_arch.speed.lag.measure_lag`, the lag sensor's rule) and in
seconds of traffic, the counts query's micro-batches (median plan-to-commit) and the load
average. A phase is held when, over its last third, the counts query's lag did not grow by
more than --slack of the traffic (it consumed what came), its largest lag stayed under
--max-lag-s seconds of traffic, the sessions query was never more than --max-lag-s plus its
trigger behind, and no Dagster run step failed. Printed at the end: per phase its verdict and
figures, and the highest steady rate held (with the core count).

Every process it starts runs in its own process group and is stopped by PID in a finally block.

    .venv/bin/python benchmarks/sustained.py [--rates 2000,3000,4000] [--hold-s 900]
        [--step-s 180] [--sample-s 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from freshness import (
    Children,
    _interrupt,
    _Interrupted,
    child_env,
    cli,
    failed_steps,
    get_json,
    micro_batches,
    start_stack,
    wait_for,
)

from lambda_arch.runtime.broker import free_port
from lambda_arch.speed.lag import measure_lag

TOPIC = "play-events"
COUNTS, SESSIONS = "counts", "sessions_speed"


@dataclass(frozen=True)
class Sample:
    """One look at the stack: offsets, lags, micro-batches and load at wall-clock `at`."""

    at: float
    rate: float  # the phase's target traffic, events/s
    end_total: int  # records on the topic
    counts_committed: int  # records below the counts query's committed offsets
    counts_lag: int
    sessions_lag: int
    batch_median_s: float | None  # counts micro-batches committed since the last sample
    load: float


def _committed(end_total: int, lag: int) -> int:
    return end_total - lag


def take_sample(bootstrap: str, home: Path, rate: float, since: float) -> Sample:
    checkpoints = home / "checkpoints"
    lag = measure_lag(
        bootstrap, TOPIC, {COUNTS: checkpoints / COUNTS, SESSIONS: checkpoints / SESSIONS}
    )
    by_query = {query.query: query.total for query in lag.queries}
    end_total = sum(lag.end.values())
    recent = [
        b.committed - b.planned for b in micro_batches(checkpoints / COUNTS) if b.committed >= since
    ]
    return Sample(
        time.time(),
        rate,
        end_total,
        _committed(end_total, by_query[COUNTS]),
        by_query[COUNTS],
        by_query[SESSIONS],
        statistics.median(recent) if recent else None,
        os.getloadavg()[0],
    )


def print_sample(sample: Sample, previous: Sample | None, started: float) -> None:
    if previous is None:
        took = consumed = float("nan")
    else:
        seconds = sample.at - previous.at
        took = (sample.end_total - previous.end_total) / seconds
        consumed = (sample.counts_committed - previous.counts_committed) / seconds
    batch = f"{sample.batch_median_s:5.1f}" if sample.batch_median_s is not None else "    -"
    print(
        f"{sample.at - started:7.0f} {sample.rate:6.0f} {took:8.0f} {consumed:8.0f} "
        f"{sample.counts_lag:9d} {sample.counts_lag / sample.rate:7.1f} "
        f"{sample.sessions_lag:9d} {sample.sessions_lag / sample.rate:7.1f} {batch} "
        f"{sample.load:5.1f}",
        flush=True,
    )


HEADER = (
    "      t   rate  took/s consumed  counts_lag  lag_s sess_lag sess_s batch  load\n"
    "    (s) (ev/s)  (ev/s)   (ev/s)  (records)    (s) (records)   (s)   (s)   (1m)"
)


@dataclass(frozen=True)
class Verdict:
    rate: float
    held: bool
    took: float  # events/s the broker took over the phase
    consumed: float  # events/s the counts query committed over the phase
    max_lag_s: float  # counts, last third
    max_sessions_lag_s: float  # whole phase
    lag_growth: float  # counts lag growth over the last third, events/s
    load_median: float
    batch_median_s: float | None
    failures: int
    why: str


def judge(
    samples: list[Sample],
    failures: int,
    *,
    slack: float,
    max_lag_s: float,
    sessions_trigger_s: float,
) -> Verdict:
    """A phase's verdict from its samples (see the module doc)."""
    rate = samples[0].rate
    span = samples[-1].at - samples[0].at
    took = (samples[-1].end_total - samples[0].end_total) / span if span > 0 else 0.0
    consumed = (samples[-1].counts_committed - samples[0].counts_committed) / span if span else 0.0
    tail = samples[len(samples) * 2 // 3 :] if len(samples) >= 3 else samples
    tail_span = tail[-1].at - tail[0].at
    growth = (tail[-1].counts_lag - tail[0].counts_lag) / tail_span if tail_span > 0 else 0.0
    worst = max(s.counts_lag for s in tail) / rate
    worst_sessions = max(s.sessions_lag for s in samples[1:] or samples) / rate
    batches = [s.batch_median_s for s in samples if s.batch_median_s is not None]
    reasons = []
    if growth > slack * rate:
        reasons.append(f"lag grew {growth:.0f} events/s over the last third")
    if worst > max_lag_s:
        reasons.append(f"counts lag reached {worst:.1f} s of traffic")
    if worst_sessions > max_lag_s + sessions_trigger_s:
        reasons.append(f"sessions lag reached {worst_sessions:.1f} s of traffic")
    if failures:
        reasons.append(f"{failures} run step(s) failed")
    if took < (1 - slack) * rate:
        reasons.append(f"the producer reached only {took:.0f} events/s")
    return Verdict(
        rate,
        not reasons,
        took,
        consumed,
        worst,
        worst_sessions,
        growth,
        statistics.median(s.load for s in samples),
        statistics.median(batches) if batches else None,
        failures,
        "; ".join(reasons) or "kept up",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,3000,4000", help="events/s per phase, in order")
    parser.add_argument("--hold-s", type=float, default=900.0, help="s of the first phase")
    parser.add_argument("--step-s", type=float, default=180.0, help="s of every later phase")
    parser.add_argument("--sample-s", type=float, default=10.0, help="s between samples")
    parser.add_argument("--slack", type=float, default=0.02, help="lag growth allowed, of rate")
    parser.add_argument("--max-lag-s", type=float, default=30.0, help="s of traffic behind")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="s for the stack")
    parser.add_argument("--stream-s", type=int, default=600, help="LAMBDA_ARCH_SPEED_STREAM_S")
    parser.add_argument("--trigger-s", type=float, default=2.0, help="LAMBDA_ARCH_SPEED_TRIGGER_S")
    parser.add_argument("--sessions-trigger-s", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    warnings.filterwarnings("ignore", module="dagster")
    home = Path(tempfile.mkdtemp(prefix="lambda-arch-sustained-"))
    ports = {name: free_port() for name in ("broker", "dagster", "connect", "api")}
    env = child_env(home, ports, args.stream_s, args.trigger_s)
    env["LAMBDA_ARCH_SESSIONS_TRIGGER_S"] = f"{args.sessions_trigger_s:g}"
    bootstrap = f"127.0.0.1:{ports['broker']}"
    children = Children()
    phases: list[tuple[float, list[Sample]]] = []
    started = time.time()
    print(f"home {home}, cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, rates {rates}")
    try:
        start_stack(children, env, home, args.ready_timeout)
        children.start("serve", cli("serve", "--port", str(ports["api"])), env, home / "serve.out")
        print(f"stack up after {time.time() - started:.0f} s", flush=True)
        print(HEADER)
        previous: Sample | None = None
        health = f"http://127.0.0.1:{ports['api']}/health"
        for index, rate in enumerate(rates):
            traffic = f"traffic{index}"
            children.start(
                traffic,
                cli("produce", "--rate", f"{rate:g}", "--events", "0", "--quiet"),
                env,
                home / f"{traffic}.out",
            )
            if index == 0:
                wait_for(
                    "first micro-batch served",
                    lambda: get_json(health)["views"]["trending"]["speed_watermark"] is not None,
                    children,
                    args.ready_timeout,
                )
            length = args.hold_s if index == 0 else args.step_s
            phase_end = time.time() + length
            samples: list[Sample] = []
            phases.append((rate, samples))
            while True:
                children.check()
                sample = take_sample(bootstrap, home, rate, previous.at if previous else 0.0)
                print_sample(sample, previous, started)
                samples.append(sample)
                previous = sample
                children.remember()
                if time.time() >= phase_end:
                    break
                time.sleep(min(args.sample_s, max(phase_end - time.time(), 0.1)))
            children.stop_one(traffic)
    except (_Interrupted, SystemExit) as stop:
        print(f"stopped early: {stop or 'interrupted'}", flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        # Read before the stop: stopping the stack interrupts its running steps.
        failures: list[str] = []
        with contextlib.suppress(Exception):
            failures = failed_steps(home / "dagster")
        children.stop_all()
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    print()
    print(
        f"cores: {os.cpu_count()}; a phase is held when its lag stops growing (slack "
        f"{args.slack:.0%}), stays under {args.max_lag_s:g} s of traffic, and no run fails"
    )
    for failure in failures:
        print(f"failed: {failure}")
    held = []
    for rate, samples in phases:
        if len(samples) < 2:
            print(f"{rate:6.0f} events/s: too short to judge ({len(samples)} sample)")
            continue
        # Failures count against every phase: failed_steps does not say when a step failed.
        verdict = judge(
            samples,
            len(failures),
            slack=args.slack,
            max_lag_s=args.max_lag_s,
            sessions_trigger_s=args.sessions_trigger_s,
        )
        batch = f"{verdict.batch_median_s:.1f} s" if verdict.batch_median_s is not None else "-"
        minutes = (samples[-1].at - samples[0].at) / 60
        print(
            f"{rate:6.0f} events/s for {minutes:.1f} min: {'HELD' if verdict.held else 'not held'}"
            f" ({verdict.why}); broker took {verdict.took:.0f}/s, counts committed "
            f"{verdict.consumed:.0f}/s, counts lag max {verdict.max_lag_s:.1f} s (last third), "
            f"growth {verdict.lag_growth:+.0f} events/s, sessions lag max "
            f"{verdict.max_sessions_lag_s:.1f} s, micro-batch median {batch}, load median "
            f"{verdict.load_median:.1f}"
        )
        if verdict.held:
            held.append(rate)
    top = f"{max(held):.0f} events/s" if held else "none of the rates tried"
    print(f"highest steady rate held on {os.cpu_count()} cores: {top}")


if __name__ == "__main__":
    main()
