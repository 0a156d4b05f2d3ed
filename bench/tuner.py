"""How well the tuner finds the knee: every lab profile, against an exhaustive sweep, in one run.

    python -m bench.tuner                 # every profile (about ten minutes)
    python -m bench.tuner --profiles queue,cliff

For each profile a lab server runs in its own process, pinned to one CPU,
and this process to the other. The oracle is an exhaustive fixed-pool sweep (two passes, averaged);
then `tuner probe` searches from a cold start, and the pool it chooses is
measured again at a fixed size, the same way as the oracle's points. Errors
caused while probing are the lab's own count (503s, 429s, requests left
hanging) over every request it received during the probe. Beside them, the
original experiment's ways on the same server: sequential, 20 threads, 1,000.

Two more tables: stability once settled (the largest window-to-window move
of the pool over 20 s of holding), and the capacity-change profile (time to
settle again after capacity drops from 32 to 12, and after it comes back).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuner.ceiling import client_ceiling
from tuner.controller import Controller, Decision, Policy
from tuner.fetch import Fetcher, FetchOptions
from tuner.lab import LabProcess, Profile, profile
from tuner.measure import Step, Window
from tuner.probe import LiveTable, probe
from tuner.runner import Runner
from tuner.sweep import knee_of, sweep

VERBOSE = False  # --verbose: every probe's windows on stderr
GRID = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 96, 128)

# The scenarios: (row name, lab profile, request timeout). The cliffs sit just
# past the knee, where a tuner that overshoots pays in errors.
SCENARIOS: dict[str, tuple[Profile, float]] = {
    "queue": (profile("queue"), 10.0),
    "cliff": (profile("cliff", capacity=24, cliff=28), 10.0),
    "throttle": (profile("throttle", capacity=24, throttle_at=28, retry_after=1), 10.0),
    "retrograde": (profile("retrograde"), 10.0),
    "hang": (profile("hang"), 2.0),
    "noisy": (profile("noisy"), 10.0),
}


def lab_errors(stats: dict[str, Any]) -> tuple[int, int]:
    """(requests the lab turned away or left hanging, every request it received)."""
    served = sum(stats["served"].values())
    bad = stats["rejected_503"] + stats["throttled_429"] + stats["hung"]
    return bad, served + stats["hung"]


def fixed(url: str, p: Profile, workers: int, timeout: float, seconds: float = 0.8) -> Step:
    """Goodput at a fixed pool, about `seconds` of requests after a warm-up."""
    rps = p.expected_goodput(workers) or 100.0
    n = max(60, min(4000, int(rps * seconds)))
    return sweep(url, [workers], n, options=FetchOptions(timeout_s=timeout))[0]


def mean_step(a: Step, b: Step) -> Step:
    """The average of two measurements of one pool size."""
    return Step(
        workers=a.workers,
        requests=a.requests + b.requests,
        goodput_rps=(a.goodput_rps + b.goodput_rps) / 2,
        error_ratio=(a.error_ratio + b.error_ratio) / 2,
        p50_s=(a.p50_s + b.p50_s) / 2,
        p95_s=(a.p95_s + b.p95_s) / 2,
    )


@dataclass
class Row:
    """One profile's figures."""

    name: str
    knee: int
    best: float
    chosen: int
    at_chosen: float
    errors: float
    converge_s: float
    stop: str
    baselines: dict[int, tuple[float, float]]

    def cells(self) -> list[str]:
        """The row as table cells."""
        base = [f"{self.baselines[n][0]:.0f} ({self.baselines[n][1]:.0%})" for n in (1, 20, 1000)]
        return [
            self.name,
            str(self.knee),
            f"{self.best:.0f}",
            str(self.chosen),
            f"{self.chosen / self.knee:.2f}",
            f"{self.at_chosen / self.best:.2f}",
            f"{self.errors:.2%}",
            f"{self.converge_s:.1f}",
            self.stop,
            *base,
        ]


