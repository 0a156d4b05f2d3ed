"""The fetcher against the lab server, and against a raw socket for what the lab cannot do."""

from __future__ import annotations

import email.utils
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tuner.fetch import Fetcher, FetchOptions, parse_retry_after
from tuner.lab import LabServer, profile
from tuner.measure import Outcome, Result


@pytest.fixture(scope="module")
def instant() -> Iterator[LabServer]:
    with LabServer(profile("instant", body_bytes=1000)) as lab:
        yield lab


class RawServer:
    """A loopback TCP server running `handle(conn, path)` per request: answers no lab gives."""

    def __init__(self, handle: Callable[[socket.socket, str], bool]) -> None:
        self.handle = handle
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.closed_by_client = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        self.closed_by_client += 1
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                if not self.handle(conn, path):  # False: the handler ended the connection
                    return

    def close(self) -> None:
        self.sock.close()


def answer(conn: socket.socket, status: str, body: bytes = b"ok", extra: str = "") -> bool:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
    return True


def scripted(conn: socket.socket, path: str) -> bool:
    """The raw server's answers, by path."""
    if path == "/429":
        return answer(conn, "429 Too Many Requests", extra="Retry-After: 3\r\n")
    if path == "/503-date":
        when = email.utils.formatdate(time.time() + 30, usegmt=True)
        return answer(conn, "503 Service Unavailable", extra=f"Retry-After: {when}\r\n")
    if path == "/503":
        return answer(conn, "503 Service Unavailable")
    if path == "/404":
        return answer(conn, "404 Not Found")
    if path == "/loop":
        return answer(conn, "302 Found", extra="Location: /loop\r\n")
    if path == "/trickle":  # a byte every 100 ms of a long body
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            try:
                conn.sendall(b"x")
            except OSError:
                return False
            time.sleep(0.1)
        return False
    if path == "/reset":  # half a body, then a TCP reset
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return False
    if path == "/garbage":
        conn.sendall(b"HTTP/1.1 TWO HUNDRED\r\n\r\n")
        return False
    if path == "/huge":  # 64 MiB, more than anyone should read
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
        try:
            for _ in range(1024):
                conn.sendall(b"x" * 65536)
        except OSError:
            pass
        return False
    if path == "/hang":
        time.sleep(5)
        return False
    return answer(conn, "200 OK")


@pytest.fixture(scope="module")
def raw() -> Iterator[RawServer]:
    server = RawServer(scripted)
    yield server
    server.close()


def test_success_against_the_lab(instant: LabServer) -> None:
    """A 200 from the lab is a success with its status, body size and a latency."""
    fetcher = Fetcher()
    r = fetcher(instant.url)
    fetcher.close()
    assert r.outcome is Outcome.SUCCESS
    assert (r.status, r.body_bytes, r.detail) == (200, 1000, "")
    assert 0 < r.latency_s < 5


def test_statuses_become_outcomes(raw: RawServer) -> None:
    """429 and 503+Retry-After are throttling, other bad statuses are HTTP errors."""
    fetcher = Fetcher()
    throttled = fetcher(raw.url + "/429")
    dated = fetcher(raw.url + "/503-date")
    plain_503 = fetcher(raw.url + "/503")
    missing = fetcher(raw.url + "/404")
    fetcher.close()
    assert (throttled.outcome, throttled.status, throttled.retry_after_s) == (
        Outcome.THROTTLED,
        429,
        3.0,
    )
    assert dated.outcome is Outcome.THROTTLED
    assert dated.retry_after_s is not None and 20 < dated.retry_after_s <= 30
    assert (plain_503.outcome, plain_503.overload) == (Outcome.HTTP_ERROR, True)
    assert (missing.outcome, missing.overload) == (Outcome.HTTP_ERROR, False)


def test_success_statuses_are_configurable(raw: RawServer) -> None:
    """A target can say that its 404 is a fine answer."""
    fetcher = Fetcher(FetchOptions(success_statuses=frozenset({200, 404})))
    assert fetcher(raw.url + "/404").outcome is Outcome.SUCCESS
    fetcher.close()


