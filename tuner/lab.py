"""`tuner lab`: an HTTP/1.1 target server on loopback whose knee and cliff are known exactly.

The test target of the whole project. A `Profile` says how the server behaves
under load; the server is a raw `asyncio.Protocol` (hand-parsed requests,
keep-alive, pipelining, Content-Length bodies) driven by timers, with no
coroutine per request, so one core serves many thousands of requests a second.

"Concurrency" N is the number of target requests inside the server: received
and not yet answered (in service, queued, or hanging). One model covers every
profile; each feature is off unless its number is set:

- `capacity` C parallel slots; a request holds one for its service time, the
  excess waits FIFO (None: no limit).
- service time `service_ms` × (1 + σ(N−1) + κN(N−1)) for a request arriving at
  concurrency N (the Universal Scalability Law), × a lognormal factor of mean 1
  and shape `noise_sigma`.
- `cliff`: a request that would make N exceed it is answered 503 at once.
- `throttle_at`: likewise, 429 with `Retry-After: retry_after`.
- `hang_s`: a request finding every slot busy hangs, unanswered, this long and
  then loses its connection, instead of queueing.
- `change_at` / `capacity_after` / `restore_at`: the capacity shifts while the
  server runs (seconds since it started).

`GET /-/stats` answers the counters as JSON, `POST /-/reset` zeroes them; any
other method and path is a target request (the path is ignored).

    with LabServer(profile("cliff", cliff=50)) as lab:
        requests.get(lab.url)
        lab.stats()["served"]        # {"200": 1}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import math
import os
import random
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from http.client import HTTPConnection
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from tuner.errors import LabError, UsageError

# A pool larger than this is never searched for a knee: the lab's curves all
# flatten or peak far below it.
KNEE_SEARCH_LIMIT = 4096
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# Reading pauses while one request is in flight and this much more is buffered:
# a client that pipelines without reading cannot grow the server's memory.
PAUSE_READING_BYTES = 256 * 1024
DEFAULT_PORT = 9718
START_TIMEOUT_S = 15.0
# A timer later than this is the machine stalling, not the clock's resolution.
MAX_TIMER_LATENESS_S = 0.002

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Profile:
    """How the lab server behaves under load; every number is a `tuner lab` flag.

    Times are in milliseconds (`service_ms`) or seconds (the rest); None turns
    a feature off. See the module docstring for the model, docs/lab.md for the
    named profiles and their knees.
    """

    name: str
    capacity: int | None = 32
    service_ms: float = 20.0
    cliff: int | None = None
    throttle_at: int | None = None
    retry_after: int = 1
    sigma: float = 0.0
    kappa: float = 0.0
    hang_s: float | None = None
    change_at: float | None = None
    capacity_after: int | None = None
    restore_at: float | None = None
    noise_sigma: float = 0.0
    body_bytes: int = 3

    def __post_init__(self) -> None:
        problems = [p for p in self._problems() if p]
        if problems:
            raise LabError(f"profile {self.name}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        def at_least(field: str, value: float | None, low: float) -> str:
            return f"{field} must be >= {low}: {value}" if value is not None and value < low else ""

        return [
            at_least("capacity", self.capacity, 1),
            at_least("service_ms", self.service_ms, 0),
            at_least("cliff", self.cliff, 1),
            at_least("throttle_at", self.throttle_at, 1),
            at_least("retry_after", self.retry_after, 0),
            f"sigma must be in [0, 1): {self.sigma}" if not 0 <= self.sigma < 1 else "",
            at_least("kappa", self.kappa, 0),
            at_least("hang_s", self.hang_s, 0),
            at_least("change_at", self.change_at, 0),
            at_least("capacity_after", self.capacity_after, 1),
            at_least("noise_sigma", self.noise_sigma, 0),
            at_least("body_bytes", self.body_bytes, 0),
            "hang_s needs a capacity" if self.hang_s is not None and self.capacity is None else "",
            "change_at and capacity_after go together"
            if (self.change_at is None) != (self.capacity_after is None)
            else "",
            "restore_at needs change_at, and must come after it"
            if self.restore_at is not None
            and (self.change_at is None or self.restore_at <= self.change_at)
            else "",
        ]

    def capacity_at(self, at_s: float) -> int | None:
        """The number of parallel slots `at_s` seconds after the server started (None: no limit)."""
        if self.change_at is None or at_s < self.change_at:
            return self.capacity
        if self.restore_at is not None and at_s >= self.restore_at:
            return self.capacity
        return self.capacity_after

    def slowdown(self, n: int) -> float:
        """The USL factor stretching the service time of a request arriving at concurrency n."""
        return 1.0 + self.sigma * (n - 1) + self.kappa * n * (n - 1)

    def expected_goodput(self, n: int, at_s: float = 0.0) -> float:
        """The model's goodput (200s per second) with a closed-loop pool of n clients.

        The requests inside are n, less those the cliff or the throttle turn
        away; the slots serve as many of them as they hold. Infinite when the
        service time is zero: the server then puts no limit, the client does.
        """
        if n <= 0:
            return 0.0
        inside = min(n, self.cliff or n, self.throttle_at or n)
        capacity = self.capacity_at(at_s)
        busy = inside if capacity is None else min(inside, capacity)
        if self.service_ms == 0:
            return math.inf
        return busy / (self.service_ms / 1000.0 * self.slowdown(inside))

    def expected_knee(self, at_s: float = 0.0) -> int:
        """The smallest pool that reaches the model's best goodput (its peak or its plateau)."""
        return self.knee_within(0.0, at_s)

    def knee_within(self, tolerance: float, at_s: float = 0.0) -> int:
        """The smallest pool whose model goodput is within `tolerance` of the best.

        `knee_within(0.05)` is the knee as SPEC.md defines it (within 5% of the
        best): on a plain queue of capacity 32 that is 31, one below the
        plateau's start.
        """
        curve = [self.expected_goodput(n, at_s) for n in range(1, KNEE_SEARCH_LIMIT + 1)]
        best = max(curve)
        # The relative epsilon keeps float rounding on the plateau from moving the knee.
        floor = best * (1.0 - tolerance) * (1.0 - 1e-9)
        return next(n for n, goodput in enumerate(curve, start=1) if goodput >= floor)

    def expected_cliff(self, at_s: float = 0.0) -> int | None:
        """The smallest pool at which errors start (503, 429 or hangs), or None if they never do."""
        cliffs = []
        if self.cliff is not None:
            cliffs.append(self.cliff + 1)
        if self.throttle_at is not None:
            cliffs.append(self.throttle_at + 1)
        capacity = self.capacity_at(at_s)
        if self.hang_s is not None and capacity is not None:
            cliffs.append(capacity + 1)
        return min(cliffs, default=None)

    def parameters(self) -> dict[str, Any]:
        """Every field by name, as `/-/stats` shows them."""
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("instant", capacity=None, service_ms=0.0),
        Profile("queue", capacity=32, service_ms=20.0),
        Profile("cliff", capacity=24, service_ms=20.0, cliff=40),
        Profile("throttle", capacity=24, service_ms=20.0, throttle_at=40, retry_after=1),
        Profile("retrograde", capacity=None, service_ms=10.0, sigma=0.02, kappa=0.0008),
        Profile("hang", capacity=24, service_ms=20.0, hang_s=300.0),
        Profile(
            "shift",
            capacity=32,
            service_ms=20.0,
            change_at=20.0,
            capacity_after=12,
            restore_at=40.0,
        ),
        Profile("noisy", capacity=32, service_ms=20.0, noise_sigma=1.0),
    )
}
"""The named profiles with their default numbers (docs/lab.md lists their knees and cliffs)."""

