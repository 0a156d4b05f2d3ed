"""`tuner sweep`: one URL at fixed pool sizes, one after another: where goodput flattens.

This is the experiment behind the knee, done by hand:

    $ tuner sweep http://127.0.0.1:8080/ --workers 1,2,4,8-64:8 --requests 500
    workers  requests  goodput/s    p50 ms    p95 ms  errors
          1       500       48.9      20.3      21.0    0.0%
    ...
    knee: 32 workers (1587.2 req/s; best 1601.0 req/s at 48)

`sweep()` and `knee_of()` are the same experiment for benchmark code.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence

from tuner.errors import UsageError
from tuner.fetch import Fetcher, FetchOptions
from tuner.measure import Result, Step, Tally
from tuner.pool import Pool

DEFAULT_REQUESTS = 500

# A step is within the knee's reach when its goodput is this close to the best (SPEC: 5%).
KNEE_TOLERANCE = 0.05


def sweep(
    url: str,
    workers: Sequence[int],
    requests: int,
    *,
    options: FetchOptions = FetchOptions(),  # noqa: B008 -- frozen: one shared default is safe
    on_step: Callable[[Step], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[Step]:
    """Fetch `url` with each pool size of `workers` in turn, `requests` times each; one Step each.

    Each size first warms up (one request per worker, uncounted: they pay
    for opening connections), then counts the next `requests` results while
    the pool stays full, so the figure is the steady state, not the ramp or
    the drain. `on_step` sees each step as it is measured.
    """
    fetcher = Fetcher(options, clock=clock)
    steps: list[Step] = []
    try:
        for size in workers:
            step = _measure(fetcher, url, size, requests, clock, options.timeout_s)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        fetcher.close()
    return steps


def _measure(
    fetcher: Fetcher,
    url: str,
    workers: int,
    requests: int,
    clock: Callable[[], float],
    timeout_s: float,
) -> Step:
    """One pool size: warm up, count `requests` results, stop the pool."""
    warmup = workers
    lock = threading.Lock()
    finished = threading.Event()
    seen = 0
    tally: Tally | None = None
    busy_at_start = 0.0
    pool: Pool

    def on_result(result: Result) -> None:
        nonlocal seen, tally, busy_at_start
        with lock:
            seen += 1
            if seen <= warmup:
                if seen == warmup:
                    tally = Tally(started=clock())
                    busy_at_start = pool.busy_seconds()
                return
            if tally is not None and tally.requests < requests:
                tally.add(result)
                if tally.requests == requests:
                    finished.set()

    # An endless source: the pool stays full until the count is reached.
    pool = Pool(fetcher, itertools.repeat(url), workers, on_result, clock=clock, name="sweep")
    pool.start()
    finished.wait()
    with lock:
        assert tally is not None  # set at the end of the warm-up, before `finished`
        ended = clock()
        busy = pool.busy_seconds() - busy_at_start
        window = tally.close(
            ended=ended, workers=workers, in_flight=busy / max(ended - tally.started, 1e-9)
        )
    # Requests still under way count for no step; let them end so that they
    # do not load the server while the next size is measured.
    pool.stop(grace_s=timeout_s)
    return Step.of(window)


def knee_of(steps: Sequence[Step]) -> Step:
    """The smallest pool whose goodput is within 5% of the best goodput of `steps`."""
    if not steps:
        raise ValueError("no steps")
    best = max(s.goodput_rps for s in steps)
    return min(
        (s for s in steps if s.goodput_rps >= (1 - KNEE_TOLERANCE) * best),
        key=lambda s: s.workers,
    )


def parse_workers(text: str) -> list[int]:
    """`1,2,4,8-64:8` -> [1, 2, 4, 8, 16, ..., 64]: sizes and inclusive ranges with a step."""
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                span, _, step_text = part.partition(":")
                lo_text, _, hi_text = span.partition("-")
                lo, hi, step = int(lo_text), int(hi_text), int(step_text or "1")
                if step < 1 or hi < lo:
                    raise ValueError
                sizes.extend(range(lo, hi + 1, step))
            else:
                sizes.append(int(part))
        except ValueError:
            raise UsageError(
                f"--workers: expected sizes and ranges like 1,2,4,8-64:8: {part!r}"
            ) from None
    if any(n < 1 for n in sizes):
        raise UsageError(f"--workers: every pool size must be >= 1: {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner sweep`."""
    parser.add_argument("url", metavar="URL", help="the URL to fetch repeatedly")
    parser.add_argument(
        "--workers",
        required=True,
        metavar="LIST",
        help="pool sizes in order, e.g. 1,2,4,8,16 or 8-64:8 (from-to:step)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests counted at each size, after a warm-up (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per-request deadline (10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--csv", metavar="FILE", help="also write the steps as CSV")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw goodput and latency against pool size (needs tuner[plot])",
    )