def test_lab_throttling_is_throttled() -> None:
    """The lab's 429 past its throttle point reads as throttled, with its Retry-After."""
    with LabServer(profile("throttle", throttle_at=1, service_ms=300.0)) as lab:
        fetcher = Fetcher()
        results: list[Result] = []

        def fetch() -> None:
            results.append(fetcher(lab.url))

        threads = [threading.Thread(target=fetch) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fetcher.close()
    throttled = [r for r in results if r.outcome is Outcome.THROTTLED]
    assert len(throttled) == 2
    assert all(r.retry_after_s == 1.0 for r in throttled)


def test_refused_connection() -> None:
    """A port nobody listens on is a connection error whose detail names no URL."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = Fetcher()(f"http://127.0.0.1:{port}/secret-path")
    assert r.outcome is Outcome.CONNECTION_ERROR
    assert "secret" not in r.detail and "127.0.0.1" not in r.detail
    assert r.detail == "ConnectionRefusedError"


def test_bad_urls_are_client_errors() -> None:
    """A URL that cannot be fetched is this side's error, not the server's, and no limit."""
    fetcher = Fetcher()
    for url in ("no-scheme.example", "ftp://example.org/", "http://"):
        r = fetcher(url)
        assert r.outcome is Outcome.CLIENT_ERROR, url
        assert not r.client_limit and not r.overload


def test_total_deadline_covers_a_trickling_body(raw: RawServer) -> None:
    """A server sending a byte every 100 ms cannot stretch a 0.5 s deadline to 100 s."""
    t0 = time.monotonic()
    r = Fetcher(FetchOptions(timeout_s=0.5))(raw.url + "/trickle")
    assert r.outcome is Outcome.TIMEOUT
    assert r.status == 200 and 0 < r.body_bytes < 1000
    assert time.monotonic() - t0 < 5


def test_a_server_that_never_answers_times_out(raw: RawServer) -> None:
    """No answer before the deadline is a timeout."""
    r = Fetcher(FetchOptions(timeout_s=0.3))(raw.url + "/hang")
    assert (r.outcome, r.detail) == (Outcome.TIMEOUT, "ReadTimeout")
    assert r.latency_s < 4


def test_reset_mid_body(raw: RawServer) -> None:
    """A connection reset halfway through the body is a connection error, status kept."""
    r = Fetcher()(raw.url + "/reset")
    assert (r.outcome, r.status) == (Outcome.CONNECTION_ERROR, 200)


def test_malformed_status_line(raw: RawServer) -> None:
    """Garbage instead of a status line is a connection error, not a crash."""
    r = Fetcher()(raw.url + "/garbage")
    assert r.outcome is Outcome.CONNECTION_ERROR


def test_huge_body_is_cut_and_its_connection_dropped(raw: RawServer) -> None:
    """A 64 MiB body stops at the limit; the answer still counts by its status; the next works."""
    fetcher = Fetcher(FetchOptions(max_body_bytes=100_000))
    r = fetcher(raw.url + "/huge")
    assert (r.outcome, r.detail, r.body_bytes) == (Outcome.SUCCESS, "body_truncated", 100_000)
    assert fetcher(raw.url + "/").outcome is Outcome.SUCCESS
    fetcher.close()


def test_redirect_loops_are_bounded(raw: RawServer) -> None:
    """A redirect loop ends as the server's error after a bounded number of hops."""
    r = Fetcher()(raw.url + "/loop")
    assert (r.outcome, r.detail, r.status) == (Outcome.HTTP_ERROR, "TooManyRedirects", 302)


def test_connections_are_reused_and_close_closes_them_all() -> None:
    """Each thread keeps one connection alive across requests; close() ends every one."""
    server = RawServer(lambda conn, path: answer(conn, "200 OK"))
    fetcher = Fetcher()

    def work() -> None:
        for _ in range(20):
            assert fetcher(server.url + "/").outcome is Outcome.SUCCESS

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.accepted == 4  # 80 requests, 4 connections: no churn
    fetcher.close()
    for _ in range(100):
        if server.closed_by_client == 4:
            break
        time.sleep(0.02)
    assert server.closed_by_client == 4
    server.close()


def test_open_file_limit_is_a_client_limit(instant: LabServer) -> None:
    """With every file descriptor taken, a request is a client-limit error, not a crash."""
    code = f"""
import resource, socket
from tuner.fetch import Fetcher
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(socket.socket())
except OSError:
    pass
r = Fetcher()({instant.url!r})
print(r.outcome.value, r.client_limit, r.detail)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    outcome, limit, _ = out.stdout.split()
    assert (outcome, limit) == ("client_error", "True")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("120", 120.0), ("0", 0.0), ("soon", None), ("-5", None)],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    """Retry-After in delta-seconds, or nothing when absent or malformed."""
    assert parse_retry_after(header) == seconds


def test_retry_after_dates() -> None:
    """An HTTP-date in the future is the wait until then; one in the past means now."""
    future = parse_retry_after(email.utils.formatdate(time.time() + 60, usegmt=True))
    assert future is not None and 50 < future <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
