"""The resizable pool: with the real fetcher against the lab, and with plain functions as fetch."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tuner.fetch import Fetcher
from tuner.lab import LabServer
from tuner.measure import Outcome, Result
from tuner.pool import IDLE_EXIT_S, Pool


class FakeClock:
    """A clock the test moves by hand; it refuses to go backwards."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a clock never goes backwards"
        self.now += seconds


class Gate:
    """A fetch that holds every request until released, and counts how many run at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.open = threading.Event()
        self.clock = clock
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0

    def __call__(self, url: str) -> Result:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        self.open.wait(30)
        with self.lock:
            self.running -= 1
        return Result(Outcome.SUCCESS, started=self.clock(), latency_s=0.0, status=200)


class Collect:
    """on_result that keeps every result, as a caller would, under its own lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[Result] = []

    def __call__(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)

    def __len__(self) -> int:
        with self.lock:
            return len(self.results)


def until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait for `check` to hold; the timeout is an order of magnitude above what it needs."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="module")
def instant() -> Iterator[LabServer]:
    with LabServer("instant") as lab:
        yield lab


def test_every_request_ends_in_exactly_one_result(instant: LabServer) -> None:
    """300 URLs through 16 workers and the real fetcher: 300 results, all successes."""
    fetcher = Fetcher()
    collect = Collect()
    pool = Pool(fetcher, (instant.url for _ in range(300)), 16, collect)
    pool.start()
    assert pool.wait(30)
    fetcher.close()
    assert len(collect) == 300
    assert Counter(r.outcome for r in collect.results) == {Outcome.SUCCESS: 300}
    assert pool.done and pool.in_flight == 0


def test_shrinking_never_cancels_a_request_under_way() -> None:
    """8 requests under way, size cut to 2: all 8 finish, and then no more than 2 run at once."""
    gate = Gate()
    collect = Collect()
    pool = Pool(gate, (f"u{i}" for i in range(30)), 8, collect)
    pool.start()
    assert until(lambda: gate.running == 8)
    pool.resize(2)
    assert pool.in_flight == 8 and len(collect) == 0
    with gate.lock:
        gate.most = 0
    gate.open.set()
    assert pool.wait(10)
    assert len(collect) == 30
    assert gate.most <= 8  # the 8 finishing; none admitted past the new size
    assert pool.workers == 2


def test_shrunk_pool_admits_only_under_the_new_size() -> None:
    """After a shrink from 6 to 2, new requests wait until fewer than 2 run."""
    gate = Gate()
    pool = Pool(gate, itertools.repeat("u"), 6, Collect())
    pool.start()
    assert until(lambda: gate.running == 6)
    pool.resize(2)
    started_before = gate.started
    gate.open.set()
    gate.open.clear()  # the 6 under way go; the next ones hold again
    assert until(lambda: gate.running == 2)
    time.sleep(0.1)
    assert gate.running == 2 and gate.started == started_before + 2
    gate.open.set()
    pool.stop(5)


def test_growing_starts_workers_at_once() -> None:
    """resize(10) from 2 puts 10 requests under way without waiting for the 2 to finish."""
    gate = Gate()
    pool = Pool(gate, itertools.repeat("u"), 2, Collect())
    pool.start()
    assert until(lambda: gate.running == 2)
    pool.resize(10)
    assert until(lambda: gate.running == 10)
    assert pool.threads == 10
    gate.open.set()
    pool.stop(5)


def test_threads_above_the_size_exit_after_idling() -> None:
    """Grown to 20 then shrunk to 2, the pool soon holds about 2 threads, not 20."""
    pool = Pool(lambda url: Result(Outcome.SUCCESS, 0.0, 0.0), itertools.repeat("u"), 20, Collect())
    pool.start()
    assert until(lambda: pool.threads == 20)
    pool.resize(2)
    assert until(lambda: pool.threads <= 3, timeout=IDLE_EXIT_S * 10)
    pool.stop(5)


def test_an_exception_in_a_worker_does_not_kill_the_pool() -> None:
    """A fetch that raises and an on_result that raises become client errors; work goes on."""

    def fetch(url: str) -> Result:
        if url.endswith("3"):
            raise KeyError(url)
        return Result(Outcome.SUCCESS, 0.0, 0.0)

    collect = Collect()

    def on_result(result: Result) -> None:
        if result.outcome is Outcome.SUCCESS and len(collect) % 5 == 0:
            collect(Result(Outcome.SUCCESS, 0.0, 0.0, detail="raised"))
            raise ValueError("bug in the caller")
        collect(result)

    pool = Pool(fetch, (f"u{i}" for i in range(100)), 4, on_result)
    pool.start()
    assert pool.wait(10)
    details = Counter(r.detail for r in collect.results if r.outcome is Outcome.CLIENT_ERROR)
    assert details["KeyError"] == 10
    assert details["ValueError"] == len([r for r in collect.results if r.detail == "raised"]) > 0
    assert len(collect) == 100 + details["ValueError"]  # the raised ones reported as their error


