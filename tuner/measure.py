"""What a request ends in, and what a window of requests adds up to.

These are plain values shared by the fetcher (which makes `Result`s), the
runner (which adds them up into `Window`s) and the controller (which reads
windows and nothing else). Nothing here reads a clock: stamps come from the
caller.

    tally = Tally(started=clock())
    tally.add(result)                      # as results arrive
    window = tally.close(ended=clock(), workers=16, in_flight=15.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How one request ended: exactly one of these (the `outcome` label of requests_total)."""

    SUCCESS = "success"
    HTTP_ERROR = "http_error"  # an answer whose status is not a success status (not 429)
    THROTTLED = "throttled"  # 429, or 503 with Retry-After: the far side asks us to slow down
    TIMEOUT = "timeout"  # no full answer before the request's deadline
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS or TLS failure
    CLIENT_ERROR = "client_error"  # this side failed: bad URL, open-file or thread limit, a bug


@dataclass(frozen=True, slots=True)
class Result:
    """One finished request, as the fetcher saw it.

    `started` is a stamp of the caller's clock. `client_limit` marks a failure
    caused by this machine's own limits (EMFILE, no thread, no memory): those
    set a hard ceiling instead of a cliff. `detail` is a short class name
    (`ReadTimeout`, `body_truncated`), never a URL or a header.
    """

    outcome: Outcome
    started: float
    latency_s: float
    status: int | None = None
    retry_after_s: float | None = None
    body_bytes: int = 0
    client_limit: bool = False
    detail: str = ""

    @property
    def overload(self) -> bool:
        """True when the failure says the far side is overloaded (5xx, 429, timeouts, refusals).

        A 404 or a malformed URL does not depend on how hard we push, so it
        never counts against the pool size.
        """
        if self.outcome in (Outcome.THROTTLED, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR):
            return True
        return self.outcome is Outcome.HTTP_ERROR and (self.status or 0) >= 500


@dataclass(frozen=True, slots=True)
class Window:
    """The measurements of one window at one pool size: the controller's only input.

    Latency figures are of successful requests only, so fast error pages can
    never pass for good latency. `in_flight` is the time-averaged number of
    requests under way; below `workers` it means the pool was not the limit
    (too few URLs waiting, or this machine's CPU). `suspects` counts requests
    still under way far longer than usual when the window closed: a hanging
    server shows there before any timeout fires.
    """

    workers: int
    duration_s: float
    successes: int
    overload: int = 0
    throttled: int = 0
    client_limit: int = 0
    other_errors: int = 0
    p50_s: float = 0.0
    p95_s: float = 0.0
    latency_cv: float = 0.0
    in_flight: float = 0.0
    suspects: int = 0
    retry_after_s: float | None = None
    demand_limited: bool = False
    ended: float = 0.0

    @property
    def requests(self) -> int:
        """Requests that finished inside the window."""
        return self.successes + self.overload + self.client_limit + self.other_errors

    @property
    def goodput(self) -> float:
        """Successful responses per second."""
        return self.successes / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        """Share of finished requests that failed, whatever the reason."""
        n = self.requests
        return (n - self.successes) / n if n else 0.0


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0..1) of an already sorted list, by nearest rank; 0.0 when empty."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


class Tally:
    """Adds up `Result`s into a `Window`. Not thread-safe: the caller holds a lock."""

    __slots__ = (
        "_latencies",
        "client_limit",
        "other_errors",
        "overload",
        "retry_after_s",
        "started",
        "successes",
        "throttled",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.successes = 0
        self.overload = 0
        self.throttled = 0
        self.client_limit = 0
        self.other_errors = 0
        self.retry_after_s: float | None = None
        self._latencies: list[float] = []

    @property
    def requests(self) -> int:
        """Requests counted so far."""
        return self.successes + self.overload + self.client_limit + self.other_errors

    def add(self, result: Result) -> None:
        """Count one finished request."""
        if result.outcome is Outcome.SUCCESS:
            self.successes += 1
            self._latencies.append(result.latency_s)
        elif result.client_limit:
            self.client_limit += 1
        elif result.overload:
            self.overload += 1
        else:
            self.other_errors += 1
        if result.outcome is Outcome.THROTTLED:
            self.throttled += 1
        if result.retry_after_s is not None:
            self.retry_after_s = max(self.retry_after_s or 0.0, result.retry_after_s)

    def close(
        self,
        *,
        ended: float,
        workers: int,
        in_flight: float,
        suspects: int = 0,
        demand_limited: bool = False,
    ) -> Window:
        """The window these results make, stamped `ended` by the caller's clock."""
        ordered = sorted(self._latencies)
        cv = 0.0
        if len(ordered) > 1:
            mean = sum(ordered) / len(ordered)
            var = sum((x - mean) ** 2 for x in ordered) / (len(ordered) - 1)
            cv = math.sqrt(var) / mean if mean > 0 else 0.0
        return Window(
            workers=workers,
            duration_s=max(ended - self.started, 1e-9),
            successes=self.successes,
            overload=self.overload,
            throttled=self.throttled,
            client_limit=self.client_limit,
            other_errors=self.other_errors,
            p50_s=percentile(ordered, 0.50),
            p95_s=percentile(ordered, 0.95),
            latency_cv=cv,
            in_flight=in_flight,
            suspects=suspects,
            retry_after_s=self.retry_after_s,
            demand_limited=demand_limited,
            ended=ended,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One measured pool size, as `tuner probe --json` and `tuner sweep --json` print it."""

    workers: int
    requests: int
    goodput_rps: float
    error_ratio: float
    p50_s: float
    p95_s: float

    @classmethod
    def of(cls, window: Window) -> Step:
        """The step a window makes."""
        return cls(
            workers=window.workers,
            requests=window.requests,
            goodput_rps=round(window.goodput, 3),
            error_ratio=round(window.error_ratio, 5),
            p50_s=round(window.p50_s, 6),
            p95_s=round(window.p95_s, 6),
        )

    def as_dict(self) -> dict[str, float | int]:
        """The JSON shape fixed by SPEC."""
        return {
            "workers": self.workers,
            "requests": self.requests,
            "goodput_rps": self.goodput_rps,
            "error_ratio": self.error_ratio,
            "p50_s": self.p50_s,
            "p95_s": self.p95_s,
        }
