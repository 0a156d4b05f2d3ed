"""The daemon's figures (issue 4): run length against the best fixed pool, warm restart, soak.

    python -m bench.daemon                      # all three; the soak lasts 10 minutes
    python -m bench.daemon --soak-seconds 120   # a short soak
    python -m bench.daemon --skip-soak

1. `tuner run` against a lab whose knee is at 24 workers (`queue`, capacity
   24), one target of 800 requests every 10 s: each run's duration against
   800 ÷ the best goodput of a fixed-pool sweep measured first, in this
   script. From the second run on, each should be within 20%.
2. Warm restart: SIGTERM (state saved), start again on the same state
   directory; the first run's duration against a settled run's (the median of
   runs 2.. of part 1). Within 20%.
3. Soak: 20 targets spread over 4 lab servers; the daemon's resident memory,
   threads and open files after the first minute and at the end (they should
   be flat), and how long a /metrics scrape takes.

Every process is real: the lab in child processes, the daemon as `python -m
tuner run`. On a machine with two CPUs or more the lab servers run on the
last CPU and the daemon and the sweep on the others.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests
import yaml

from tuner.lab import LabProcess, profile
from tuner.sweep import knee_of, sweep

RUN_REQUESTS = 800
RUN_EVERY_S = 10
RUNS = 6
TOLERANCE = 0.20
SWEEP_WORKERS = (8, 16, 20, 24, 28, 32, 40, 48)
SOAK_TARGETS = 20
SOAK_LABS = 4


def _cpus() -> tuple[set[int], int]:
    """(CPUs for clients, CPU for the lab servers)."""
    n = os.cpu_count() or 1
    if n < 2:
        return {0}, 0
    return set(range(n - 1)), n - 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Daemon:
    """A `tuner run --log-format json` child process and its log."""

    def __init__(self, workdir: Path, targets: list[dict[str, Any]], cpus: set[int]) -> None:
        self.workdir = workdir
        self.listen = f"127.0.0.1:{_free_port()}"
        self.config = workdir / "tuner.yaml"
        self.config.write_text(
            yaml.safe_dump({"listen": self.listen, "shutdown_grace": "10s", "targets": targets})
        )
        self.log = workdir / "tuner.log"
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> None:
        """Start and wait until ready; runs logged before now are not `runs()`'s."""
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        cmd = [
            sys.executable,
            "-m",
            "tuner",
            "run",
            "-c",
            str(self.config),
            "--listen",
            self.listen,
            "--state-dir",
            str(self.workdir / "state"),
            "--log-format",
            "json",
        ]
        cpus = self.cpus
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                cmd, stderr=log, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{self.listen}/-/ready", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"tuner run did not become ready; see {self.log}")

    def runs(self, target: str | None = None) -> list[dict[str, Any]]:
        """The run_finished events since the last start, oldest first."""
        with self.log.open() as f:
            f.seek(self._offset)
            events = [json.loads(line) for line in f if line.startswith("{")]
        return [
            e
            for e in events
            if e["event"] == "run_finished" and (target is None or e["target"] == target)
        ]

    def wait_runs(self, target: str, n: int, timeout: float) -> list[dict[str, Any]]:
        """Wait for `n` finished runs of `target` since the last start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs(target)
            if len(runs) >= n:
                return runs
            time.sleep(0.5)
        tail = "".join(self.log.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(
            f"only {len(self.runs(target))} of {n} runs of {target}; log tail:\n{tail}"
        )

    def stop(self) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        """Make sure the child is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def resources(self) -> tuple[float, int, int]:
        """(resident MiB, threads, open files) of the daemon now."""
        assert self.proc is not None
        pid = self.proc.pid
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        rss_mib = int(fields["VmRSS"].split()[0]) / 1024
        threads = int(fields["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss_mib, threads, fds

    def scrape_ms(self) -> float:
        """How long one GET /metrics takes, in milliseconds."""
        t0 = time.perf_counter()
        requests.get(f"http://{self.listen}/metrics", timeout=5).raise_for_status()
        return (time.perf_counter() - t0) * 1000


def _row(label: str, value: str, target: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("ok" if ok else "MISSED")
    return f"{label:<44} {value:>14} {target:>16}  {verdict}"


def run_length_and_restart(work: Path, client_cpus: set[int], lab_cpu: int) -> list[str]:
    """Parts 1 and 2; the table rows."""
    rows: list[str] = []
    lab_profile = profile("queue", capacity=24)
    with ExitStack() as stack:
        lab = stack.enter_context(LabProcess(lab_profile, cpu=lab_cpu))
        print(f"# {lab.banner}", flush=True)
        os.sched_setaffinity(0, client_cpus)
        steps = sweep(lab.url, SWEEP_WORKERS, 2000)
        for s in steps:
            print(f"#   sweep {s.workers:>3} workers: {s.goodput_rps:7.0f} req/s", flush=True)
        best = max(s.goodput_rps for s in steps)
        ideal = RUN_REQUESTS / best
        rows.append(
            _row(
                "best fixed pool (sweep)",
                f"{best:.0f} req/s",
                f"knee {knee_of(steps).workers}",
                None,
            )
        )
        rows.append(_row(f"ideal run: {RUN_REQUESTS} / best goodput", f"{ideal:.3f} s", "", None))

        daemon = Daemon(
            work,
            [
                {
                    "name": "lab",
                    "urls": [lab.url],
                    "repeat": RUN_REQUESTS,
                    "schedule": {"every": f"{RUN_EVERY_S}s"},
                }
            ],
            client_cpus,
        )
        stack.callback(daemon.kill)
        daemon.start()
        runs = daemon.wait_runs("lab", RUNS, timeout=2 * RUNS * RUN_EVERY_S + 60)  # skips allowed
        for i, run in enumerate(runs, start=1):
            d = run["duration_s"]
            ok = None if i == 1 else abs(d / ideal - 1) <= TOLERANCE
            rows.append(
                _row(
                    f"(1) run {i}: duration (workers {run['workers']}, knee {run['knee']})",
                    f"{d:.3f} s",
                    f"{d / ideal:.2f}x ideal",
                    ok,
                )
            )
        settled = statistics.median(r["duration_s"] for r in runs[1:])
        assert daemon.stop() == 0, "tuner run did not stop cleanly"
        state = json.loads((work / "state" / "lab.json").read_text())["learned"]

        daemon.start()
        first = daemon.wait_runs("lab", 1, timeout=60)[0]
        assert daemon.stop() == 0, "tuner run did not stop cleanly"
        d = first["duration_s"]
        rows.append(_row("(2) settled run (median of runs 2..)", f"{settled:.3f} s", "", None))
        rows.append(
            _row(
                f"(2) first run after restart (saved knee {state['knee']})",
                f"{d:.3f} s",
                f"{d / settled:.2f}x settled",
                abs(d / settled - 1) <= TOLERANCE,
            )
        )
    return rows


def soak(work: Path, seconds: float, client_cpus: set[int], lab_cpu: int) -> list[str]:
    """Part 3; the table rows."""
    rows: list[str] = []
    with ExitStack() as stack:
        labs = [
            stack.enter_context(LabProcess(profile("queue", capacity=32), cpu=lab_cpu))
            for _ in range(SOAK_LABS)
        ]
        targets = [
            {
                "name": f"t{i:02d}",
                "urls": [labs[i % SOAK_LABS].url],
                "repeat": 200,
                "schedule": {"every": "10s"},
                "workers": {"max": 64},
            }
            for i in range(SOAK_TARGETS)
        ]
        daemon = Daemon(work, targets, client_cpus)
        stack.callback(daemon.kill)
        began = time.monotonic()
        daemon.start()
        samples: list[tuple[float, tuple[float, int, int], float]] = []
        next_sample = began + 60
        end = began + seconds
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            samples.append((time.monotonic() - began, daemon.resources(), daemon.scrape_ms()))
            print(
                f"#   soak t={samples[-1][0]:5.0f}s rss/threads/fds={samples[-1][1]} "
                f"scrape={samples[-1][2]:.1f}ms",
                flush=True,
            )
            next_sample += 60
        runs = daemon.runs()
        failed = sum(1 for r in runs if r["result"] != "completed")
        assert daemon.stop() == 0, "tuner run did not stop cleanly"
        (t1, (rss1, th1, fd1), _), (t2, (rss2, th2, fd2), _) = samples[0], samples[-1]
        rows.append(
            _row(
                f"(3) soak: {SOAK_TARGETS} targets, runs (failed)",
                f"{len(runs)} ({failed})",
                f"{seconds:.0f} s",
                failed == 0,
            )
        )
        rows.append(
            _row(
                f"(3) resident memory at {t1:.0f}s -> {t2:.0f}s",
                f"{rss1:.1f} -> {rss2:.1f} MiB",
                "",
                rss2 <= rss1 * 1.10,
            )
        )
        rows.append(_row("(3) threads", f"{th1} -> {th2}", "", th2 <= th1 + SOAK_TARGETS))
        rows.append(_row("(3) open files", f"{fd1} -> {fd2}", "", fd2 <= fd1 + 2 * SOAK_TARGETS))
        worst = max(s[2] for s in samples)
        rows.append(
            _row("(3) /metrics scrape, slowest sample", f"{worst:.1f} ms", "< 100 ms", worst < 100)
        )
    return rows


def main() -> int:
    """Run the parts asked for and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.daemon", description=__doc__)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--skip-soak", action="store_true")
    args = parser.parse_args()
    client_cpus, lab_cpu = _cpus()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        (Path(tmp) / "runs").mkdir()
        rows += run_length_and_restart(Path(tmp) / "runs", client_cpus, lab_cpu)
        if not args.skip_soak:
            (Path(tmp) / "soak").mkdir()
            rows += soak(Path(tmp) / "soak", args.soak_seconds, client_cpus, lab_cpu)
    print()
    print(_row("figure", "measured", "against", None))
    print("-" * 84)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
