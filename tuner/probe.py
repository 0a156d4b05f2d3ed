"""`tuner probe URL` and `tuner once`: the tuner run by hand, with a report at the end.

`probe` fetches one URL over and over, searching for its knee and cliff, and
stops once it has held the knee for a window (or at its time limit).
`once` runs each configured target once, tuning inside the run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from tuner.ceiling import client_ceiling
from tuner.cli import add_config_argument, default_config_path
from tuner.config import load_config
from tuner.controller import Controller, Decision, Policy
from tuner.errors import UsageError
from tuner.fetch import Fetcher, FetchOptions
from tuner.measure import Outcome, Result, Window
from tuner.runner import Runner, RunSummary
from tuner.targets import TargetRunner

TABLE_HEADER = f"{'workers':>7} {'goodput/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}  phase"


class LiveTable:
    """Prints a line per window as the tuner goes: workers, goodput, p50, p95, errors, phase."""

    def __init__(self, out: TextIO, prefix: str = "") -> None:
        self._out = out
        self._prefix = prefix
        print(prefix + TABLE_HEADER, file=out, flush=True)

    def result(self, result: Result) -> None:
        """Nothing per request."""

    def window(self, window: Window, decision: Decision, in_flight: int) -> None:
        """One line for the window just closed."""
        errors = window.requests - window.successes + window.suspects
        print(
            f"{self._prefix}{window.workers:>7} {window.goodput:>10.1f} "
            f"{window.p50_s * 1000:>8.1f} {window.p95_s * 1000:>8.1f} {errors:>7}  "
            f"{decision.phase} ({decision.reason}) -> {decision.workers}",
            file=self._out,
            flush=True,
        )


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """The answer of `tuner probe`, in SPEC's JSON shape (plus `model` and `errors`)."""

    url: str
    best_workers: int
    goodput_rps: float
    cliff_workers: int | None
    ceiling_workers: int
    stop_reason: str
    summary: RunSummary
    model: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON object `tuner probe --json` prints."""
        failed = self.summary.requests - self.summary.successes
        return {
            "url": self.url,
            "best_workers": self.best_workers,
            "goodput_rps": round(self.goodput_rps, 3),
            "cliff_workers": self.cliff_workers,
            "ceiling_workers": self.ceiling_workers,
            "stop_reason": self.stop_reason,
            "steps": [s.as_dict() for s in self.summary.steps],
            "requests": self.summary.requests,
            "errors": failed,
            "duration_s": round(self.summary.duration_s, 3),
            "model": self.model,
        }


def probe(
    url: str,
    *,
    max_workers: int = 1024,
    time_limit_s: float = 60.0,
    timeout_s: float = 10.0,
    error_budget: float = 0.01,
    latency_budget_s: float | None = None,
    observer: LiveTable | None = None,
) -> ProbeReport:
    """Search for the knee and cliff of `url`, fetched over and over; a library call."""
    ceiling = client_ceiling()
    policy = Policy(
        max_workers=max_workers,
        ceiling=ceiling.workers,
        error_budget=error_budget,
        latency_budget_s=latency_budget_s,
        timeout_s=timeout_s,
    )
    controller = Controller(policy)
    fetcher = Fetcher(FetchOptions(timeout_s=timeout_s))
    try:
        runner = Runner(controller, fetcher, observer=observer, name="tuner-probe")
        # Two settled windows: the one that found the knee, then one measured at it.
        summary = runner.run(itertools.repeat(url), time_limit_s=time_limit_s, until_settled=2)
    finally:
        fetcher.close()
    best = controller.knee
    if best is None:  # out of time before settling: the best pool measured so far
        points = controller.points()
        best = max(points, key=lambda p: p.goodput).workers if points else controller.workers
    at_best = [w for w, _ in summary.windows if w.workers == best and w.successes]
    goodput = at_best[-1].goodput if at_best else 0.0
    stop = "time_limit" if summary.end == "time_limit" else (controller.bound or "flattened")
    cliff = controller.cliff if controller.cliff_reason != "latency" else None
    fit = controller.model()
    return ProbeReport(
        url=url,
        best_workers=best,
        goodput_rps=goodput,
        cliff_workers=cliff,
        ceiling_workers=controller.client_ceiling,
        stop_reason=stop,
        summary=summary,
        model=fit.as_dict() if fit else None,
    )


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner probe`."""
    parser.add_argument("url", metavar="URL", help="the URL to fetch over and over (http or https)")
    parser.add_argument(
        "--max-workers",
        type=int,
        default=1024,
        metavar="N",
        help="never try a pool larger than N (default 1024)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="give up searching after S seconds (default 60)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="total deadline of one request (default 10)",
    )
    parser.add_argument(
        "--error-budget",
        type=float,
        default=0.01,
        metavar="SHARE",
        help="share of requests that may fail before a pool counts as past the "
        "cliff (default 0.01)",
    )
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=None,
        metavar="S",
        help="never grow past the pool whose p95 latency exceeds S seconds",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (SPEC shape)")