_FIELDS = frozenset(f.name for f in dataclasses.fields(Profile)) - {"name"}


def profile(name: str, **overrides: Any) -> Profile:
    """The named profile with some numbers changed: `profile("queue", capacity=8)`.

    Raises LabError on an unknown name, an unknown field or a value out of range.
    """
    if name not in PROFILES:
        raise LabError(f"unknown lab profile {name!r}; known: {', '.join(PROFILES)}")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise LabError(f"unknown lab profile field(s): {', '.join(unknown)}")
    return dataclasses.replace(PROFILES[name], **overrides)


def _as_profile(value: Profile | str) -> Profile:
    return value if isinstance(value, Profile) else profile(value)


# --- the server ---------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def _response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    head_only: bool = False,
    content_type: bytes = b"text/plain",
    extra: bytes = b"",
) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status,
        _REASONS[status].encode(),
        content_type,
        len(body),
        extra,
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head if head_only else head + body


class _Responses:
    """Every answer to a target request, built once: (status, keep_alive, head_only) -> bytes."""

    __slots__ = ("table",)

    def __init__(self, p: Profile) -> None:
        bodies = {
            200: ((b"ok\n" * (p.body_bytes // 3 + 1))[: p.body_bytes], b""),
            503: (b"over capacity\n", b""),
            429: (b"slow down\n", b"Retry-After: %d\r\n" % p.retry_after),
        }
        self.table = {
            (status, keep_alive, head_only): _response(
                status, body, keep_alive=keep_alive, head_only=head_only, extra=extra
            )
            for status, (body, extra) in bodies.items()
            for keep_alive in (True, False)
            for head_only in (True, False)
        }


class _Request:
    """One target request inside the server, from arrival to answer (or to its client leaving)."""

    __slots__ = ("arrived", "conn", "due", "head_only", "keep_alive", "n", "state", "timer")

    def __init__(self, conn: _Connection, head_only: bool, keep_alive: bool) -> None:
        self.conn = conn
        self.head_only = head_only
        self.keep_alive = keep_alive
        self.n = 0  # the concurrency it found on arrival, itself included
        self.arrived = 0.0
        self.due = 0.0  # when its service ends, on the loop's clock
        # queued -> serving -> done, or hanging -> done; "gone" when the client left first
        self.state = "new"
        self.timer: asyncio.TimerHandle | None = None


class _Lab:
    """The server's state and its model: admits, queues, serves and counts target requests.

    Lives on the event loop's thread; nothing else touches it.
    """

    def __init__(self, p: Profile, loop: asyncio.AbstractEventLoop) -> None:
        self.profile = p
        self.loop = loop
        self.started = loop.time()
        self.responses = _Responses(p)
        self.random = random.Random()
        self.connections: set[_Connection] = set()
        self.waiting: deque[_Request] = deque()
        self.inside = 0  # N: target requests received and not yet answered
        self.busy = 0  # requests holding a slot
        self.queued = 0
        self.hanging = 0
        # How late timers fire, on average (epoll sleeps in whole milliseconds, rounded
        # up): service timers are set this much early, so answers leave on time.
        self.timer_lateness = 0.0
        self.reset()

    def reset(self) -> None:
        """Zero the counters (the requests inside stay inside)."""
        self.served: dict[int, int] = {}
        self.hung = 0
        self.dropped = 0
        self.connections_total = 0
        self.max_concurrency = self.inside

    def uptime(self) -> float:
        return self.loop.time() - self.started

    def admit(self, req: _Request) -> None:
        """A target request arrives: turn it away, serve it, queue it or let it hang."""
        p = self.profile
        n = self.inside + 1
        if p.cliff is not None and n > p.cliff:
            self.answer(req, 503)
            return
        if p.throttle_at is not None and n > p.throttle_at:
            self.answer(req, 429)
            return
        self.inside = n
        self.max_concurrency = max(self.max_concurrency, n)
        req.n = n
        req.arrived = self.loop.time()
        capacity = p.capacity_at(req.arrived - self.started)
        if capacity is None or self.busy < capacity:
            self.serve(req, req.arrived)
        elif p.hang_s is not None:
            req.state = "hanging"
            self.hanging += 1
            self.hung += 1
            req.timer = self.loop.call_later(p.hang_s, req.conn.abort)
        else:
            req.state = "queued"
            self.queued += 1
            self.waiting.append(req)

    def serve(self, req: _Request, start: float) -> None:
        """Give req a slot from `start` on, and answer it when its service time is up."""
        p = self.profile
        if p.service_ms == 0:
            # The instant profile's fast path: a slot taken and freed at once, no timer.
            self.inside -= 1
            self.answer(req, 200)
            return
        req.state = "serving"
        self.busy += 1
        duration = p.service_ms / 1000.0 * p.slowdown(req.n)
        if p.noise_sigma > 0:
            # Lognormal with mean 1: heavy-tailed, yet the model's mean goodput holds.
            duration *= self.random.lognormvariate(-(p.noise_sigma**2) / 2, p.noise_sigma)
        req.due = start + duration
        req.timer = self.loop.call_at(req.due - self.timer_lateness, self.finish, req)

    def finish(self, req: _Request) -> None:
        """A request's service time is over: free its slot, start the next waiters, answer it."""
        if req.timer is not None:
            late = min(self.loop.time() - req.timer.when(), MAX_TIMER_LATENESS_S)
            self.timer_lateness += 0.05 * (late - self.timer_lateness)
        self.busy -= 1
        self.inside -= 1
        capacity = self.profile.capacity_at(self.uptime())
        while self.waiting and (capacity is None or self.busy < capacity):
            waiter = self.waiting.popleft()
            if waiter.state == "queued":  # else its client left while it waited
                self.queued -= 1
                # The slot was free from req.due on: a timer fires up to a millisecond
                # late (epoll's resolution), and starting the waiter from then instead
                # keeps that lateness from eating into the queue's throughput.
                self.serve(waiter, max(waiter.arrived, req.due))
        if req.state == "gone":
            self.dropped += 1
        else:
            self.answer(req, 200)

    def answer(self, req: _Request, status: int) -> None:
        req.state = "done"
        self.served[status] = self.served.get(status, 0) + 1
        data = self.responses.table[status, req.keep_alive, req.head_only]
        req.conn.respond(data, req.keep_alive)

    def leave(self, req: _Request) -> None:
        """The client closed its connection before its answer: take the request out."""
        if req.state == "queued":
            self.queued -= 1
            self.inside -= 1
            self.dropped += 1
        elif req.state == "hanging":
            self.hanging -= 1
            self.inside -= 1
            self.dropped += 1
            if req.timer is not None:
                req.timer.cancel()
        # A request in service keeps its slot until its time is up, as real work would.
        req.state = "gone"

    def stats(self) -> dict[str, Any]:
        """The `/-/stats` document."""
        at = self.uptime()
        p = self.profile
        return {
            "profile": p.name,
            "parameters": p.parameters(),
            "expected_knee": p.expected_knee(at),
            "expected_cliff": p.expected_cliff(at),
            "uptime_s": round(at, 3),
            "served": {str(status): count for status, count in sorted(self.served.items())},
            "rejected_503": self.served.get(503, 0),
            "throttled_429": self.served.get(429, 0),
            "hung": self.hung,
            "dropped": self.dropped,
            "concurrency": self.inside,
            "max_concurrency": self.max_concurrency,
            "capacity": p.capacity_at(at),
            "busy": self.busy,
            "queued": self.queued,
            "hanging": self.hanging,
            "connections": len(self.connections),
            "connections_total": self.connections_total,
        }

    def close(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests one after another and answers them in order.

    Pipelined requests wait in the buffer until the one before is answered,
    so answers can never overtake each other.
    """

    __slots__ = ("buffer", "in_loop", "lab", "paused", "pending", "transport")

    def __init__(self, lab: _Lab) -> None:
        self.lab = lab
        self.buffer = bytearray()
        self.pending: _Request | None = None
        self.transport: asyncio.Transport | None = None
        self.in_loop = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.lab.connections.add(self)
        self.lab.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lab.connections.discard(self)
        if self.pending is not None:
            self.lab.leave(self.pending)
            self.pending = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.pending is None:
            self.process()
        elif len(self.buffer) > PAUSE_READING_BYTES and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def process(self) -> None:
        """Handle every complete request in the buffer, until one has to wait for its answer."""
        self.in_loop = True
        try:
            while (
                self.pending is None
                and self.transport is not None
                and not self.transport.is_closing()
                and self.parse_one()
            ):
                pass
        finally:
            self.in_loop = False
        if self.paused and self.transport is not None and len(self.buffer) < PAUSE_READING_BYTES:
            self.paused = False
            self.transport.resume_reading()

    def parse_one(self) -> bool:
        """Take one request off the buffer and handle it; False when none is complete yet."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self.fail(431)
            return False
        lines = bytes(buffer[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.fail(400)
            return False
        method, target, version = parts
        keep_alive = version == b"HTTP/1.1"  # HTTP/1.0 clients get one answer a connection
        length = 0
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                self.fail(400)
                return False
            name = name.strip().lower()
            if name == b"content-length":
                if not value.strip().isdigit():
                    self.fail(400)
                    return False
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
            elif name == b"transfer-encoding":
                self.fail(501)  # chunked bodies are not part of the lab
                return False
        if length > MAX_BODY_BYTES:
            self.fail(413)
            return False
        total = end + 4 + length
        if len(buffer) < total:
            return False
        del buffer[:total]
        self.handle(method, target.partition(b"?")[0], keep_alive)
        return True

    def handle(self, method: bytes, path: bytes, keep_alive: bool) -> None:
        if path == b"/-/stats" and method == b"GET":
            body = json.dumps(self.lab.stats(), indent=1).encode() + b"\n"
            self.send_control(body, keep_alive)
        elif path == b"/-/reset" and method == b"POST":
            self.lab.reset()
            self.send_control(b'{"reset": true}\n', keep_alive)
        else:
            self.pending = _Request(self, method == b"HEAD", keep_alive)
            self.lab.admit(self.pending)

    def send_control(self, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(
            _response(200, body, keep_alive=keep_alive, content_type=b"application/json")
        )
        if not keep_alive:
            self.transport.close()

    def fail(self, status: int) -> None:
        """Answer a request the lab cannot read, and close: the stream is out of step."""
        assert self.transport is not None
        self.transport.write(_response(status, b"%d\n" % status, keep_alive=False))
        self.transport.close()
        self.buffer.clear()

    def respond(self, data: bytes, keep_alive: bool) -> None:
        """Write the answer to the pending request, then go on with the next one."""
        self.pending = None
        if self.transport is None:
            return
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()
        elif not self.in_loop and self.buffer:
            self.process()


def _raise_nofile_limit() -> None:
    """Lift the soft open-files limit to the hard one, so the lab holds thousands of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _check_loopback(host: str) -> None:
    """The lab is a load target: it only ever listens on loopback."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LabError(f"the lab listens on loopback only, not on {host!r}")


async def _open(p: Profile, host: str, port: int) -> tuple[asyncio.Server, _Lab, str]:
    """Start listening; returns the server, its state and its URL."""
    _check_loopback(host)
    _raise_nofile_limit()
    loop = asyncio.get_running_loop()
    lab = _Lab(p, loop)
    try:
        server = await loop.create_server(lambda: _Connection(lab), host, port, backlog=4096)
    except OSError as err:
        raise LabError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return server, lab, f"http://{shown}:{bound[1]}/"


def _close(server: asyncio.Server, lab: _Lab) -> None:
    server.close()
    lab.close()


class LabServer:
    """The lab in this process: an asyncio loop in a daemon thread.

        with LabServer(profile("queue", capacity=8)) as lab:
            requests.get(lab.url)

    Shares the GIL with its client; use `LabProcess` when the figures matter.
    """

    def __init__(
        self, profile: Profile | str = "queue", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.profile = _as_profile(profile)
        self.host = host
        self.port = port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._lab: _Lab | None = None

    def start(self) -> LabServer:
        """Listen and serve in the background; `url` is set on return."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server, self._lab, self.url = loop.run_until_complete(
                    _open(self.profile, self.host, self.port)
                )
            except BaseException as err:  # handed to start(), which raises it in its own thread
                failure.append(err)
                return
            finally:
                ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="tuner-lab", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            loop.close()
            raise failure[0]
        self._loop = loop
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and end the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = None

        def shutdown() -> None:
            if self._server is not None and self._lab is not None:
                _close(self._server, self._lab)
            # Stop one turn later: aborted connections close their sockets in callbacks
            # scheduled just now.
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(shutdown)
        thread.join()
        loop.close()

    def _call(self, fn: Callable[[_Lab], T]) -> T:
        """Run fn on the loop's thread, which alone touches the server's state."""
        loop, lab = self._loop, self._lab
        if loop is None or lab is None:
            raise LabError("the lab server is not running")
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(lab))
            except BaseException as err:  # handed to the calling thread
                future.set_exception(err)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def stats(self) -> dict[str, Any]:
        """The `/-/stats` document."""
        return self._call(_Lab.stats)

    def reset(self) -> None:
        """Zero the counters, as `POST /-/reset` does."""
        self._call(_Lab.reset)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _flags(p: Profile) -> list[str]:
    """The `tuner lab` flags that serve profile p (a profile of another name is served as queue)."""
    base = PROFILES.get(p.name, PROFILES["queue"])
    args = ["--profile", base.name]
    for field in sorted(_FIELDS):
        value = getattr(p, field)
        if value != getattr(base, field):
            args += [f"--{field.replace('_', '-')}", "off" if value is None else str(value)]
    return args


class LabProcess:
    """The lab in a child process (`python -m tuner.lab`): server and client share no GIL.

        with LabProcess("cliff", cpu=0) as lab:
            requests.get(lab.url)

    The child runs the lab module itself rather than the whole `tuner`
    command, so it starts without importing the other commands' dependencies.
    `cpu` pins the child to one CPU.
    """

    def __init__(
        self,
        profile: Profile | str = "queue",
        host: str = "127.0.0.1",
        port: int = 0,
        cpu: int | None = None,
    ) -> None:
        self.profile = _as_profile(profile)
        self.host = host
        self.port = port
        self.cpu = cpu
        self.url = ""
        self.banner = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "tuner.lab", *_flags(self.profile)]
        cmd += ["--host", self.host, "--port", str(self.port)]
        return cmd + ([] if self.cpu is None else ["--cpu", str(self.cpu)])

    @property
    def pid(self) -> int | None:
        """The child's process id once started, else None."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has ended, else None."""
        return None if self._process is None else self._process.poll()

    def start(self) -> LabProcess:
        """Start the child and wait for its first stdout line; `url` is set on return."""
        # Kept open while the child runs, so its errors can be shown; closed by stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self._stderr)
        self._process = process
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ready = selector.select(START_TIMEOUT_S)
        line = process.stdout.readline().decode().strip() if ready else ""
        match = re.search(r"listening on (\S+)", line)
        if match is None:
            self.stop()
            raise LabError(f"lab process did not start: {self._errors() or line or 'no output'}")
        self.banner = line
        self.url = match.group(1)
        return self

    def _errors(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def stop(self) -> None:
        """Ask the child to end (SIGTERM), kill it if it lingers, and reap it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _request(self, method: str, path: str) -> dict[str, Any]:
        host, _, port = self.url.removeprefix("http://").rstrip("/").rpartition(":")
        conn = HTTPConnection(host.strip("[]"), int(port), timeout=10)
        try:
            conn.request(method, path)
            result: dict[str, Any] = json.loads(conn.getresponse().read())
        except (OSError, ValueError) as err:
            raise LabError(f"lab at {self.url} did not answer {method} {path}: {err}") from err
        finally:
            conn.close()
        return result

    def stats(self) -> dict[str, Any]:
        """The child's `/-/stats` document."""
        return self._request("GET", "/-/stats")

    def reset(self) -> None:
        """Zero the child's counters (`POST /-/reset`)."""
        self._request("POST", "/-/reset")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the command ----------------------------------------------------------------


def _count(text: str) -> int | None:
    """An integer flag value, or None for `off`."""
    return None if text == "off" else int(text)


def _seconds(text: str) -> float | None:
    """A number-of-seconds flag value, or None for `off`."""
    return None if text == "off" else float(text)


_FLAG_TYPES: dict[str, tuple[Any, str, str]] = {
    # field: (parser, metavar, help)
    "capacity": (_count, "N|off", "parallel slots; the excess waits FIFO"),
    "service_ms": (float, "MS", "service time of one request"),
    "cliff": (_count, "N|off", "answer 503 at once to a request that makes concurrency exceed N"),
    "throttle_at": (_count, "N|off", "answer 429 at once past this concurrency"),
    "retry_after": (int, "S", "the Retry-After seconds of a 429"),
    "sigma": (float, "S", "USL contention: service × (1 + σ(N−1) + κN(N−1))"),
    "kappa": (float, "K", "USL coherency (throughput peaks at √((1−σ)/κ))"),
    "hang_s": (_seconds, "S|off", "past capacity, hang this long unanswered instead of queueing"),
    "change_at": (_seconds, "S|off", "seconds after start when capacity becomes --capacity-after"),
    "capacity_after": (_count, "N|off", "the capacity from --change-at on"),
    "restore_at": (_seconds, "S|off", "seconds after start when capacity returns to --capacity"),
    "noise_sigma": (float, "S", "shape of the lognormal (mean 1) that multiplies service times"),
    "body_bytes": (int, "N", "size of the 200 body"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner lab`. A number given overrides the profile's default."""
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="queue",
        help="the behaviour and its default numbers, which the flags below change (queue)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"0 picks a free one ({DEFAULT_PORT})"
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    for field, (kind, metavar, help_text) in _FLAG_TYPES.items():
        parser.add_argument(
            f"--{field.replace('_', '-')}",
            type=kind,
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=help_text,
        )


def _profile_from(args: argparse.Namespace) -> Profile:
    overrides = {field: getattr(args, field) for field in _FLAG_TYPES if hasattr(args, field)}
    try:
        return profile(args.profile, **overrides)
    except LabError as err:
        raise UsageError(str(err)) from err


def main(args: argparse.Namespace) -> int:
    """`tuner lab`: print the listening line, serve until SIGTERM or SIGINT, return 0."""
    p = _profile_from(args)
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as err:
            raise UsageError(f"--cpu {args.cpu}: {err.strerror}") from err
    try:
        _check_loopback(args.host)
    except LabError as err:
        raise UsageError(str(err)) from err
    asyncio.run(_serve(p, args.host, args.port))
    return 0


async def _serve(p: Profile, host: str, port: int) -> None:
    server, lab, url = await _open(p, host, port)
    cliff = p.expected_cliff()
    print(
        f"lab listening on {url} profile={p.name} knee={p.expected_knee()} "
        f"cliff={'none' if cliff is None else cliff}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    _close(server, lab)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout=1.0)


def _script() -> int:
    """`python -m tuner.lab ...`: the `tuner lab` command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="tuner lab")
    add_arguments(parser)
    args = parser.parse_args()
    try:
        return main(args)
    except UsageError as err:
        print(f"tuner lab: {err}", file=sys.stderr)
        return 2
    except LabError as err:
        print(f"tuner lab: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_script())
