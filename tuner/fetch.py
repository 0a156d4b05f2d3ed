"""One HTTP request in, one `Result` out: the only module that imports `requests`.

    fetcher = Fetcher(FetchOptions(timeout_s=5.0))
    result = fetcher("http://127.0.0.1:8080/")   # never raises
    fetcher.close()

Every exception becomes exactly one `Outcome`, so nothing of `requests` or
`urllib3` leaks past this file. A `Fetcher` is safe to call from many
threads at once: each thread gets its own `requests.Session`, because a
shared session's connection pool (10 connections per host by default) makes
every thread past the tenth open and throw away a connection per request.
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import requests
import requests.adapters
import urllib3.exceptions

from tuner import __version__
from tuner.ceiling import causes, is_client_limit
from tuner.measure import Outcome, Result

# Bytes asked for per read while draining a body. Each read is one system
# call at most (read1), so a trickling server meets the deadline between reads.
_CHUNK = 64 * 1024

# Redirects followed before giving up (requests allows 30).
MAX_REDIRECTS = 10

# Host connection pools a thread's session keeps (each with one idle
# connection): the target host and a redirect host such as http -> https.
# ceiling.FDS_PER_WORKER counts on this.
_HOSTS_PER_SESSION = 2


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """How each request is made and judged.

    `timeout_s` is the total deadline of one request, body included;
    `connect_timeout_s` (default: the total) bounds connecting alone. The
    body is read and dropped; past `max_body_bytes` the connection is closed
    and the result says `body_truncated`. `tls_verify` is True, False or a
    CA bundle path, as in requests.
    """

    method: str = "GET"
    timeout_s: float = 10.0
    connect_timeout_s: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    success_statuses: frozenset[int] = frozenset(range(200, 400))
    max_body_bytes: int = 10 * 1024 * 1024
    tls_verify: bool | str = True


class _DeadlinePassed(Exception):
    """The request's total deadline passed while its body was still arriving."""


