"""One tuned run: a URL source through a pool while the controller sizes it.

The runner is the edge where time lives: it owns the clock, cuts the stream
of results into windows, hands each window to the controller and applies the
decision to the pool. It does not know about metrics or logs; an `Observer`
hears every result and every window.

    runner = Runner(controller, fetcher)
    summary = runner.run(target.iter_urls(), url_count=target.url_count())
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from tuner.controller import Controller, Decision
from tuner.measure import Outcome, Result, Step, Tally, Window
from tuner.pool import Pool

# The last window of a run counts only with at least this many requests.
MIN_FINAL_REQUESTS = 5


class Observer(Protocol):
    """Hears what a run does: metrics, logs and live displays implement it."""

    def result(self, result: Result) -> None:
        """A request finished (called from worker threads)."""

    def window(self, window: Window, decision: Decision, in_flight: int) -> None:
        """A window closed and the controller decided (called from the run's thread)."""


class _Silent:
    def result(self, result: Result) -> None:
        pass

    def window(self, window: Window, decision: Decision, in_flight: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run did.

    `end` is why it ended: `done` (the source ran dry), `settled` (asked to
    stop at the knee), `time_limit` or `stopped`. `abandoned` counts requests
    still under way when the run gave up waiting for them.
    """

    end: str
    duration_s: float
    outcomes: Mapping[Outcome, int]
    steps: tuple[Step, ...]
    workers: int
    abandoned: int
    windows: tuple[tuple[Window, Decision], ...] = field(default=(), repr=False)

    @property
    def requests(self) -> int:
        """Requests that finished."""
        return sum(self.outcomes.values())

    @property
    def successes(self) -> int:
        """Requests that succeeded."""
        return self.outcomes.get(Outcome.SUCCESS, 0)

    @property
    def goodput(self) -> float:
        """Successful responses per second over the whole run."""
        return self.successes / self.duration_s if self.duration_s > 0 else 0.0


class Runner:
    """Drives one pool with one controller; reusable run after run (the controller persists).

    Growth is let in gradually, one worker per success (TCP's slow start:
    doubling per round trip, but smooth), and the window is measured only
    once the new size is reached. So a ramp that would overshoot a cliff
    stops a worker or two past it, at the first failures, instead of sending
    a whole doubled pool over the edge. Failures also put on a brake at once:
    admission pauses for one tick until the controller has decided.

    `tick_s` is how often the loop looks at requests under way for ones
    that hang; failures wake it at once.
    """

    def __init__(
        self,
        controller: Controller,
        fetch: Callable[[str], Result],
        *,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 0.02,
        name: str = "tuner",
    ) -> None:
        self.controller = controller
        self._fetch = fetch
        self._observer: Observer = observer or _Silent()
        self._clock = clock
        self._tick_s = tick_s
        self._name = name
        self._cond = threading.Condition()
        self._tally = Tally(started=clock())
        self._outcomes: Counter[Outcome] = Counter()
        self._pool: Pool | None = None
        self._grow_to = 0  # the size a growth decision asked for, let in one success at a time

    def _on_result(self, result: Result) -> None:
        self._observer.result(result)
        pool = self._pool
        with self._cond:
            self._outcomes[result.outcome] += 1
            if result.overload and result.started < self._tally.started:
                # Admitted under an earlier window's pool size: its failure was
                # already answered there (at most one decrease per window).
                return
            tally = self._tally
            tally.add(result)
            if result.outcome is Outcome.SUCCESS:
                grow = pool is not None and pool.workers < self._grow_to
            else:
                grow = False
                if result.overload:
                    self._grow_to = 0  # the first sign of trouble ends a ramp-in
                if self._cut_due(tally, suspects=0):
                    self._grow_to = 0  # no more growth until the controller has decided
                    if pool is not None:
                        pool.pause_until(self._clock() + self._tick_s)
                    self._cond.notify()  # decide now, not at the next tick
        if grow and pool is not None:
            pool.resize(pool.workers + 1)

    def run(
        self,
        urls: Iterable[str],
        *,
        url_count: int | None = None,
        time_limit_s: float | None = None,
        stop: threading.Event | None = None,
        until_settled: int = 0,
        grace_s: float = 10.0,
    ) -> RunSummary:
        """Fetch every URL of `urls`, tuning as it goes; return what happened.

        `url_count`, when known, caps the pool: ten URLs never need more
        than ten workers. `until_settled` > 0 ends the run after that many
        windows at the knee. `stop` ends it early (a daemon's shutdown).
        """
        controller = self.controller
        clock = self._clock

        def cap(n: int) -> int:
            return max(1, min(n, url_count)) if url_count is not None else n

        with self._cond:
            self._outcomes = Counter()
            self._grow_to = 0
        workers = cap(controller.workers)
        pool = Pool(self._fetch, urls, workers, self._on_result, clock=clock, name=self._name)
        self._pool = pool
        began = clock()
        steps: list[Step] = []
        windows: list[tuple[Window, Decision]] = []
        self._begin_window(began)
        busy0 = pool.busy_seconds()
        decided_at = window_start = began
        growing = False
        settled = 0
        end = "done"
        pool.start()
        goal = controller.goal()
        while True:
            with self._cond:
                self._cond.wait(self._tick_s)
            now = clock()
            if stop is not None and stop.is_set():
                end = "stopped"
                break
            if time_limit_s is not None and now - began >= time_limit_s:
                end = "time_limit"
                break
            # The source ran dry and every request ended: the last window is
            # measured too (a run shorter than one window still teaches the
            # controller something), unless it is too small to say anything.
            final = pool.done
            if final and self._tally.requests < MIN_FINAL_REQUESTS:
                break
            if not final and now < window_start:
                continue  # paused (Retry-After): the next window starts when the pause ends
            elapsed = now - window_start
            # Requests admitted since the last decision, by age: a hung one counts
            # against the pool size that admitted it, never against a later one.
            suspect_age = controller.suspect_after_s()
            linger_age = controller.linger_after_s()
            own = [age for age in pool.in_flight_ages() if age <= now - decided_at]
            suspects = sum(1 for age in own if age > suspect_age)
            lingering = any(linger_age < age <= suspect_age for age in own)
            with self._cond:
                tally = self._tally
                cut = self._cut_due(tally, suspects)
                if growing and not (cut or final) and pool.workers >= self._grow_to:
                    # The new size is in force: measure it from now, not the ramp-in.
                    growing = False
                    window_start = now
                    busy0 = pool.busy_seconds()
                    self._tally = Tally(started=now)
                    continue
                complete = final or (
                    not growing
                    and not lingering
                    and tally.requests >= goal.requests
                    and elapsed >= goal.min_s
                ) or elapsed >= goal.max_s
                if not (cut or complete):
                    continue
                self._grow_to = 0
                in_flight = (pool.busy_seconds() - busy0) / elapsed if elapsed > 0 else 0.0
                window = tally.close(
                    ended=now,
                    workers=pool.workers,
                    in_flight=in_flight,
                    suspects=suspects,
                    # The source ran dry and workers sat idle for a good part of it.
                    demand_limited=pool.exhausted and in_flight < 0.8 * pool.workers,
                )
            decision = controller.observe(window)
            decided_at = window_start = now
            if decision.pause_s > 0:
                window_start = now + decision.pause_s
                pool.pause_until(window_start)
            want = cap(decision.workers)
            if want > pool.workers:
                growing = True
                with self._cond:
                    self._grow_to = want
                pool.resize(pool.workers + 1)
            else:
                growing = False
                pool.resize(want)
            # After the resize: freed slots must go to the new size, not the old one.
            pool.abandon_older_than(suspect_age)  # hung requests must not hold slots
            self._begin_window(window_start)
            busy0 = pool.busy_seconds()
            if window.requests:
                steps.append(Step.of(window))
            # What the pool holds, not what was asked for beyond the URLs there are.
            decision = replace(decision, workers=want)
            windows.append((window, decision))
            self._observer.window(window, decision, pool.in_flight)
            if final:
                break
            goal = controller.goal()
            if until_settled and decision.settled:
                settled += 1
                if settled >= until_settled:
                    end = "settled"
                    break
        # A daemon stopping owes requests under way its grace; a probe that has
        # its answer does not wait on a hung server.
        abandoned = pool.stop(grace_s if end in ("done", "stopped") else min(grace_s, 1.0))
        self._pool = None
        with self._cond:
            outcomes = dict(self._outcomes)
        return RunSummary(
            end=end,
            duration_s=clock() - began,
            outcomes=outcomes,
            steps=tuple(steps),
            workers=pool.workers,
            abandoned=abandoned,
            windows=tuple(windows),
        )

    def _cut_due(self, tally: Tally, suspects: int) -> bool:
        """Whether the window under way should end now (failures, Retry-After, client limits)."""
        return self.controller.should_cut(
            requests=tally.requests,
            overload=tally.overload,
            suspects=suspects,
            retry_after=tally.throttled > 0 and tally.retry_after_s is not None,
            client_limit=tally.client_limit,
        )

    def _begin_window(self, start: float) -> None:
        with self._cond:
            self._tally = Tally(started=start)
