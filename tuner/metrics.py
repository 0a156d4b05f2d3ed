"""Prometheus metrics: the only module that imports `prometheus_client`.

Names, types and labels are fixed by SPEC. Everything lives in the daemon's own
`CollectorRegistry` (never the global one), together with the `process_*`
metrics of this process, so two daemons in one test process never share a
series.

    metrics = Metrics(version=__version__)
    api = metrics.target("api", timeout_s=10.0, min_workers=1, max_workers=256)
    api.result(result)                    # from worker threads
    api.decision(decision, window)        # from the runner
    body = metrics.render()               # for GET /metrics, served as CONTENT_TYPE

Labels are bounded: `target` plus the fixed sets of outcomes, run results,
phases and decision reasons. Never a URL, a header or a status code.
"""

from __future__ import annotations

import threading

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tuner.controller import Decision, Phase
from tuner.measure import Outcome, Result, Window

# The `_created` series double the number of series and no dashboard of ours
# reads them. The switch is process-wide, and this is the only module that
# imports prometheus_client, so it is ours to set.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The Content-Type of `Metrics.render()`'s body: the classic text format every Prometheus reads."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""Buckets of `tuner_request_duration_seconds`, in seconds: 5 ms to 120 s, roughly log-spaced.

One histogram holds every target, and one histogram has one bucket list, so
the list is fixed and wide: its top finite bucket (120 s) lies at or above any
sensible request timeout, and `Metrics.target()` refuses a longer one. Targets
share buckets, so `sum by (le)` across targets stays valid. A request that
overruns its timeout a little (the deadline is checked between reads) still
counts in `+Inf`, `_count` and `_sum`.
"""

MAX_TIMEOUT_S = DURATION_BUCKETS[-1]
"""The longest request timeout whose requests the duration buckets cover."""

RUN_RESULTS: tuple[str, ...] = ("completed", "failed", "skipped")
"""The `result` label of `tuner_runs_total`."""

IDLE = "idle"
"""The `tuner_phase` state between runs; the other states are the controller's phases."""

PHASE_STATES: tuple[str, ...] = (IDLE, *(p.value for p in Phase))
"""Every state of the `tuner_phase` enum. Idle comes first: a new target is idle until it runs."""