def main(args: argparse.Namespace) -> int:
    """`tuner sweep`: run the sweep, print the table (or JSON) and the knee."""
    sizes = parse_workers(args.workers)
    if args.requests < 1:
        raise UsageError(f"--requests: must be >= 1: {args.requests}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout: must be > 0: {args.timeout}")
    pyplot = _pyplot() if args.plot else None  # fail before the work, not after

    if not args.json:
        print(
            f"{'workers':>7}  {'requests':>8}  {'goodput/s':>9}  {'p50 ms':>8}  "
            f"{'p95 ms':>8}  {'errors':>6}"
        )

    def show(step: Step) -> None:
        if not args.json:
            print(
                f"{step.workers:>7}  {step.requests:>8}  {step.goodput_rps:>9.1f}  "
                f"{step.p50_s * 1000:>8.1f}  {step.p95_s * 1000:>8.1f}  "
                f"{step.error_ratio:>6.1%}",
                flush=True,
            )

    steps = sweep(
        args.url, sizes, args.requests, options=FetchOptions(timeout_s=args.timeout), on_step=show
    )
    knee = knee_of(steps)
    best = max(steps, key=lambda s: s.goodput_rps)
    if args.json:
        doc = {"url": args.url, "steps": [s.as_dict() for s in steps], "knee": knee.workers}
        print(json.dumps(doc))
    else:
        print(
            f"knee: {knee.workers} workers ({knee.goodput_rps:.1f} req/s; "
            f"best {best.goodput_rps:.1f} req/s at {best.workers})"
        )
    if args.csv:
        _write_csv(args.csv, steps)
    if pyplot is not None:
        _plot(pyplot, args.plot, args.url, steps, knee)
    return 0


def _write_csv(path: str, steps: Sequence[Step]) -> None:
    """The steps as CSV, one row each, the JSON field names as header."""
    try:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(steps[0].as_dict()))
            writer.writeheader()
            writer.writerows(s.as_dict() for s in steps)
    except OSError as err:
        raise UsageError(f"--csv: cannot write {path}: {err.strerror}") from None


def _pyplot() -> object:
    """matplotlib's pyplot, drawing to files only; a usage error when tuner[plot] is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: the chart goes to a file
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'tuner[plot]'") from None
    return plt


def _plot(plt: object, path: str, url: str, steps: Sequence[Step], knee: Step) -> None:
    """Goodput (left axis) and p50/p95 latency (right axis) against pool size, the knee marked."""
    p = plt  # untyped: matplotlib publishes no stubs
    sizes = [s.workers for s in steps]
    fig, ax = p.subplots(figsize=(8, 4.5))  # type: ignore[attr-defined]
    ax.plot(sizes, [s.goodput_rps for s in steps], "o-", color="tab:blue", label="goodput")
    ax.set_xlabel("pool size (workers)")
    ax.set_ylabel("goodput (req/s)", color="tab:blue")
    ax.axvline(knee.workers, color="grey", linestyle=":", label=f"knee ({knee.workers})")
    lat = ax.twinx()
    lat.plot(sizes, [s.p50_s * 1000 for s in steps], "s--", color="tab:orange", label="p50")
    lat.plot(sizes, [s.p95_s * 1000 for s in steps], "^--", color="tab:red", label="p95")
    lat.set_ylabel("latency (ms)")
    handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left")
    ax.set_title(f"tuner sweep {url}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise UsageError(f"--plot: cannot write {path}: {err.strerror}") from None
    finally:
        p.close(fig)  # type: ignore[attr-defined]
    print(f"wrote {path}", file=sys.stderr)
