"""The tuning logic: measurement windows in, pool-size decisions out. Pure.

The controller never sleeps, reads a clock or touches the network: the caller
measures a `Window` at the pool size in force, stamps it, and hands it over;
the controller answers with a `Decision` the caller applies.

    controller = Controller(Policy(max_workers=256))
    decision = controller.observe(window)   # window: frozen measurements
    pool.resize(decision.workers)

How it moves, phase by phase:

- **ramp**: double the pool while goodput still grows in proportion
  (reaching 512 from 1 takes nine windows, not minutes of +1 steps); grow by
  half when the gain is partial; stop when the last step bought under a
  third of the goodput its workers would in proportion.
- **search**: the knee lies between the largest pool that misses 97% of the
  plateau (the median of the points within 5% of the top, not the luckiest
  window) and the smallest that reaches it; bisect that bracket, splitting
  first where Little's law puts the knee, until it is narrower than
  `resolution`. Every comparison is against the plateau, not only the
  previous pool. On a retrograde curve (goodput falling past a peak) it first
  probes between the best pool and the next larger one, where the fitted
  Universal Scalability Law puts the peak. A point that decides (the top of
  the climb, a lone high window, the knee) is measured again, and the median
  of up to three windows counts.
- **hold**: stay at the knee; now and then (jittered) try one step up and
  one step down, each confirmed by a second window, and search again when
  goodput at the knee stays 15% lower for three windows.
- **backoff**: overload (5xx, timeouts, refusals, requests hanging far longer
  than usual, or a p95 over the latency budget) at a pool size marks a cliff
  there, remembered for a while (longer each time it is confirmed), and the
  pool drops below it: at most one decrease a window.
- **paused**: a 429 (or 503) with Retry-After pauses admission that long and
  marks a cliff like overload does.

Failures of the client itself (no file descriptors, no threads, no memory)
set a hard ceiling instead of a cliff: those are this machine's limits, and
waiting will not lift them. A window in which the URL source ran dry says
nothing about capacity and never grows the pool.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tuner.measure import Window
from tuner.usl import UslFit, fit_usl


class Phase(StrEnum):
    """Which phase the tuner is in: the `tuner_phase` label of the `tuner_phase` enum metric."""

    RAMP = "ramp"
    SEARCH = "search"
    HOLD = "hold"
    BACKOFF = "backoff"
    PAUSED = "paused"


# The `reason` of a decision (the `reason` label of `tuner_decisions_total`): a fixed set.
REASONS = (
    "start",  # the first pool size of a run
    "ramp",  # growing: more workers still buy goodput
    "search",  # bisecting the bracket that holds the knee
    "settle",  # the knee is found
    "hold",  # staying at (or returning to) the knee
    "probe_up",  # a gentle step up from the knee
    "probe_down",  # a gentle step down from the knee
    "drift",  # goodput at the knee changed: search again
    "demand",  # fewer URLs waiting than workers: no growth
    "errors",  # 5xx, timeouts or refusals past the budget: back off
    "hang",  # requests hanging far past usual latency: back off
    "throttled",  # 429 / Retry-After: pause and back off
    "latency",  # p95 over the latency budget: back off
    "client_limit",  # this machine ran out of files, threads or memory
)

# Why a probe stopped growing (`stop_reason` of `tuner probe`), besides `time_limit`.
BOUNDS = ("flattened", "errors", "throttled", "latency", "ceiling", "max_workers")


@dataclass(frozen=True, slots=True)
class Policy:
    """The bounds and settings one target is tuned under.

    `ceiling` is the client's own limit (see `tuner.ceiling`), never exceeded.
    `error_budget` is the share of requests that may fail from overload before
    a pool size counts as past the cliff; set it above the target's background
    rate of 5xx answers. The tuner aims for `1 - tolerance + margin` of the
    best goodput (97% by default) so noise cannot push it under the knee's 95%.
    """

    min_workers: int = 1
    max_workers: int = 256
    ceiling: int = 100_000
    error_budget: float = 0.01
    latency_budget_s: float | None = None
    timeout_s: float = 10.0
    tolerance: float = 0.05
    margin: float = 0.02
    resolution: float = 0.08
    cliff_memory_s: float = 900.0
    max_cliff_memory_s: float = 86_400.0
    max_pause_s: float = 300.0
    probe_every: tuple[int, int] = (4, 8)
    seed: int = 0

    @property
    def cap(self) -> int:
        """The largest pool the bounds allow."""
        return max(self.min_workers, min(self.max_workers, self.ceiling))


@dataclass(frozen=True, slots=True)
class Decision:
    """What the controller wants after a window: a pool size, a phase and why.

    `reason` is one of `REASONS`. `pause_s` > 0 asks the caller to admit no new
    request for that long (Retry-After). `ceiling` is the client's limit
    lowered by any remembered cliff; `settled` is true while holding the knee.
    """

    workers: int
    phase: Phase
    reason: str
    knee: int | None = None
    ceiling: int = 0
    cliff: int | None = None
    pause_s: float = 0.0
    settled: bool = False


@dataclass(frozen=True, slots=True)
class WindowGoal:
    """How long the next window should run: enough completions to tell a few percent apart."""

    requests: int
    min_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class Learned:
    """What the controller knows that is worth keeping across runs and restarts.

    `cliff_until` is a stamp of the caller's clock; the caller converts it
    when it saves and loads (a monotonic clock does not survive a restart).
    """

    knee: int | None = None
    best_goodput: float = 0.0
    cliff: int | None = None
    cliff_reason: str = ""
    cliff_until: float = 0.0
    cliff_memory_s: float = 0.0
    client_cap: int | None = None
    baseline_p50_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "knee": self.knee,
            "best_goodput": self.best_goodput,
            "cliff": self.cliff,
            "cliff_reason": self.cliff_reason,
            "cliff_until": self.cliff_until,
            "cliff_memory_s": self.cliff_memory_s,
            "client_cap": self.client_cap,
            "baseline_p50_s": self.baseline_p50_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Learned:
        """The inverse of `as_dict`; unknown keys are ignored, bad values raise ValueError."""

        def opt_int(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        baseline = data.get("baseline_p50_s")
        return cls(
            knee=opt_int("knee"),
            best_goodput=float(data.get("best_goodput", 0.0)),
            cliff=opt_int("cliff"),
            cliff_reason=str(data.get("cliff_reason", "")),
            cliff_until=float(data.get("cliff_until", 0.0)),
            cliff_memory_s=float(data.get("cliff_memory_s", 0.0)),
            client_cap=opt_int("client_cap"),
            baseline_p50_s=None if baseline is None else float(baseline),
        )


@dataclass(frozen=True, slots=True)
class Point:
    """Goodput and latency measured at one pool size in the current search.

    `samples` holds the goodput of the last three windows measured there;
    `goodput` is their median, so one stalled or lucky window cannot decide
    where it matters (the top of the climb, the best pool, the knee).
    """

    workers: int
    samples: tuple[float, ...]
    p50_s: float

    @property
    def goodput(self) -> float:
        """The median of the samples (the mean of two)."""
        return statistics.median(self.samples)

    @property
    def doubtful(self) -> bool:
        """Measured once, or twice with answers more than 5% apart: worth another window."""
        if len(self.samples) == 1:
            return True
        return len(self.samples) == 2 and min(self.samples) < 0.95 * max(self.samples)


class Controller:
    """Finds the knee of one target and keeps the pool there. Not thread-safe; pure.

        c = Controller(Policy(max_workers=64))
        c.observe(Window(workers=1, duration_s=1.0, successes=50, p50_s=0.02)).workers  # 2
    """

    def __init__(self, policy: Policy, learned: Learned | None = None) -> None:
        self.policy = policy
        self._rng = random.Random(policy.seed)
        self._points: dict[int, Point] = {}
        self._baseline: deque[float] = deque(maxlen=16)
        self._cv = 0.3  # latency spread, until windows say otherwise
        self._p95 = 0.0
        self._cliff: int | None = None
        self._cliff_reason = ""
        self._cliff_until = 0.0
        self._cliff_goodput: float | None = None  # goodput seen in the window that failed
        self._cliff_memory_s = 0.0
        self._client_cap: int | None = None
        self._bound = ""
        self._knee: int | None = None
        self._held_knee: int | None = None  # the last knee held, kept through a re-search
        self._best_goodput = 0.0  # the top goodput of the search that found the knee
        self._hold_goodput = 0.0  # goodput at the knee, followed slowly while holding
        self._probing = ""
        self._drift = 0
        self._up_next = False
        self._until_probe = 0
        self._schedule_probe()
        learned = learned or Learned()
        self._client_cap = learned.client_cap
        if learned.cliff is not None:
            self._cliff = learned.cliff
            self._cliff_reason = learned.cliff_reason
            self._cliff_until = learned.cliff_until
            self._cliff_memory_s = learned.cliff_memory_s
        if learned.baseline_p50_s:
            self._baseline.append(learned.baseline_p50_s)
        if learned.knee is not None:
            # A warm start: trust the knee and hold there; the hold's probes and
            # drift check correct it if the far side has changed since.
            self._knee = self._held_knee = self._clamp(learned.knee)
            self._best_goodput = self._hold_goodput = learned.best_goodput
            self.phase = Phase.HOLD
            self.workers = self._knee
        else:
            self.phase = Phase.RAMP
            self.workers = self._clamp(policy.min_workers)

    # --- what the caller reads ------------------------------------------------

    @property
    def knee(self) -> int | None:
        """The knee the controller believes now (None until found)."""
        return self._knee

    @property
    def cliff(self) -> int | None:
        """The smallest pool size remembered to fail, if any."""
        return self._cliff

    @property
    def cliff_reason(self) -> str:
        """What the remembered cliff was: errors, hang, throttled or latency."""
        return self._cliff_reason if self._cliff is not None else ""

    @property
    def client_ceiling(self) -> int:
        """The client's own limit: the policy's ceiling, lowered by any client failure seen."""
        cap = self.policy.ceiling
        if self._client_cap is not None:
            cap = min(cap, self._client_cap)
        return max(self.policy.min_workers, cap)

    @property
    def ceiling(self) -> int:
        """The client's limit lowered by the remembered cliff: no pool above it is tried."""
        cap = self.client_ceiling
        if self._cliff is not None:
            cap = min(cap, self._cliff - 1)
        return max(self.policy.min_workers, cap)

    @property
    def bound(self) -> str:
        """Why growth stopped (one of `BOUNDS`), or "" while it has not."""
        return self._bound

    @property
    def settled(self) -> bool:
        """True while holding a knee."""
        return self.phase is Phase.HOLD

    def points(self) -> list[Point]:
        """The pool sizes measured in the current search, smallest first."""
        return [self._points[n] for n in sorted(self._points)]

    def model(self) -> UslFit | None:
        """The Universal Scalability Law fitted to the current search's points, if enough."""
        return fit_usl([(p.workers, p.goodput) for p in self._points.values()])

    def goal(self) -> WindowGoal:
        """How long the next window should run.

        Goodput over a window of n completions has a relative error of about
        cv/√n (cv: the spread of latency), so telling a 5% step from noise at two
        standard errors needs n ≈ (2·cv/0.025)². The ramp, where steps are 2×,
        settles for coarser windows. A window also lasts a few latencies, so
        requests admitted at the previous size have drained.
        """
        ramp = self.phase is Phase.RAMP
        precision = 0.05 if ramp else 0.025
        # Capped: past ~1,200 completions a window costs more time than the
        # median of three windows at the decisive points costs in precision.
        requests = min(1200, max(20, math.ceil((2.0 * self._cv / precision) ** 2)))
        # Long enough that the drain or fill after a resize is a small part of it.
        min_s = max(0.1 if ramp else 0.25, 5.0 * self._p95)
        max_s = max(min_s, 1.0 if ramp else 3.0)
        return WindowGoal(requests=requests, min_s=min_s, max_s=max_s)

    def suspect_after_s(self) -> float:
        """Age past which a request under way is suspect: far beyond usual latency.

        Five times the recent p95 (and ten times the baseline median), never
        below 250 ms, never above half the timeout: a server that hangs past its
        capacity is seen long before its requests time out.
        """
        usual = max(5.0 * self._p95, 10.0 * self.baseline_p50_s, 0.25)
        return min(usual, max(0.25, 0.5 * self.policy.timeout_s))

    def linger_after_s(self) -> float:
        """Age past which a request under way keeps its window open: twice the recent p95.

        A window does not close while a request it admitted is this late,
        so a request that then hangs is counted against the pool size that
        admitted it, not against a later, smaller one.
        """
        return min(max(2.0 * self._p95, 0.02), self.suspect_after_s())

    @property
    def baseline_p50_s(self) -> float:
        """The no-load median latency: the lowest window median of the last 16 clean windows.

        Each entry is a window's median, never a single lucky request, and old
        windows slide out, so the baseline is re-learned when the far side changes.
        """
        return min(self._baseline) if self._baseline else 0.0

    def over_budget(self, bad: int, total: int) -> bool:
        """Whether `bad` overload failures out of `total` requests exceed the error budget.

        Two failures at least: one error is noise, not a cliff.
        """
        return bad >= 2 and bad > self.policy.error_budget * total

    def should_cut(
        self, *, requests: int, overload: int, suspects: int, retry_after: bool, client_limit: int
    ) -> bool:
        """Whether a window under way should end now, so a cliff costs few failed requests."""
        if client_limit or retry_after:
            return True
        return self.over_budget(overload + suspects, requests + suspects)

    def learned(self) -> Learned:
        """What is worth saving: knee, best goodput, remembered cliff, client cap, baseline."""
        return Learned(
            knee=self._knee if self._knee is not None else self._held_knee,
            best_goodput=self._best_goodput,
            cliff=self._cliff,
            cliff_reason=self._cliff_reason if self._cliff is not None else "",
            cliff_until=self._cliff_until if self._cliff is not None else 0.0,
            cliff_memory_s=self._cliff_memory_s,
            client_cap=self._client_cap,
            baseline_p50_s=self.baseline_p50_s or None,
        )

    def update_policy(self, policy: Policy) -> None:
        """Take new bounds (a config reload) and keep what was learned."""
        self.policy = policy
        self.workers = self._clamp(self.workers)
        if self._knee is not None:
            self._knee = self._clamp(self._knee)

    # --- the control law -------------------------------------------------------

    def observe(self, window: Window) -> Decision:
        """Read one window measured at `window.workers` and decide the next pool size."""
        self._expire_cliff(window.ended)
        if window.client_limit:
            return self._client_limited(window)
        if window.throttled and window.retry_after_s:
            return self._throttled(window)
        if self.over_budget(window.overload + window.suspects, window.requests + window.suspects):
            reason = "hang" if window.suspects >= window.overload else "errors"
            if window.throttled * 2 > window.overload:
                reason = "throttled"  # 429s without Retry-After: overload all the same
            return self._back_off(window, reason)
        budget = self.policy.latency_budget_s
        if budget is not None and window.successes >= 5 and window.p95_s > budget:
            return self._back_off(window, "latency")
        self._learn_latency(window)
        if window.demand_limited or window.successes == 0:
            # Too few URLs to keep every worker busy: nothing here measures capacity.
            return self._decide(self.workers, "demand")
        self._record(window)
        if self.phase is Phase.HOLD:
            return self._hold(window)
        return self._search()

    def _decide(self, workers: int, reason: str, pause_s: float = 0.0) -> Decision:
        self.workers = self._clamp(workers)
        return Decision(
            workers=self.workers,
            phase=self.phase,
            reason=reason,
            knee=self._knee,
            ceiling=self.ceiling,
            cliff=self._cliff,
            pause_s=pause_s,
            settled=self.phase is Phase.HOLD,
        )

    def _clamp(self, workers: int) -> int:
        return max(self.policy.min_workers, min(workers, self.ceiling, self.policy.cap))

    def _learn_latency(self, w: Window) -> None:
        if w.successes < 10:
            return
        self._cv = 0.7 * self._cv + 0.3 * w.latency_cv
        self._p95 = w.p95_s
        self._baseline.append(w.p50_s)

    def _record(self, w: Window) -> None:
        old = self._points.get(w.workers)
        if old is None:
            self._points[w.workers] = Point(w.workers, (w.goodput,), w.p50_s)
        else:
            samples = (*old.samples, w.goodput)[-3:]
            self._points[w.workers] = Point(w.workers, samples, min(old.p50_s, w.p50_s))

    def _expire_cliff(self, now: float) -> None:
        if self._cliff is not None and now >= self._cliff_until:
            self._cliff = None  # the memory doubles if the same cliff is hit again
            self._cliff_goodput = None

    def _set_cliff(self, workers: int, reason: str, now: float) -> None:
        if self._cliff_memory_s == 0.0:
            memory = self.policy.cliff_memory_s
        elif self._cliff is None:
            # Hit again after the memory lapsed: remember it twice as long.
            memory = min(2.0 * self._cliff_memory_s, self.policy.max_cliff_memory_s)
        else:
            memory = self._cliff_memory_s
        self._cliff_memory_s = memory
        self._cliff = workers if self._cliff is None else min(self._cliff, workers)
        self._cliff_reason = reason
        self._cliff_until = now + memory
        self._bound = "errors" if reason == "hang" else reason

    def _back_off(self, w: Window, reason: str, pause_s: float = 0.0) -> Decision:
        """Overload at `w.workers`: remember the cliff and drop below it, once this window."""
        self._set_cliff(w.workers, reason, w.ended)
        # The successes of a failing window still measure goodput there; with
        # enough of them they say whether the pools below the cliff are worth trying.
        self._cliff_goodput = w.goodput if w.successes >= 20 else None
        self._points = {n: p for n, p in self._points.items() if n < w.workers}
        if self._knee is not None and self._knee >= w.workers:
            self._knee = None
        # Back to the largest pool measured clean below, when it is close; else
        # a multiplicative decrease. Either way one step, once this window.
        below = max(self._points, default=0)
        workers = below if below >= w.workers // 2 else math.floor(0.75 * w.workers)
        self.phase = Phase.PAUSED if pause_s else Phase.BACKOFF
        return self._decide(workers, reason, pause_s)

    def _throttled(self, w: Window) -> Decision:
        pause = min(w.retry_after_s or 0.0, self.policy.max_pause_s)
        return self._back_off(w, "throttled", pause_s=pause)

    def _client_limited(self, w: Window) -> Decision:
        # The pool could not hold w.workers: cap at what it did hold, less a margin.
        held = min(w.workers - 1, max(1, math.floor(w.in_flight)))
        cap = max(self.policy.min_workers, math.floor(0.9 * held))
        self._client_cap = cap if self._client_cap is None else min(self._client_cap, cap)
        self._bound = "ceiling"
        self._points = {n: p for n, p in self._points.items() if n <= cap}
        if self._knee is not None and self._knee > cap:
            self._knee = cap
        self.phase = Phase.BACKOFF
        return self._decide(min(self.workers, cap), "client_limit")

    def _best(self) -> Point:
        top = max(p.goodput for p in self._points.values())
        # The smallest pool within the windows' precision (2.5%) of the top:
        # a lucky window at a larger pool must not pass for a better one.
        return min(
            (p for p in self._points.values() if p.goodput >= 0.975 * top),
            key=lambda p: p.workers,
        )

    def _growth(self, best: Point) -> tuple[int, str] | None:
        """The next larger pool to try and why, or None when growing would not pay."""
        top = max(self._points)
        if top != best.workers:
            # A larger pool did worse: measured again before it ends the climb.
            return (top, "search") if self._points[top].doubtful else None
        below = [n for n in self._points if n < top]
        factor = 2.0
        if below:
            prev = self._points[max(below)]
            ratio = top / prev.workers
            elasticity = (best.goodput / prev.goodput - 1.0) / (ratio - 1.0)
            if elasticity < 0.3:
                if self._points[top].doubtful:
                    return top, "search"  # one window must not end the climb: once more
                # Goodput grows by under a third of the workers added: on a concave
                # curve the next step would buy less still. The knee is below `top`.
                self._bound = "flattened"
                return None
            if elasticity < 0.8:
                factor = 1.5  # a partial gain: close in more carefully
        want = max(top + 1, round(top * factor))
        cap = min(self.client_ceiling, self.policy.max_workers)
        if self._cliff is not None and want >= self._cliff:
            cliff_bound = self._cliff_reason if self._cliff_reason != "hang" else "errors"
            if (
                self._cliff_goodput is not None
                and self._cliff_goodput <= best.goodput * (1.0 + self.policy.tolerance)
            ):
                # Even the failing pool did not beat this one: nothing to gain up there.
                self._bound = cliff_bound
                return None
            # Approach a remembered cliff by halves, and stop a resolution short of it.
            want = (top + self._cliff) // 2
            if self._cliff - top <= max(1, self.policy.resolution * top):
                self._bound = cliff_bound
                return None
        if want > cap:
            want = cap
        if want <= top:
            self._bound = "max_workers" if cap == self.policy.max_workers else "ceiling"
            return None
        return want, "ramp"

    def _peak_probe(self, best: Point) -> int | None:
        """On a retrograde curve, a pool between the best and the next larger one, if unmeasured."""
        above = [n for n in self._points if n > best.workers]
        if not above:
            return None
        up = min(above)
        if self._points[up].goodput >= 0.9 * best.goodput:
            return None  # flat past the best: no hidden peak worth a probe
        if up - best.workers <= max(1, self.policy.resolution * best.workers):
            return None
        fit = self.model()
        peak = fit.peak_workers if fit else None
        candidate = peak if peak and best.workers < peak < up else (best.workers + up) // 2
        return None if candidate in self._points else candidate

    def _search(self) -> Decision:
        best = self._best()
        growth = self._growth(best)
        if growth is not None:
            workers, reason = growth
            self.phase = Phase.RAMP if reason == "ramp" else Phase.SEARCH
            return self._decide(workers, reason)
        self.phase = Phase.SEARCH
        peak = self._peak_probe(best)
        if peak is not None:
            return self._decide(peak, "search")
        leader = max(self._points.values(), key=lambda p: p.goodput)
        runner_up = max((p.goodput for p in self._points.values() if p is not leader), default=0.0)
        if leader.doubtful and leader.goodput > 1.05 * runner_up:
            return self._decide(leader.workers, "search")  # a lone high window: confirm it
        # Aim at 97% of the plateau, so the knee's 95% holds with noise to spare.
        target = self._plateau() * (1.0 - self.policy.tolerance + self.policy.margin)
        hi = min(n for n, p in self._points.items() if p.goodput >= target)
        lower = [n for n in self._points if n < hi]
        if not lower:
            if hi <= self.policy.min_workers:
                return self._settle(hi)
            return self._decide(max(self.policy.min_workers, hi // 2), "search")
        lo = max(lower)
        if hi - lo <= max(1, self.policy.resolution * hi):
            if self._points[hi].doubtful:
                return self._decide(hi, "search")  # the knee is measured twice before it is held
            return self._settle(hi)
        return self._decide(self._pivot(lo, hi, best), "search")

    def _plateau(self) -> float:
        """The best goodput on offer: the median of every point within 5% of the top.

        The top alone is the luckiest of many noisy windows; on a flat plateau
        its 97% would sit above most honest measurements, and the knee would
        be pushed far up the plateau.
        """
        goodputs = [p.goodput for p in self._points.values()]
        top = max(goodputs)
        return statistics.median(g for g in goodputs if g >= 0.95 * top)

    def _pivot(self, lo: int, hi: int, best: Point) -> int:
        """Where to split the bracket: Little's law's guess when it falls inside, else halfway.

        Past a queue's knee, goodput × no-load latency is the number of requests
        the far side serves at once, which is where its knee sits.
        """
        guess = math.ceil(best.goodput * self.baseline_p50_s)
        if lo < guess < hi and guess not in self._points:
            return guess
        return (lo + hi) // 2

    def _settle(self, knee: int) -> Decision:
        self.phase = Phase.HOLD
        self._knee = self._held_knee = knee
        self._best_goodput = self._plateau()
        self._hold_goodput = self._points[knee].goodput
        self._drift = 0
        self._probing = ""
        self._schedule_probe()
        if not self._bound:
            self._bound = "flattened"
        return self._decide(knee, "settle")

    def _schedule_probe(self) -> None:
        low, high = self.policy.probe_every
        self._until_probe = self._rng.randint(low, high)  # jittered: no lockstep across targets

    def _restart_search(self, keep: list[Point]) -> Decision:
        """The far side changed: forget the old curve, keep the fresh points, search again."""
        self._points = {p.workers: p for p in keep}
        self._knee = None
        self._bound = ""
        self._probing = ""
        self._drift = 0
        return self._search()

    def _hold(self, w: Window) -> Decision:
        knee = self._knee if self._knee is not None else w.workers
        step = max(1, round(0.08 * knee))  # gentle: under the 10% a settled pool may move
        if self._probing == "up":
            up = self._points[w.workers]
            gain = up.goodput / self._hold_goodput - 1.0 if self._hold_goodput else 0.0
            if gain >= 0.5 * (w.workers - knee) / knee:
                if len(up.samples) < 2:
                    return self._decide(w.workers, "probe_up")  # a gain must show twice
                # More workers buy goodput again: the knee moved up. Ramp from here.
                self._probing = ""
                base = Point(knee, (self._hold_goodput,), self.baseline_p50_s or w.p50_s)
                return self._restart_search([base, up])
            self._probing = ""
            del self._points[w.workers]  # a failed probe: next time is measured afresh
            return self._decide(knee, "hold")
        if self._probing == "down":
            down = self._points[w.workers]
            target = self._best_goodput * (1.0 - self.policy.tolerance + self.policy.margin)
            if down.goodput >= target:
                if len(down.samples) < 2:
                    return self._decide(w.workers, "probe_down")  # as good twice, or not at all
                self._probing = ""
                self._knee = self._held_knee = w.workers  # fewer do as well: the knee moved down
                return self._decide(w.workers, "probe_down")
            self._probing = ""
            del self._points[w.workers]
            return self._decide(knee, "hold")
        if w.workers != knee:
            return self._decide(knee, "hold")
        if self._hold_goodput <= 0.0:
            self._best_goodput = self._hold_goodput = w.goodput
        if w.goodput < 0.85 * self._hold_goodput:
            self._drift += 1
            if self._drift >= 3:  # three times in a row: a change, not noise
                self.phase = Phase.SEARCH
                self._points = {knee: Point(knee, (w.goodput,), w.p50_s)}
                self._knee = None
                self._bound = ""
                self._drift = 0
                return self._decide(max(self.policy.min_workers, knee // 2), "drift")
            return self._decide(knee, "hold")
        self._drift = 0
        # Track the knee's goodput slowly, so a drift still shows against it.
        self._hold_goodput = 0.8 * self._hold_goodput + 0.2 * w.goodput
        # Never faded: judging each step down against the last one would let
        # the knee creep down a slope a few percent at a time.
        self._best_goodput = max(self._best_goodput, self._hold_goodput)
        self._until_probe -= 1
        if self._until_probe > 0:
            return self._decide(knee, "hold")
        self._schedule_probe()
        self._up_next = not self._up_next  # alternate: up, then down, then up
        can_up = knee + step <= min(self.ceiling, self.policy.cap)
        can_down = knee - step >= self.policy.min_workers
        probe = 0
        if can_up and (self._up_next or not can_down):
            self._probing, probe = "up", knee + step
        elif can_down:
            self._probing, probe = "down", knee - step
        if probe:
            self._points.pop(probe, None)  # a probe is measured afresh, not mixed with the search
            return self._decide(probe, f"probe_{self._probing}")
        return self._decide(knee, "hold")