class Metrics:
    """Every metric of SPEC in one registry, and the label sets of each target.

    Thread-safe: `target()` and `remove_target()` may race with scrapes and with
    the `TargetMetrics` of other targets.
    """

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self._lock = threading.Lock()
        self._targets: dict[str, TargetMetrics] = {}

        build_info = Gauge("tuner_build_info", "Build metadata; always 1.", ["version"], registry=r)
        build_info.labels(version).set(1)
        self._config_ok = Gauge(
            "tuner_config_last_reload_successful",
            "1 when the last load or reload of the config succeeded, else 0.",
            registry=r,
        )
        self._config_stamp = Gauge(
            "tuner_config_last_reload_success_timestamp_seconds",
            "Unix time when the config last loaded well.",
            registry=r,
        )
        t = ["target"]
        self._requests = Counter(
            "tuner_requests",
            "Finished requests by outcome.",
            ["target", "outcome"],
            registry=r,
        )
        self._duration = Histogram(
            "tuner_request_duration_seconds",
            "Duration of each request, whatever its outcome.",
            t,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._workers = Gauge("tuner_pool_workers", "The pool size in force now.", t, registry=r)
        self._in_flight = Gauge(
            "tuner_in_flight_requests", "Requests under way now.", t, registry=r
        )
        self._min_workers = Gauge(
            "tuner_pool_min_workers", "Configured lower bound of the pool.", t, registry=r
        )
        self._max_workers = Gauge(
            "tuner_pool_max_workers", "Configured upper bound of the pool.", t, registry=r
        )
        self._error_budget = Gauge(
            "tuner_error_budget_ratio",
            "Configured share of requests that may fail from overload (error_budget).",
            t,
            registry=r,
        )
        self._ceiling = Gauge(
            "tuner_pool_ceiling_workers",
            "The largest pool allowed now: client limits and known cliffs.",
            t,
            registry=r,
        )
        self._optimal = Gauge(
            "tuner_optimal_concurrency", "The knee the tuner believes now.", t, registry=r
        )
        self._throughput = Gauge(
            "tuner_throughput_requests_per_second",
            "Goodput (successful responses per second) of the last measurement window.",
            t,
            registry=r,
        )
        self._phase = Enum(
            "tuner_phase",
            "Which phase the tuner is in; idle between runs.",
            t,
            states=list(PHASE_STATES),
            registry=r,
        )
        self._decisions = Counter(
            "tuner_decisions",
            "Pool-size changes and pauses, by reason.",
            ["target", "reason"],
            registry=r,
        )
        self._runs = Counter("tuner_runs", "Runs by result.", ["target", "result"], registry=r)
        self._last_duration = Gauge(
            "tuner_last_run_duration_seconds", "How long the last run took.", t, registry=r
        )
        self._last_stamp = Gauge(
            "tuner_last_run_timestamp_seconds", "Unix time when the last run ended.", t, registry=r
        )
        self._last_success = Gauge(
            "tuner_last_run_success", "1 when the last run completed, 0 when it failed.", t,
            registry=r,
        )  # fmt: skip

    def config_loaded(self, ok: bool, stamp: float) -> None:
        """Record a load or reload of the config; `stamp` (Unix time) is kept only when `ok`."""
        self._config_ok.set(1 if ok else 0)
        if ok:
            self._config_stamp.set(stamp)

    def target(
        self,
        name: str,
        *,
        timeout_s: float,
        min_workers: int,
        max_workers: int,
        error_budget: float = 0.01,
    ) -> TargetMetrics:
        """The metrics of one target, created on first call and updated (bounds) on later ones.

        Every outcome and run result starts at 0, so `rate()` works from the
        first scrape. SPEC wants the top duration bucket at or above the
        timeout, so a `timeout_s` above `MAX_TIMEOUT_S` is a ValueError (the
        config should refuse such a timeout first).
        """
        if timeout_s > MAX_TIMEOUT_S:
            raise ValueError(
                f"target {name}: timeout {timeout_s:g}s is above the top duration bucket "
                f"({MAX_TIMEOUT_S:g}s)"
            )
        with self._lock:
            tm = self._targets.get(name)
            if tm is None:
                tm = self._targets[name] = TargetMetrics(self, name)
        tm._set(self._min_workers, min_workers)
        tm._set(self._max_workers, max_workers)
        tm._set(self._error_budget, error_budget)
        return tm

    def remove_target(self, name: str) -> None:
        """Remove every series of a target, so it vanishes from /metrics.

        A `TargetMetrics` still held by a late worker thread keeps working but
        writes nowhere: it can never bring the target's series back.
        """
        with self._lock:
            tm = self._targets.pop(name, None)
        if tm is not None:
            tm._detach()

    def render(self) -> bytes:
        """The Prometheus text exposition; its cost grows with series, never with observations."""
        return generate_latest(self.registry)


class TargetMetrics:
    """The series of one target. Thread-safe: worker threads call `result()`, the runner the rest.

    Counters, the duration histogram and the phase exist from the start (at 0,
    and idle), so `rate()` works from the first scrape. A gauge appears only
    once it has a value: a target that never ran has no `tuner_last_run_success`
    (0 would read as a failed run) and no `tuner_pool_ceiling_workers` (0 would
    read as a pool at its ceiling).
    """

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._m = metrics
        self.name = name
        self._lock = threading.Lock()
        self._detached = False
        self._workers: int | None = None
        self._reasons: set[str] = set()
        self._gauges: dict[Gauge, Gauge] = {}  # metric -> this target's child
        # Looked up once, so the hot path (`result()`) does no label lookup.
        self._outcomes = {o: metrics._requests.labels(name, o.value) for o in Outcome}
        self._runs = {r: metrics._runs.labels(name, r) for r in RUN_RESULTS}
        self._duration = metrics._duration.labels(name)
        self._phase = metrics._phase.labels(name)

    def result(self, result: Result) -> None:
        """Count one finished request and observe its duration."""
        self._outcomes[result.outcome].inc()
        self._duration.observe(result.latency_s)

    def in_flight(self, n: int) -> None:
        """Requests under way now."""
        self._set(self._m._in_flight, n)

    def pool(self, workers: int, ceiling: int) -> None:
        """The pool size in force and the ceiling, e.g. when a run starts from a learned size."""
        with self._lock:
            self._workers = workers
        self._set(self._m._workers, workers)
        self._set(self._m._ceiling, ceiling)

    def decision(self, decision: Decision, window: Window | None) -> None:
        """Record what the controller decided after `window` (None: before any window).

        `tuner_decisions_total{reason}` counts a change of pool size or a
        pause; a decision that keeps the size is not a decision anyone needs
        to graph. The first size this object learns (here or from `pool()`)
        is where it starts, not a change.
        """
        with self._lock:
            old, self._workers = self._workers, decision.workers
            counted = decision.pause_s > 0 or (old is not None and old != decision.workers)
            if counted and not self._detached:
                self._reasons.add(decision.reason)
                self._m._decisions.labels(self.name, decision.reason).inc()
        self._phase.state(decision.phase.value)
        self._set(self._m._workers, decision.workers)
        if decision.ceiling > 0:  # 0: the controller knows no ceiling yet
            self._set(self._m._ceiling, decision.ceiling)
        if decision.knee is not None:
            self._set(self._m._optimal, decision.knee)
        if window is not None:
            self._set(self._m._throughput, window.goodput)

    def run_finished(self, result: str, duration_s: float, stamp: float) -> None:
        """A run ended; `result` is `completed` or `failed`, `stamp` the Unix time it ended."""
        if result not in ("completed", "failed"):
            raise ValueError(f"run result must be completed or failed: {result!r}")
        self._runs[result].inc()
        self._set(self._m._last_duration, duration_s)
        self._set(self._m._last_stamp, stamp)
        self._set(self._m._last_success, 1 if result == "completed" else 0)
        self._phase.state(IDLE)

    def run_skipped(self) -> None:
        """A scheduled run did not start because the previous one was still going."""
        self._runs["skipped"].inc()

    def _set(self, gauge: Gauge, value: float) -> None:
        """Set this target's series of `gauge`, creating it on first use unless detached."""
        with self._lock:
            # Under the lock, so that no series can appear after _detach() removed them all.
            if self._detached:
                return
            child = self._gauges.get(gauge)
            if child is None:
                child = self._gauges[gauge] = gauge.labels(self.name)
        child.set(value)

    def _detach(self) -> None:
        """Remove every series of this target from every metric (see `Metrics.remove_target`)."""
        m, name = self._m, self.name
        with self._lock:
            self._detached = True
            reasons = list(self._reasons)
        for o in Outcome:
            m._requests.remove(name, o.value)
        for r in RUN_RESULTS:
            m._runs.remove(name, r)
        for reason in reasons:
            m._decisions.remove(name, reason)
        for metric in (
            m._duration, m._workers, m._in_flight, m._min_workers, m._max_workers,
            m._error_budget, m._ceiling,
            m._optimal, m._throughput, m._phase, m._last_duration, m._last_stamp, m._last_success,
        ):  # fmt: skip
            metric.remove(name)