HEADER = [
    "profile", "knee", "best/s", "chosen", "ch/knee", "good/best", "probe err",
    "conv s", "stop", "seq/s (err)", "20 thr/s (err)", "1000 thr/s (err)",
]  # fmt: skip


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def scenario(name: str, p: Profile, timeout: float, cpu: int | None) -> Row:
    """Oracle sweep, probe, re-measure, baselines: one profile."""
    with LabProcess(p, cpu=cpu) as lab:
        url = lab.url
        grid = [n for n in GRID if n <= 2 * (p.expected_knee() or 32) + 32]
        # Two passes, up then down, averaged: one noisy window per size would make
        # the oracle's best the luckiest of a dozen draws.
        up = {n: fixed(url, p, n, timeout) for n in grid}
        down = {n: fixed(url, p, n, timeout) for n in reversed(grid)}
        oracle = [mean_step(up[n], down[n]) for n in grid]
        knee = knee_of(oracle)
        best = max(s.goodput_rps for s in oracle)
        print(f"  {name}: oracle knee {knee.workers}, best {best:.0f}/s", file=sys.stderr)
        time.sleep(timeout if p.hang_s else 0.2)  # hung sweep requests time out first
        lab.reset()
        table = LiveTable(sys.stderr, prefix=f"  {name} ") if VERBOSE else None
        report = probe(url, max_workers=1024, time_limit_s=30.0, timeout_s=timeout, observer=table)
        time.sleep(timeout + 0.5 if p.hang_s else 0.2)  # abandoned requests end and are counted
        bad, total = lab_errors(lab.stats())
        probe_errors = bad / total if total else 0.0
        print(f"  {name}: chose {report.best_workers}, lab errors {bad}/{total}", file=sys.stderr)
        windows = report.summary.windows
        start = windows[0][0].ended - windows[0][0].duration_s if windows else 0.0
        settled = [w.ended for w, d in windows if d.settled]
        converge = settled[0] - start if settled else float("nan")
        at_chosen = fixed(url, p, report.best_workers, timeout, seconds=1.5).goodput_rps
        baselines = {}
        for n in (1, 20, 1000):
            time.sleep(timeout if p.hang_s else 0.2)
            lab.reset()
            step = fixed(url, p, n, timeout)
            # The lab's count: requests left hanging never finish inside a step.
            bad, total = lab_errors(lab.stats())
            baselines[n] = (step.goodput_rps, bad / total if total else 0.0)
        return Row(
            name=name,
            knee=knee.workers,
            best=best,
            chosen=report.best_workers,
            at_chosen=at_chosen,
            errors=probe_errors,
            converge_s=converge,
            stop=report.stop_reason,
            baselines=baselines,
        )


def hold(url: str, seconds: float, timeout: float = 10.0) -> list[tuple[float, Window, Decision]]:
    """Tune `url` for `seconds`; every window with its decision, stamped from the start."""
    policy = Policy(max_workers=1024, ceiling=client_ceiling().workers, timeout_s=timeout)
    fetcher = Fetcher(FetchOptions(timeout_s=timeout))
    try:
        runner = Runner(Controller(policy), fetcher, name="bench")
        began = time.monotonic()
        summary = runner.run(itertools.repeat(url), time_limit_s=seconds)
    finally:
        fetcher.close()
    return [(w.ended - began, w, d) for w, d in summary.windows]


def stability(names: Sequence[str], cpu: int | None) -> list[list[str]]:
    """Largest window-to-window move of the pool after settling, over 20 s of holding."""
    rows = []
    for name in names:
        p, timeout = SCENARIOS[name]
        with LabProcess(p, cpu=cpu) as lab:
            trace = hold(lab.url, 30.0, timeout)
        first = next((i for i, (_, _, d) in enumerate(trace) if d.settled), None)
        if first is None:
            rows.append([name, "never settled", "", ""])
            continue
        sizes = [w.workers for _, w, _ in trace[first + 1 :]]
        moves = [abs(b - a) / a for a, b in itertools.pairwise(sizes)]
        rows.append([
            name, str(len(sizes)), f"{max(moves, default=0.0):.1%}",
            f"{min(sizes)}-{max(sizes)}",
        ])  # fmt: skip
    return rows


def shift(cpu: int | None) -> list[list[str]]:
    """Capacity 32 → 12 at 20 s, back to 32 at 40 s: time to settle again after each change."""
    p = profile("shift", capacity=32, capacity_after=12, change_at=20.0, restore_at=40.0)
    with LabProcess(p, cpu=cpu) as lab:
        t0 = time.monotonic()
        trace = hold(lab.url, 55.0)
        offset = time.monotonic() - t0 - 55.0  # lab started a moment before the tuner
    rows = []
    for change, label in ((20.0, "drop 32→12"), (40.0, "rise 12→32")):
        truth = p.expected_knee(change + 1.0)
        t_change = change - max(0.0, offset)
        after = [(t, w, d) for t, w, d in trace if t >= t_change and t < t_change + 20.0]
        ok = [
            t for t, _, d in after
            if d.settled and d.knee is not None and abs(d.knee - truth) <= 0.25 * truth
        ]  # fmt: skip
        knees = sorted({d.knee for _, _, d in after if d.knee is not None})
        rows.append([
            label, str(truth), f"{ok[0] - t_change:.1f}" if ok else "not within 20 s",
            ",".join(map(str, knees[-4:])),
        ])  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.tuner", description=__doc__)
    parser.add_argument("--profiles", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--skip-stability", action="store_true")
    parser.add_argument("--skip-shift", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="every probe window on stderr")
    args = parser.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose
    cpu: int | None = None
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {0})  # the client on CPU 0, each lab on CPU 1
        cpu = 1
    names = [n for n in args.profiles.split(",") if n]
    rows = []
    for name in names:
        p, timeout = SCENARIOS[name]
        rows.append(scenario(name, p, timeout, cpu).cells())
    print("Knee search against the exhaustive sweep (goodput in successful req/s)")
    print(table(HEADER, rows))
    if not args.skip_stability:
        print("\nStability once settled (20+ s of holding)")
        steady = [n for n in ("queue", "retrograde", "noisy") if n in names] or ["queue"]
        print(table(["profile", "windows", "max move", "pool range"], stability(steady, cpu)))
    if not args.skip_shift:
        print("\nCapacity change (lab 'shift' profile)")
        print(table(["change", "new knee", "settled after s", "knees seen"], shift(cpu)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