def main_probe(args: argparse.Namespace) -> int:
    """`tuner probe`: 0 with a knee found, 1 when nothing succeeded."""
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"URL must be http or https: {args.url}")
    if args.max_workers < 1:
        raise UsageError(f"--max-workers must be >= 1: {args.max_workers}")
    report = probe(
        args.url,
        max_workers=args.max_workers,
        time_limit_s=args.time_limit,
        timeout_s=args.timeout,
        error_budget=args.error_budget,
        latency_budget_s=args.latency_budget,
        observer=None if args.json else LiveTable(sys.stdout),
    )
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        s = report.summary
        cliff = f"{report.cliff_workers} workers" if report.cliff_workers else "none seen"
        print(
            f"knee: {report.best_workers} workers ({report.goodput_rps:.1f} req/s); "
            f"cliff: {cliff}; ceiling: {report.ceiling_workers}; stop: {report.stop_reason}; "
            f"{s.requests} requests, {s.requests - s.successes} failed, {s.duration_s:.1f} s"
        )
        if report.model and report.model["peak_workers"]:
            m = report.model
            print(
                f"model: USL σ={m['sigma']} κ={m['kappa']} predicts a peak at "
                f"{m['peak_workers']} workers ({m['peak_goodput_rps']} req/s)"
            )
    return 0 if report.summary.successes else 1


def add_once_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner once`."""
    add_config_argument(parser)
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this target (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of summaries")


def _summary_dict(name: str, tr: TargetRunner, s: RunSummary) -> dict[str, Any]:
    c = tr.controller
    return {
        "target": name,
        "result": "completed" if s.successes else "failed",
        "requests": s.requests,
        "outcomes": {o.value: s.outcomes.get(o, 0) for o in Outcome},
        "duration_s": round(s.duration_s, 3),
        "goodput_rps": round(s.goodput, 3),
        "workers": s.workers,
        "knee": c.knee,
        "cliff": c.cliff,
        "ceiling": c.ceiling,
        "phase": str(c.phase),
    }


def main_once(args: argparse.Namespace) -> int:
    """`tuner once`: every (or each named) target once; 1 if any failed outright."""
    config = load_config(args.config or default_config_path())
    names = {t.name for t in config.targets}
    unknown = [n for n in args.target if n not in names]
    if unknown:
        raise UsageError(
            f"no such target: {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    chosen = [t for t in config.targets if not args.target or t.name in args.target]
    ceiling = client_ceiling().workers
    reports = []
    for target in chosen:
        observer = None if args.json else LiveTable(sys.stdout, prefix=f"{target.name:<12} ")
        tr = TargetRunner(target, ceiling=ceiling, observer=observer)
        try:
            summary = tr.run(grace_s=config.shutdown_grace_s)
        finally:
            tr.close()
        report = _summary_dict(target.name, tr, summary)
        reports.append(report)
        if not args.json:
            print(
                f"{target.name}: {report['result']}, {summary.requests} requests in "
                f"{summary.duration_s:.1f} s, {summary.goodput:.1f} req/s, "
                f"{summary.requests - summary.successes} failed; pool {summary.workers}, "
                f"knee {report['knee']}"
            )
    if args.json:
        print(json.dumps(reports))
    return 0 if all(r["result"] == "completed" for r in reports) else 1
