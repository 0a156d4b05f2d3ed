"""`tuner demo`: a lab target with a knee and a cliff, the daemon tuning against it, live.

    tuner demo --duration 60

Starts the lab server in a child process (profile `cliff`: 24 slots of 20 ms,
so goodput flattens at 24 workers, and 503s past 40), writes a config for it
in a temporary directory (the user may edit it: the daemon watches it and
reloads), runs the daemon in this process and prints a line per measurement
window, then `knee: N workers (X req/s)` each time the knee it believes
changes. /metrics is served until Ctrl-C or `--duration`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import TextIO

import yaml

from tuner.cli import DEFAULT_LISTEN
from tuner.config import load_config
from tuner.controller import Decision
from tuner.daemon import Daemon, split_listen
from tuner.lab import LabProcess, profile
from tuner.log import setup_logging
from tuner.measure import Result, Window
from tuner.probe import LiveTable

TARGET = "lab"
LAB = profile("cliff", capacity=24, cliff=40)
"""The lab's behaviour: the knee at 24 workers, the cliff at 41."""


def demo_config(url: str, listen: str, state_dir: Path) -> str:
    """The demo's config file: one target fetching `url` 3,000 times every 10 s."""
    doc = {
        "listen": listen,
        "state_dir": str(state_dir),
        "shutdown_grace": "5s",
        "targets": [
            {
                "name": TARGET,
                "urls": [url],
                "repeat": 3000,
                "schedule": {"every": "10s"},
                "timeout": "5s",
                "workers": {"min": 1, "max": 128},
            }
        ],
    }
    header = (
        "# tuner demo: edit and save; the daemon reloads it within 2 s.\n"
        "# Try workers: {max: 8}, or add a second target.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


class KneeReporter:
    """Prints the live table, and `knee: N workers (X req/s)` whenever the knee changes."""

    def __init__(self, out: TextIO, prefix: str) -> None:
        self._out = out
        self._prefix = prefix
        self._table = LiveTable(out, prefix)
        self._lock = threading.Lock()  # targets run in their own threads
        self._goodput: dict[int, float] = {}
        self.knee: int | None = None

    def result(self, result: Result) -> None:
        """Nothing per request."""

    def window(self, window: Window, decision: Decision, in_flight: int) -> None:
        """A table line; a knee line when the knee is new."""
        with self._lock:
            self._table.window(window, decision, in_flight)
            if window.successes:
                self._goodput[window.workers] = window.goodput
            knee = decision.knee
            if knee is None or knee == self.knee:
                return
            self.knee = knee
            goodput = self._goodput.get(knee, max(self._goodput.values(), default=0.0))
            print(
                f"{self._prefix}knee: {knee} workers ({goodput:.0f} req/s)",
                file=self._out,
                flush=True,
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner demo`."""
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds"
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where /metrics is served ({DEFAULT_LISTEN})",
    )


def main(args: argparse.Namespace) -> int:
    """`tuner demo`: run until Ctrl-C or `--duration`, return 0."""
    split_listen(args.listen)
    out = sys.stdout
    # The table shows every window; the log keeps to warnings and errors.
    setup_logging("text", level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tuner-demo-") as tmp, LabProcess(LAB) as lab:
        config_path = Path(tmp) / "tuner.yaml"
        config_path.write_text(demo_config(lab.url, args.listen, Path(tmp) / "state"))
        print(f"{lab.banner}", file=out)
        print(f"config:  {config_path} (edit it: the daemon reloads it by itself)", file=out)
        print(
            f"metrics: http://{args.listen}/metrics   status: http://{args.listen}/-/status",
            file=out,
        )
        print("Ctrl-C stops.\n", file=out, flush=True)
        reporter = KneeReporter(out, "")
        daemon = Daemon(
            load_config(config_path),
            listen=args.listen,
            state_dir=Path(tmp) / "state",
            watch_config=True,
            observer_for=lambda name: reporter if name == TARGET else KneeReporter(out, name + " "),
        )
        code = daemon.serve(args.duration)
        knee = reporter.knee
        print(
            f"\nknee found: {knee} workers" if knee is not None else "\nno knee found yet",
            file=out,
            flush=True,
        )
    return code