class Fetcher:
    """Makes requests with `FetchOptions` and turns each into one `Result`, from any thread.

    `clock` stamps `Result.started` and measures latency and the deadline.
    The environment (proxy variables, REQUESTS_CA_BUNDLE) is read once, here:
    requests would read it again for every request, a quarter of its time
    against a fast server. Credentials go in `headers`; ~/.netrc is not read.
    """

    def __init__(
        self,
        options: FetchOptions = FetchOptions(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self._clock = clock
        self._headers = {"User-Agent": f"tuner/{__version__}", **dict(options.headers)}
        connect = options.connect_timeout_s or options.timeout_s
        self._timeout = (min(connect, options.timeout_s), options.timeout_s)
        # With proxies configured, requests must go on reading the environment
        # per request, for no_proxy; without, it need never read it again.
        self._trust_env = bool(urllib.request.getproxies())
        self._verify: bool | str = options.tls_verify
        if options.tls_verify is True and not self._trust_env:
            self._verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every session handed out, by the thread that owns it, so close()
        # reaches them all and sessions of threads that ended are closed.
        self._sessions: dict[threading.Thread, requests.Session] = {}

    def __call__(self, url: str) -> Result:
        """Fetch `url` once, read and drop the body, and say how it ended. Never raises."""
        started = self._clock()
        deadline = started + self.options.timeout_s
        status: int | None = None
        retry_after: float | None = None
        body = [0]  # bytes read so far, kept even when the read fails halfway
        truncated = False
        try:
            response = self._session().request(
                self.options.method,
                url,
                headers=self._headers,
                timeout=self._timeout,
                stream=True,
                verify=self._verify,
            )
            try:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                truncated = self._drain(response, deadline, body)
            finally:
                # After a full read the connection is already back in the
                # pool; otherwise this closes it, as it must be.
                response.close()
        except Exception as exc:  # every failure becomes an outcome: that is this method's job
            outcome, detail = classify(exc)
            if isinstance(exc, requests.TooManyRedirects) and exc.response is not None:
                status = exc.response.status_code
            return Result(
                outcome=outcome,
                started=started,
                latency_s=self._clock() - started,
                status=status,
                retry_after_s=retry_after,
                body_bytes=body[0],
                client_limit=outcome is Outcome.CLIENT_ERROR and is_client_limit(exc),
                detail=detail,
            )
        ended = self._clock()
        if ended > deadline:
            # Headers that came late are a timeout even if the body was quick.
            outcome, detail = Outcome.TIMEOUT, "ReadTimeout"
        else:
            outcome = self._judge(status, retry_after)
            detail = "body_truncated" if truncated else ""
        return Result(
            outcome=outcome,
            started=started,
            latency_s=ended - started,
            status=status,
            retry_after_s=retry_after,
            body_bytes=body[0],
            detail=detail,
        )

    def close(self) -> None:
        """Close every thread's session and its connections. A later call opens a new session."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._local = threading.local()
        for session in sessions:
            session.close()

    def _judge(self, status: int, retry_after: float | None) -> Outcome:
        """The outcome of a complete answer with this status."""
        if status in self.options.success_statuses:
            return Outcome.SUCCESS
        if status == 429 or (status == 503 and retry_after is not None):
            return Outcome.THROTTLED
        return Outcome.HTTP_ERROR

    def _drain(self, response: requests.Response, deadline: float, read: list[int]) -> bool:
        """Read the body and drop it, counting bytes in `read[0]`; True if cut at the limit.

        Each read may wait only as long as the deadline leaves, so a server
        that trickles a byte at a time still ends in a timeout on time.
        """
        raw = response.raw
        limit = self.options.max_body_bytes
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise _DeadlinePassed
            connection = raw.connection
            if connection is not None and connection.sock is not None:
                connection.sock.settimeout(remaining)
            # One byte past the limit tells a body of exactly `limit` bytes
            # from a longer one.
            chunk = raw.read1(min(_CHUNK, limit + 1 - read[0]), decode_content=False)
            if not chunk:
                return False
            read[0] += len(chunk)
            if read[0] > limit:
                read[0] = limit
                return True

    def _session(self) -> requests.Session:
        """This thread's session, made on first use."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is not None:
            return session
        session = requests.Session()
        session.max_redirects = MAX_REDIRECTS
        session.trust_env = self._trust_env
        # One request at a time per thread: one connection per host is all a
        # thread can use, and a bigger pool would only hold idle sockets.
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=_HOSTS_PER_SESSION, pool_maxsize=1, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        me = threading.current_thread()
        with self._lock:
            ended = [t for t in self._sessions if not t.is_alive()]
            stale = [self._sessions.pop(t) for t in ended]
            self._sessions[me] = session
            self._local.session = session
        for old in stale:
            old.close()
        return session


def classify(exc: BaseException) -> tuple[Outcome, str]:
    """The outcome an exception from requests, urllib3 or the socket means, and its detail.

    Timeouts first: requests' ConnectTimeout is also a ConnectionError. The
    detail is the class name of the innermost cause (`ConnectionRefusedError`,
    `RemoteDisconnected`), the most telling one, never a message that could
    hold a URL.
    """
    read_timeouts = _DeadlinePassed | requests.ReadTimeout | urllib3.exceptions.ReadTimeoutError
    if isinstance(exc, read_timeouts):
        return Outcome.TIMEOUT, "ReadTimeout"
    if isinstance(exc, requests.ConnectTimeout):
        return Outcome.TIMEOUT, "ConnectTimeout"
    if isinstance(exc, requests.Timeout | TimeoutError):
        return Outcome.TIMEOUT, type(exc).__name__
    if is_client_limit(exc):
        return Outcome.CLIENT_ERROR, _innermost(exc)
    if isinstance(exc, requests.TooManyRedirects):
        # The far side answered, with a redirect loop: its error, not ours.
        return Outcome.HTTP_ERROR, "TooManyRedirects"
    if isinstance(
        exc,
        requests.ConnectionError
        | urllib3.exceptions.ProtocolError
        | urllib3.exceptions.SSLError
        | ConnectionError,
    ):
        return Outcome.CONNECTION_ERROR, _innermost(exc)
    return Outcome.CLIENT_ERROR, type(exc).__name__


def _innermost(exc: BaseException) -> str:
    """The class name of the last exception in `exc`'s cause chain."""
    name = type(exc).__name__
    for e in causes(exc):
        name = type(e).__name__
    return name


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date); None if absent or bad.

    An HTTP-date is read against the wall clock, the only clock it can mean;
    a date in the past means "now" (0.0).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP-date is always GMT; one without a zone is malformed
    return max(0.0, when.timestamp() - time.time())
