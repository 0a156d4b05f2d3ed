"""Real schedules, a few tenths of a second long: runs fire, never overlap, and skips are told."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tuner.schedule import Scheduler, check_cron

log = logging.getLogger("tuner.test.schedule")


class Runs:
    """A job body that sleeps, and the record of what it saw: runs, the most at once, skips."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.sleep_s = sleep_s
        self.lock = threading.Lock()
        self.started = 0
        self.active = 0
        self.most_at_once = 0
        self.skipped: list[str] = []
        self.ran = threading.Event()

    def __call__(self) -> None:
        with self.lock:
            self.started += 1
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        self.ran.set()
        time.sleep(self.sleep_s)
        with self.lock:
            self.active -= 1

    def on_skip(self, name: str) -> None:
        with self.lock:
            self.skipped.append(name)


@pytest.fixture
def make() -> Iterator[Callable[[Callable[[str], None]], Scheduler]]:
    """Schedulers that are shut down (waiting for their runs) when the test ends."""
    made: list[Scheduler] = []

    def make(on_skip: Callable[[str], None]) -> Scheduler:
        s = Scheduler(on_skip=on_skip, log=log)
        made.append(s)
        return s

    yield make
    for s in made:
        s.shutdown(wait=True)


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_long_run_skips_fires_and_never_overlaps(
    make: Callable[[Callable[[str], None]], Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    """Every 0.2 s with 0.5 s runs: fires during a run are skipped and told, one run at a time."""
    runs = Runs(sleep_s=0.5)
    s = make(runs.on_skip)
    s.set_job("api", every_s=0.2, cron=None, func=runs)
    with caplog.at_level(logging.WARNING, logger="tuner.test.schedule"):
        s.start()
        assert wait_for(lambda: runs.started >= 2 and len(runs.skipped) >= 1)
        s.shutdown(wait=True)
    assert runs.most_at_once == 1
    assert set(runs.skipped) == {"api"}
    skips = [r for r in caplog.records if r.getMessage() == "run_skipped"]
    assert len(skips) == len(runs.skipped)
    assert skips[0].tuner_fields["target"] == "api"  # type: ignore[attr-defined]  # tuner.log


def test_targets_run_side_by_side(make: Callable[[Callable[[str], None]], Scheduler]) -> None:
    """Two targets due at once both run at once: one slow target does not hold up another."""
    both = threading.Barrier(2, timeout=5)
    met: list[str] = []

    def job(name: str) -> Callable[[], None]:
        def run() -> None:
            both.wait()  # raises BrokenBarrierError unless the other run is under way too
            met.append(name)

        return run

    s = make(lambda name: None)
    s.set_job("api", every_s=60, cron=None, func=job("api"))
    s.set_job("web", cron="*/5 * * * *", every_s=None, func=job("web"))
    s.start()
    assert wait_for(lambda: len(met) == 2)
    assert s.job_names() == {"api", "web"}


def test_a_replaced_job_runs_on_its_new_schedule(
    make: Callable[[Callable[[str], None]], Scheduler],
) -> None:
    """set_job on a known name replaces the job: the new schedule and body take over."""
    old, new = Runs(), Runs()
    s = make(lambda name: None)
    s.set_job("api", every_s=3600, cron=None, func=old, run_now=False)
    s.start()
    s.set_job("api", every_s=0.1, cron=None, func=new, run_now=False)
    assert wait_for(lambda: new.started >= 2)
    assert old.started == 0
    assert s.job_names() == {"api"}


def test_replacing_a_running_job_does_not_overlap_it(
    make: Callable[[Callable[[str], None]], Scheduler],
) -> None:
    """A reload that reschedules a target mid-run skips the new fire instead of running twice."""
    runs = Runs(sleep_s=0.5)
    s = make(runs.on_skip)
    s.set_job("api", every_s=3600, cron=None, func=runs)
    s.start()
    assert runs.ran.wait(5)
    s.set_job("api", every_s=0.1, cron=None, func=runs)  # run_now: due while the first runs
    assert wait_for(lambda: runs.started >= 2)
    s.shutdown(wait=True)
    assert runs.most_at_once == 1
    assert runs.skipped


def test_a_removed_job_stops(make: Callable[[Callable[[str], None]], Scheduler]) -> None:
    """After remove_job no further run starts; removing it again is harmless."""
    runs = Runs()
    s = make(lambda name: None)
    s.set_job("api", every_s=0.05, cron=None, func=runs)
    s.start()
    assert wait_for(lambda: runs.started >= 2)
    s.remove_job("api")
    s.remove_job("api")
    time.sleep(0.1)  # a run submitted just before the removal may still start
    seen = runs.started
    time.sleep(0.3)
    assert runs.started == seen
    assert s.job_names() == set()


def test_running_follows_start_and_shutdown(
    make: Callable[[Callable[[str], None]], Scheduler],
) -> None:
    """/-/healthy sees the scheduler run between start and shutdown; shutdown twice is fine."""
    s = make(lambda name: None)
    assert not s.running
    s.start()
    assert s.running
    s.shutdown()
    s.shutdown()
    assert not s.running


def test_a_job_needs_exactly_one_schedule(
    make: Callable[[Callable[[str], None]], Scheduler],
) -> None:
    """A target is scheduled by interval or by cron, never both or neither."""
    s = make(lambda name: None)
    with pytest.raises(ValueError, match="exactly one"):
        s.set_job("api", every_s=None, cron=None, func=Runs())
    with pytest.raises(ValueError, match="exactly one"):
        s.set_job("api", every_s=5, cron="* * * * *", func=Runs())
    with pytest.raises(ValueError, match="> 0"):
        s.set_job("api", every_s=0, cron=None, func=Runs())
    assert s.job_names() == set()


def test_check_cron() -> None:
    """Five crontab fields pass; anything else says why not."""
    assert check_cron("*/5 * * * *") is None
    assert check_cron("*/5 * * *") is not None
    assert check_cron("61 * * * *") is not None
