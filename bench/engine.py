"""The fetch engine side by side with its baselines: overhead, the original experiment, memory.

    python -m bench.engine            # full run (the memory figure takes a few minutes)
    python -m bench.engine --quick    # fewer requests, for iteration

The lab runs in a child process pinned to the last CPU, the client on the
others, so server and client share no GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import requests

from tuner.fetch import Fetcher
from tuner.lab import LabProcess, profile
from tuner.measure import Outcome, Result
from tuner.pool import Pool

OVERHEAD_WORKERS = 16
ENGINE_WORKERS = 200
EXECUTOR_THREADS = 20
MEMORY_URLS = 1_000_000
MEMORY_LIMIT_MB = 200


def _pin_client(server_cpu: int) -> None:
    """Keep this process off the server's CPU (where the machine has more than one)."""
    others = set(range(os.cpu_count() or 1)) - {server_cpu}
    if others and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, others)


def engine_rps(url: str, workers: int, n: int) -> tuple[float, int]:
    """Goodput of Pool + Fetcher fetching `url` n times; (req/s, successes)."""
    fetcher = Fetcher()
    ok = 0
    lock = threading.Lock()

    def on_result(result: Result) -> None:
        nonlocal ok
        if result.outcome is Outcome.SUCCESS:
            with lock:
                ok += 1

    pool = Pool(fetcher, itertools.repeat(url, n), workers, on_result)
    t0 = time.perf_counter()
    pool.start()
    pool.wait()
    elapsed = time.perf_counter() - t0
    fetcher.close()
    return ok / elapsed, ok


def raw_executor_rps(url: str, workers: int, n: int) -> tuple[float, int]:
    """The hand-written baseline: ThreadPoolExecutor, one Session per thread."""
    local = threading.local()

    def get(_: int) -> bool:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        return session.get(url, timeout=10).status_code == 200

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        ok = sum(ex.map(get, range(n)))
    return ok / (time.perf_counter() - t0), ok


def sequential_rps(url: str, n: int) -> float:
    """The post's Example 1: requests.get in a loop."""
    t0 = time.perf_counter()
    for _ in range(n):
        requests.get(url, timeout=10)
    return n / (time.perf_counter() - t0)


def run_in_executor_rps(url: str, n: int) -> float:
    """The post's Example 3: loop.run_in_executor(None, requests.get, url), a 20-thread default."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(EXECUTOR_THREADS))
        t0 = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(None, requests.get, url) for _ in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def memory_child(url: str, n: int, workers: int) -> None:
    """In a fresh process: n URLs from a generator through the engine; print peak RSS and counts."""
    counts = {"ok": 0, "all": 0}
    lock = threading.Lock()

    def on_result(result: Result) -> None:
        with lock:
            counts["all"] += 1
            counts["ok"] += result.outcome is Outcome.SUCCESS

    fetcher = Fetcher()
    pool = Pool(fetcher, (url for _ in range(n)), workers, on_result)
    t0 = time.perf_counter()
    pool.start()
    pool.wait()
    elapsed = time.perf_counter() - t0
    with open("/proc/self/status") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    print(hwm_kb, counts["ok"], counts["all"], f"{elapsed:.1f}")


def memory_run(url: str, n: int) -> tuple[float, int, int, float]:
    """Peak RSS (MB) of a fresh process running n URLs; (MB, successes, results, seconds)."""
    cmd = [sys.executable, "-m", "bench.engine", "--memory-child", url, str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) / 1024, int(out[1]), int(out[2]), float(out[3])


def row(name: str, value: str, note: str = "") -> None:
    print(f"{name:<58} {value:>14}  {note}", flush=True)


def best_of(runs: int, fn: Callable[[], tuple[float, int]]) -> float:
    """The best goodput of a few runs: the figure least disturbed by other work on the machine."""
    return max(fn()[0] for _ in range(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (not the figures)")
    parser.add_argument("--memory-child", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), OVERHEAD_WORKERS)
        return 0

    server_cpu = (os.cpu_count() or 1) - 1
    _pin_client(server_cpu)
    scale = 10 if args.quick else 1
    print(
        f"bench.engine  python {sys.version.split()[0]}  cpus {os.cpu_count()}  "
        f"lab on cpu {server_cpu}  {'quick' if args.quick else 'full'}"
    )
    row("figure", "value", "note")

    with LabProcess("instant", cpu=server_cpu) as lab:
        n = 20_000 // scale
        engine = best_of(3, lambda: engine_rps(lab.url, OVERHEAD_WORKERS, n))
        raw = best_of(3, lambda: raw_executor_rps(lab.url, OVERHEAD_WORKERS, n))
        row(
            f"engine overhead: Pool+Fetcher, {OVERHEAD_WORKERS} workers (req/s)",
            f"{engine:.0f}",
            f"instant lab, {n} requests, best of 3",
        )
        row(f"  raw ThreadPoolExecutor({OVERHEAD_WORKERS}) + Session per thread", f"{raw:.0f}")
        ratio = engine / raw
        row(
            "  ratio engine / raw (need >= 0.95)",
            f"{ratio:.3f}",
            "PASS" if ratio >= 0.95 else "FAIL",
        )

        n = MEMORY_URLS // scale
        mb, ok, total, secs = memory_run(lab.url, n)
        row(
            f"memory: peak RSS, {n:,}-URL generator, {OVERHEAD_WORKERS} workers (MB)",
            f"{mb:.1f}",
            f"{'PASS' if mb < MEMORY_LIMIT_MB else 'FAIL'} (< {MEMORY_LIMIT_MB}); "
            f"{ok:,}/{total:,} ok in {secs:.0f} s",
        )

    slow = profile("queue", capacity=10_000, service_ms=100.0)
    with LabProcess(slow, cpu=server_cpu) as lab:
        seq = sequential_rps(lab.url, 30 // min(scale, 3))
        row(
            "original: sequential requests.get (Example 1) (req/s)",
            f"{seq:.1f}",
            "lab queue, 100 ms, capacity 10000",
        )
        ex = run_in_executor_rps(lab.url, 400 // min(scale, 4))
        row(
            f"original: run_in_executor, {EXECUTOR_THREADS}-thread default (Example 3)", f"{ex:.1f}"
        )
        eng, _ = engine_rps(lab.url, ENGINE_WORKERS, 4000 // min(scale, 4))
        row(f"original: engine, {ENGINE_WORKERS} workers (req/s)", f"{eng:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
