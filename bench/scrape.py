"""How fast /metrics answers while 1,000 workers are busy.

    python -m bench.scrape

A lab server holds every request for two seconds with room for 2,000 at
once; the daemon runs one target pinned at 1,000 workers against it. /metrics
is scraped 50 times as soon as the daemon answers (its pool still starting),
then 50 times once it reports at least 900 requests in flight.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tuner.lab import LabProcess, profile

SCRAPES = 50


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def in_flight(url: str) -> float:
    """tuner_in_flight_requests of the one target, from a scrape."""
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith("tuner_in_flight_requests{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def timings(url: str) -> list[float]:
    """Seconds taken by SCRAPES scrapes, one after another."""
    out = []
    for _ in range(SCRAPES):
        t0 = time.perf_counter()
        requests.get(url, timeout=30).raise_for_status()
        out.append(time.perf_counter() - t0)
    return sorted(out)


def main() -> int:
    """Run it and print the table."""
    lab_profile = profile("queue", capacity=2000, service_ms=2000)
    with LabProcess(lab_profile) as lab, tempfile.TemporaryDirectory() as tmp:
        listen = f"127.0.0.1:{free_port()}"
        config = Path(tmp) / "tuner.yaml"
        config.write_text(
            f"listen: {listen}\nstate_dir: {tmp}/state\n"
            "targets:\n"
            "  - name: busy\n"
            f"    urls: ['{lab.url}']\n"
            "    repeat: 200000\n"
            "    schedule: {every: 1h}\n"
            "    workers: {min: 1000, max: 1000}\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tuner", "run", "-c", str(config)],
            stderr=subprocess.DEVNULL,
        )
        url = f"http://{listen}/metrics"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    idle = timings(url)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            while in_flight(url) < 900:
                if time.monotonic() > deadline:
                    print("the daemon never held 900 requests in flight", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            busy_before = in_flight(url)
            busy = timings(url)
            busy_after = in_flight(url)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    print(f"{'scrape of /metrics':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label, t in (
        ("first scrapes after start", idle),
        (f"{busy_before:.0f}-{busy_after:.0f} requests in flight", busy),
    ):
        p50, p95 = t[len(t) // 2], t[int(0.95 * len(t)) - 1]
        print(f"{label:<34} {p50 * 1000:>8.1f} {p95 * 1000:>8.1f} {t[-1] * 1000:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
