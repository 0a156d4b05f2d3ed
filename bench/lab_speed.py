"""How fast the lab server is, measured with wrk: the lab must never be a benchmark's bottleneck.

The server runs pinned to CPU 0 (`taskset -c 0`), wrk pinned to CPU 1, so they
never compete for a core. The instant profile shows the lab's own ceiling
(it must reach 5,000 req/s on one core); the queue profile shows that the
measured goodput matches the model's `expected_goodput` at, below and past the knee.

    python -m bench.lab_speed [--duration 5]
"""

from __future__ import annotations

import argparse
import re
import selectors
import shutil
import subprocess
import sys
from dataclasses import dataclass

from tuner.lab import PROFILES

SERVER_CPU = "0"
CLIENT_CPU = "1"
REQUIRED_RPS = 5000.0
START_TIMEOUT_S = 60.0  # generous: a busy machine can take long to start a process
# (profile, wrk connections): instant for the ceiling, queue around its knee of 32
RUNS = [("instant", c) for c in (1, 16, 64, 256)] + [("queue", c) for c in (16, 32, 64)]


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run reports."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    """Pick req/s, p50, p99 and non-2xx/socket errors out of `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    # Anchored: "97.99%" in the stdev column must not pass for the 99% line.
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    return WrkResult(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors)


def measure(profile: str, connections: int, duration: int) -> WrkResult:
    """Serve `profile` on CPU 0 and load it with wrk from CPU 1."""
    server_cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "tuner.lab"]
    server_cmd += ["--profile", profile, "--port", "0"]
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            banner = server.stdout.readline() if selector.select(START_TIMEOUT_S) else ""
        match = re.search(r"listening on (\S+)", banner)
        if match is None:
            raise RuntimeError(f"lab did not start: {banner!r}")
        wrk_cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}"]
        wrk_cmd += [f"-d{duration}s", "--latency", match.group(1)]
        done = subprocess.run(
            wrk_cmd, capture_output=True, text=True, check=True, timeout=duration + START_TIMEOUT_S
        )
        return parse_wrk(done.stdout)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    """Run every measurement, print the table; exit 1 if instant stays below 5,000 req/s."""
    parser = argparse.ArgumentParser(prog="python -m bench.lab_speed", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (5)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"lab_speed: {tool} not found (apt-get install wrk util-linux)", file=sys.stderr)
            return 1
    print(f"server: taskset -c {SERVER_CPU} python -m tuner.lab --profile PROFILE --port 0")
    print(f"client: taskset -c {CLIENT_CPU} wrk -t1 -cCONNS -d{args.duration}s --latency URL")
    header = ("profile", "conns", "req/s", "model", "p50 ms", "p99 ms")
    print("{:<9} {:>5} {:>9} {:>9} {:>8} {:>8} errors".format(*header))
    best_instant = 0.0
    for name, connections in RUNS:
        result = measure(name, connections, args.duration)
        model = PROFILES[name].expected_goodput(connections)
        shown = "-" if model == float("inf") else f"{model:.0f}"
        print(
            f"{name:<9} {connections:>5} {result.rps:>9.0f} {shown:>9} "
            f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {result.errors}",
            flush=True,
        )
        if name == "instant":
            best_instant = max(best_instant, result.rps)
    verdict = "ok" if best_instant >= REQUIRED_RPS else "TOO SLOW"
    print(f"instant, best: {best_instant:.0f} req/s (required {REQUIRED_RPS:.0f}): {verdict}")
    return 0 if best_instant >= REQUIRED_RPS else 1


if __name__ == "__main__":
    sys.exit(main())
