"""A thread pool whose size changes while it runs: the only module that creates threads.

    pool = Pool(fetcher, urls, workers=8, on_result=collect)
    pool.start()
    pool.resize(16)          # the controller's decision, applied
    pool.wait()

Each worker thread takes a slot, pulls the next URL, fetches it and hands the
`Result` to `on_result`. The URL source is read lazily, one URL at a time, so
a source of a million URLs costs no more memory than one of ten.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from tuner.ceiling import is_client_limit
from tuner.measure import Outcome, Result

log = logging.getLogger(__name__)

# Seconds a thread above the pool size idles before it exits. Long enough
# that a shrink followed by a grow (the tuner probing) reuses threads, short
# enough that the thread count follows the size down.
IDLE_EXIT_S = 1.0


class Pool:
    """A thread pool whose size can change while it runs.

    `fetch` is called with each URL of `urls` from a worker thread; every
    call ends in exactly one call of `on_result` (from that worker thread:
    the caller locks). An exception in `fetch` or `on_result` becomes a
    CLIENT_ERROR result and the worker goes on. A thread the machine refuses
    to start is one client-limit result, reported from the thread that
    started or resized the pool.

    Resizing never cancels work: lowering the size lets running requests
    finish and admits no new ones until the count is under the new size
    (like trio's CapacityLimiter.total_tokens). Growing starts workers at
    once. Threads above the size exit after idling `IDLE_EXIT_S`.

    `clock` stamps results, request ages, pauses and the busy-time integral.
    """

    def __init__(
        self,
        fetch: Callable[[str], Result],
        urls: Iterable[str],
        workers: int,
        on_result: Callable[[Result], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "tuner",
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0: {workers}")
        self._fetch = fetch
        self._urls: Iterator[str] = iter(urls)
        self._on_result = on_result
        self._clock = clock
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # workers waiting for a slot
        self._settled = threading.Condition(self._lock)  # wait()/stop() callers
        self._source_lock = threading.Lock()  # next(urls) one thread at a time
        self._serial = itertools.count(1)
        self._size = workers
        self._slots = 0  # slots taken: pulling a URL or running a request
        self._pulling = 0  # of those, still waiting for the source to give a URL
        self._threads = 0  # worker threads alive, counting those on abandoned requests
        self._running: dict[int, float] = {}  # token -> start stamp, requests holding a slot
        self._abandoned: set[int] = set()  # tokens whose slot was freed while they still run
        self._exhausted = False
        self._started = False
        self._stopping = False
        self._paused_until = float("-inf")
        self._oversize_since: float | None = None  # when threads first outnumbered the size
        self._busy = 0.0  # integral of len(_running) up to _busy_stamp
        self._busy_stamp = clock()

    def start(self) -> None:
        """Start the workers."""
        with self._lock:
            self._started = True
        self._grow()

    def resize(self, workers: int) -> None:
        """Change the pool size. Never cancels a request under way; growing starts threads now."""
        if workers < 0:
            raise ValueError(f"workers must be >= 0: {workers}")
        with self._lock:
            self._size = workers
            self._wake.notify_all()
        self._grow()

    @property
    def workers(self) -> int:
        """The pool size in force."""
        return self._size

    @property
    def in_flight(self) -> int:
        """Requests under way now, not counting abandoned ones."""
        with self._lock:
            return len(self._running)

    @property
    def threads(self) -> int:
        """Worker threads alive, including any still stuck on an abandoned request."""
        with self._lock:
            return self._threads

    @property
    def exhausted(self) -> bool:
        """True once the URL source has run dry."""
        return self._exhausted

    @property
    def done(self) -> bool:
        """True when the source ran dry and no request holds a slot."""
        with self._lock:
            return self._is_done()

    def waiting(self) -> int:
        """Workers idle because the source has nothing for them (demand-limited); 0 while URLs wait.

        That is every free slot once the source ran dry, or the workers
        blocked on a source that has no URL ready yet.
        """
        with self._lock:
            if self._exhausted:
                return max(0, self._size - len(self._running))
            return self._pulling

    def busy_seconds(self) -> float:
        """The integral of in-flight requests over `clock` time since the pool was made.

        Δbusy/Δt between two readings is the time-averaged in-flight count
        of that interval (Little's law's L).
        """
        with self._lock:
            self._account()
            return self._busy

    def in_flight_ages(self) -> list[float]:
        """How long each request under way has been running, by `clock`."""
        now = self._clock()
        with self._lock:
            return [now - started for started in self._running.values()]

    def abandon_older_than(self, age_s: float) -> int:
        """Free the slots of requests running longer than `age_s`; return how many.

        Their threads finish in the background and their results still
        arrive via `on_result`, once. New threads take the freed slots, so a
        hung server cannot hold the pool hostage.
        """
        now = self._clock()
        with self._lock:
            self._account()
            old = [t for t, started in self._running.items() if now - started > age_s]
            for token in old:
                del self._running[token]
                self._abandoned.add(token)
                self._slots -= 1
            if old:
                self._wake.notify_all()
                self._settled.notify_all()
        if old:
            self._grow()
        return len(old)

    def pause_until(self, stamp: float) -> None:
        """Admit nothing new before `clock() >= stamp` (Retry-After); requests under way go on."""
        with self._lock:
            self._paused_until = max(self._paused_until, stamp)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pool is done (source dry, no slot taken); True if it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._is_done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._settled.wait(left)
            return True

    def stop(self, grace_s: float) -> int:
        """Admit nothing more, wait up to `grace_s` for requests under way; return how many run on.

        Those left running finish in the background (their threads are
        daemons) and their results still arrive via `on_result`.
        """
        deadline = time.monotonic() + grace_s
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            while self._running or self._pulling:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._settled.wait(left)
            return len(self._running) + len(self._abandoned)

    # -- inside -----------------------------------------------------------

    def _is_done(self) -> bool:
        return self._exhausted and self._slots == 0

    def _account(self) -> None:
        """Bring the busy-time integral up to now; under the lock, before `_running` changes."""
        now = self._clock()
        self._busy += len(self._running) * max(0.0, now - self._busy_stamp)
        self._busy_stamp = max(now, self._busy_stamp)

    def _grow(self) -> None:
        """Start threads until the usable ones (not stuck on abandoned requests) cover the size.

        If the machine refuses a thread, the pool keeps the threads it has
        and reports one client-limit result.
        """
        with self._lock:
            if not self._started or self._stopping or self._exhausted:
                return
            missing = self._size - (self._threads - len(self._abandoned))
            if missing <= 0:
                return
            self._threads += missing
        for i in range(missing):
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{next(self._serial)}", daemon=True
            )
            try:
                thread.start()
            except (RuntimeError, MemoryError) as exc:
                with self._lock:
                    self._threads -= missing - i
                now = self._clock()
                self._deliver(_failure(exc, now, now), now)
                return

    def _work(self) -> None:
        """A worker's life: take a slot, pull a URL, fetch, report; until stopped, dry or spare."""
        while True:
            token = self._admit()
            if token is None:
                return
            url = self._pull(token)
            if url is None:
                continue
            started = self._clock()
            try:
                result = self._fetch(url)
            except Exception as exc:  # a failing fetch must not end the worker
                result = _failure(exc, started, self._clock())
            self._deliver(result, started)
            self._release(token)

    def _admit(self) -> int | None:
        """Wait for a free slot and take it; None when this thread should exit (it is uncounted)."""
        with self._lock:
            while True:
                if self._stopping or self._exhausted:
                    self._threads -= 1
                    return None
                now = self._clock()
                paused = now < self._paused_until
                if not paused and self._slots < self._size:
                    break
                timeout: float | None = None
                if self._threads - len(self._abandoned) > self._size:
                    # More threads than the size for a while: this one goes. The
                    # timer is the pool's, not the thread's, because the spare
                    # threads take turns at the free slots and none idles long.
                    wall = time.monotonic()
                    if self._oversize_since is None:
                        self._oversize_since = wall
                    elif wall - self._oversize_since >= IDLE_EXIT_S:
                        self._threads -= 1
                        return None
                    timeout = IDLE_EXIT_S
                else:
                    self._oversize_since = None
                if paused:
                    left = self._paused_until - now
                    timeout = left if timeout is None else min(timeout, left)
                self._wake.wait(timeout)
            self._slots += 1
            self._pulling += 1
            return next(self._serial)

    def _pull(self, token: int) -> str | None:
        """The next URL for the slot `token` holds; None (slot given back) if the source is dry."""
        url: str | None = None
        failure: Exception | None = None
        with self._source_lock:
            if not self._exhausted:
                try:
                    url = next(self._urls)
                except StopIteration:
                    pass
                except Exception as exc:  # a broken source ends the run; the caller hears why
                    failure = exc
        now = self._clock()
        with self._lock:
            self._pulling -= 1
            if url is None:
                self._exhausted = True
                self._slots -= 1
                self._wake.notify_all()
                self._settled.notify_all()
            else:
                self._account()
                self._running[token] = now
        if failure is not None:
            self._deliver(_failure(failure, now, now), now)
        return url

    def _deliver(self, result: Result, started: float) -> None:
        """Hand `result` to on_result; if on_result raises, hand it the failure instead."""
        try:
            self._on_result(result)
        except Exception as exc:  # the caller's bug must not end the worker
            try:
                self._on_result(_failure(exc, started, self._clock()))
            except Exception:  # failed twice: nothing left to tell it with
                log.exception("on_result_failed pool=%s", self._name)

    def _release(self, token: int) -> None:
        """Give back the slot of a finished request (an abandoned one gave it back already)."""
        with self._lock:
            self._account()
            if token in self._abandoned:
                self._abandoned.discard(token)
            else:
                del self._running[token]
                self._slots -= 1
                self._wake.notify()
            if self._is_done() or not self._running:
                self._settled.notify_all()


def _failure(exc: BaseException, started: float, now: float) -> Result:
    """The CLIENT_ERROR result an exception inside the pool becomes."""
    return Result(
        outcome=Outcome.CLIENT_ERROR,
        started=started,
        latency_s=max(0.0, now - started),
        client_limit=is_client_limit(exc),
        detail=type(exc).__name__,
    )