def test_a_million_url_source_is_not_materialised() -> None:
    """A 1,000,000-URL generator is read one URL per admitted request, not all at once."""
    pulled = 0

    def urls() -> Iterator[str]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield f"u{i}"

    gate = Gate()
    pool = Pool(gate, urls(), 4, Collect())
    pool.start()
    assert until(lambda: gate.running == 4)
    time.sleep(0.1)
    assert pulled == 4
    gate.open.set()
    pool.stop(5)


def test_a_hung_request_can_be_abandoned() -> None:
    """A request hanging on the server frees its slot; others go on; its result still comes once."""
    release = threading.Event()

    def fetch(url: str) -> Result:
        if url == "hang":
            release.wait(30)
        return Result(Outcome.SUCCESS, 0.0, 0.0, detail=url)

    clock = FakeClock()
    collect = Collect()
    pool = Pool(fetch, iter(["hang", *(f"u{i}" for i in range(50))]), 1, collect, clock=clock)
    pool.start()
    assert until(lambda: pool.in_flight == 1)
    clock.advance(60)
    assert pool.in_flight_ages() == [60.0]
    assert pool.abandon_older_than(30) == 1
    assert pool.wait(10)  # 50 others done while "hang" still runs
    assert len(collect) == 50 and pool.in_flight == 0
    release.set()
    assert until(lambda: len(collect) == 51)
    time.sleep(0.05)
    assert [r.detail for r in collect.results].count("hang") == 1


def test_pause_admits_nothing_before_the_stamp() -> None:
    """After pause_until(t), no request starts before t; the pool resumes by itself after."""
    starts: list[float] = []

    def fetch(url: str) -> Result:
        starts.append(time.monotonic())
        return Result(Outcome.SUCCESS, 0.0, 0.0)

    pool = Pool(fetch, (f"u{i}" for i in range(20)), 2, Collect())
    stamp = time.monotonic() + 0.3
    pool.pause_until(stamp)
    pool.start()
    assert pool.wait(10)
    assert len(starts) == 20 and min(starts) >= stamp


def test_busy_seconds_integrates_in_flight_over_the_clock() -> None:
    """4 requests under way for 10 clock-seconds add 40 busy seconds: Δbusy/Δt = 4 in flight."""
    clock = FakeClock()
    gate = Gate(clock)
    pool = Pool(gate, itertools.repeat("u"), 4, Collect(), clock=clock)
    pool.start()
    assert until(lambda: pool.in_flight == 4)
    before = pool.busy_seconds()
    clock.advance(10)
    assert pool.busy_seconds() - before == pytest.approx(40.0)
    gate.open.set()
    pool.stop(5)


def test_waiting_counts_workers_with_nothing_to_do() -> None:
    """3 URLs for 8 workers: once they are done, all 8 workers wait for work; 0 while URLs wait."""
    gate = Gate()
    pool = Pool(gate, iter(["a", "b", "c"]), 8, Collect())
    pool.start()
    assert until(lambda: pool.exhausted)
    assert pool.waiting() == 5  # 3 busy, 5 idle for want of URLs
    gate.open.set()
    assert pool.wait(5)
    assert pool.waiting() == 8
    busy = Pool(Gate(), itertools.repeat("u"), 4, Collect())
    busy.start()
    assert until(lambda: busy.in_flight == 4)
    assert busy.waiting() == 0
    busy.stop(0)


def test_stop_reports_requests_left_running() -> None:
    """stop() waits out its grace and says how many requests are still under way."""
    gate = Gate()
    pool = Pool(gate, itertools.repeat("u"), 3, Collect())
    pool.start()
    assert until(lambda: gate.running == 3)
    assert pool.stop(0.1) == 3
    gate.open.set()
    assert until(lambda: pool.threads == 0)
    assert gate.started == 3  # nothing admitted after stop


def test_no_thread_to_start_is_a_client_limit_not_a_crash() -> None:
    """When the machine refuses threads, the pool keeps those it has and reports a client limit."""
    code = """
import resource, threading, time
from tuner.measure import Outcome, Result
from tuner.pool import Pool
results = []
lock = threading.Lock()
def on_result(r):
    with lock:
        results.append(r)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
import os
vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
threading.stack_size(64 * 1024 * 1024)
resource.setrlimit(resource.RLIMIT_AS, (vm + 1024 * 1024 * 1024, hard))
def fetch(url):
    time.sleep(0.05)  # long enough that every thread started is alive when the next starts
    return Result(Outcome.SUCCESS, 0.0, 0.0)
pool = Pool(fetch, (str(i) for i in range(200)), 500, on_result)
pool.start()
ok = pool.wait(60)
limits = [r for r in results if r.client_limit]
print(ok, pool.threads, len(limits), sum(r.outcome is Outcome.SUCCESS for r in results))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, _, limits, successes = out.stdout.split()
    assert ok == "True" and int(limits) == 1 and int(successes) == 200
