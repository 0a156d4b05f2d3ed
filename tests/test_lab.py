"""The lab target server behaves as docs/lab.md says: real sockets on loopback, no mocks."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tuner import cli
from tuner.errors import LabError
from tuner.lab import PROFILES, LabProcess, LabServer, profile

LabFactory = Callable[..., LabServer]  # the `lab` fixture of conftest.py


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def burst(url: str, n: int, timeout: float = 10.0) -> list[http.client.HTTPResponse | None]:
    """n requests at once, one connection each, sent before any answer is read.

    A request unanswered within `timeout` comes back as None.
    """
    host, port = address(url)
    conns = [http.client.HTTPConnection(host, port, timeout=timeout) for _ in range(n)]
    for conn in conns:
        conn.connect()
    for conn in conns:
        conn.request("GET", "/item")
    answers: list[http.client.HTTPResponse | None] = []
    for conn in conns:
        try:
            response = conn.getresponse()
            response.read()
            answers.append(response)
        except TimeoutError:
            answers.append(None)
        conn.close()
    return answers


def statuses(answers: list[http.client.HTTPResponse | None]) -> list[int | None]:
    return [None if a is None else a.status for a in answers]


def wait_until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def stats_at(server: LabServer, concurrency: int) -> dict[str, Any]:
    """The first stats snapshot that shows `concurrency` requests inside the server."""
    deadline = time.monotonic() + 5.0
    while (stats := server.stats())["concurrency"] != concurrency:
        assert time.monotonic() < deadline, f"concurrency never reached {concurrency}"
        time.sleep(0.01)
    return stats


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read `count` answers with Content-Length bodies off a raw socket: (status, body)."""
    data = b""
    answers: list[tuple[int, bytes]] = []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode()
            length = int(re.search(r"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            if len(data) >= end + 4 + length:
                answers.append((int(head.split()[1]), data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection early"
        data += chunk
    return answers


# --- the model ------------------------------------------------------------------


def test_named_profiles_have_the_documented_knees_and_cliffs() -> None:
    """Each default profile's knee and cliff are the numbers docs/lab.md gives."""
    expected = {
        "instant": (1, None),
        "queue": (32, None),
        "cliff": (24, 41),
        "throttle": (24, 41),
        "retrograde": (35, None),
        "hang": (24, 25),
        "shift": (32, None),
        "noisy": (32, None),
    }
    assert {name: (p.expected_knee(), p.expected_cliff()) for name, p in PROFILES.items()} == (
        expected
    )
    assert PROFILES["queue"].expected_goodput(32) == pytest.approx(1600.0)
    assert PROFILES["queue"].expected_goodput(64) == pytest.approx(1600.0)
    assert PROFILES["queue"].knee_within(0.05) == 31
    shift = PROFILES["shift"]
    assert [shift.expected_knee(at_s=t) for t in (0, 25, 45)] == [32, 12, 32]


def test_retrograde_goodput_peaks_then_falls() -> None:
    """The USL curve peaks at N* = sqrt((1-σ)/κ) = 35 and is far lower at 4×N*."""
    p = PROFILES["retrograde"]
    assert p.expected_goodput(140) < 0.6 * p.expected_goodput(35)
    assert p.expected_goodput(34) < p.expected_goodput(35) > p.expected_goodput(36)


def test_profile_overrides_and_mistakes() -> None:
    """profile() changes numbers and refuses unknown names, unknown fields and bad values."""
    assert profile("queue", capacity=8).expected_knee() == 8
    assert profile("cliff", cliff=None).expected_cliff() is None
    with pytest.raises(LabError, match="unknown lab profile 'nope'"):
        profile("nope")
    with pytest.raises(LabError, match="unknown lab profile field"):
        profile("queue", capacty=8)
    with pytest.raises(LabError, match="capacity must be >= 1: 0"):
        profile("queue", capacity=0)
    with pytest.raises(LabError, match="change_at and capacity_after go together"):
        profile("queue", change_at=5.0)


# --- HTTP ---------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(lab: LabFactory) -> None:
    """Twenty requests through one session open one connection; any path and method is a target."""
    server = lab("instant")
    with requests.Session() as session:
        for i in range(20):
            assert session.get(f"{server.url}item/{i}?x=1").text == "ok\n"
        assert session.post(server.url, data=b"x" * 100_000).status_code == 200
        assert session.put(f"{server.url}a/b", data=b"{}").status_code == 200
        head = session.head(server.url)
        assert head.status_code == 200 and head.content == b""
        assert session.get(server.url).status_code == 200
    stats = server.stats()
    assert stats["served"] == {"200": 24}
    assert stats["connections_total"] == 1


def test_pipelined_requests_are_answered_in_order(lab: LabFactory) -> None:
    """Three pipelined GETs and a stats request in one packet: four answers, stats last."""
    server = lab("queue", service_ms=5.0)
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /-/stats HTTP/1.1\r\n\r\n")
        answers = read_responses(sock, 4)
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[3][1])["served"] == {"200": 3}


def test_request_bodies_are_skipped_exactly(lab: LabFactory) -> None:
    """A Content-Length body is consumed, so the next pipelined request parses cleanly."""
    server = lab("instant")
    body = b"GET / HTTP/1.1\r\n\r\n" * 10  # looks like requests, but is a body
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            + b"GET /-/stats HTTP/1.1\r\n\r\n"
        )
        answers = read_responses(sock, 2)
    assert json.loads(answers[1][1])["served"] == {"200": 1}


def test_connection_close_is_honoured(lab: LabFactory) -> None:
    """`Connection: close` gets its answer and then the end of the stream."""
    server = lab("instant")
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in data


def test_http_1_0_gets_one_answer_per_connection(lab: LabFactory) -> None:
    """An HTTP/1.0 request is answered and its connection closed."""
    server = lab("instant")
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nok\n")


def test_garbage_gets_400_and_a_closed_connection(lab: LabFactory) -> None:
    """A request line that is not HTTP is answered 400 and the connection closed."""
    server = lab("instant")
    with socket.create_connection(address(server.url), timeout=5) as sock:
        sock.sendall(b"HELLO\r\n\r\n")
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 400 ")
        assert sock.recv(65536) == b""


def test_holds_a_thousand_connections(lab: LabFactory) -> None:
    """A thousand open connections each get their answer."""
    server = lab("instant")
    socks = [socket.create_connection(address(server.url), timeout=10) for _ in range(1000)]
    try:
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert all(read_responses(sock, 1)[0][0] == 200 for sock in socks)
        assert server.stats()["connections"] == 1000
    finally:
        for sock in socks:
            sock.close()


def test_stats_count_and_reset(lab: LabFactory) -> None:
    """Stats count answers by status and the peak concurrency; POST /-/reset zeroes them."""
    server = lab("cliff", capacity=2, cliff=3, service_ms=200.0)
    assert sorted(statuses(burst(server.url, 5)), key=str) == [200, 200, 200, 503, 503]
    stats = server.stats()
    assert stats["served"] == {"200": 3, "503": 2}
    assert stats["rejected_503"] == 2
    assert stats["max_concurrency"] == 3
    assert stats["concurrency"] == 0
    assert stats["profile"] == "cliff"
    assert stats["parameters"]["cliff"] == 3
    assert requests.post(f"{server.url}-/reset", timeout=5).json() == {"reset": True}
    stats = requests.get(f"{server.url}-/stats", timeout=5).json()
    assert stats["served"] == {}
    assert stats["rejected_503"] == 0
    assert stats["max_concurrency"] == 0


# --- profiles ---------------------------------------------------------------------


def test_queue_holds_the_excess_in_line(lab: LabFactory) -> None:
    """Past capacity, requests wait their turn and are all served."""
    server = lab("queue", capacity=4, service_ms=300.0)
    host, port = address(server.url)
    conns = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(10)]
    for conn in conns:
        conn.request("GET", "/")
    stats = stats_at(server, 10)
    assert (stats["busy"], stats["queued"]) == (4, 6)
    assert all(conn.getresponse().status == 200 for conn in conns)


def test_a_client_leaving_takes_its_queued_request_out(lab: LabFactory) -> None:
    """A queued request whose client hangs up leaves the queue and counts as dropped."""
    server = lab("queue", capacity=1, service_ms=1000.0)
    host, port = address(server.url)
    first, second = (http.client.HTTPConnection(host, port, timeout=10) for _ in range(2))
    first.request("GET", "/")
    second.request("GET", "/")
    assert stats_at(server, 2)["queued"] == 1
    second.close()
    stats = stats_at(server, 1)
    assert (stats["queued"], stats["dropped"]) == (0, 1)
    assert first.getresponse().status == 200
    first.close()


def test_cliff_answers_503_past_the_cliff_only(lab: LabFactory) -> None:
    """With 60 clients at once some get a fast 503; with 10, none do."""
    # Long service times keep all 60 inside at once even on a busy machine.
    server = lab("cliff", service_ms=200.0)
    answers = statuses(burst(server.url, 60))
    assert answers.count(503) > 0
    assert answers.count(200) >= 24
    assert server.stats()["rejected_503"] == answers.count(503)
    assert statuses(burst(server.url, 10)) == [200] * 10


def test_throttle_answers_429_with_retry_after(lab: LabFactory) -> None:
    """Past throttle_at, the excess gets 429 with Retry-After; under it, none does."""
    server = lab("throttle", retry_after=7, service_ms=200.0)
    answers = burst(server.url, 60)
    throttled = [a for a in answers if a is not None and a.status == 429]
    assert throttled
    assert {a.getheader("Retry-After") for a in throttled} == {"7"}
    assert server.stats()["throttled_429"] == len(throttled)
    assert statuses(burst(server.url, 10)) == [200] * 10


def test_hang_leaves_the_excess_unanswered(lab: LabFactory) -> None:
    """Past capacity a request gets no answer before the client gives up; the others do."""
    server = lab("hang", capacity=2, service_ms=50.0)
    assert sorted(statuses(burst(server.url, 3, timeout=0.5)), key=str) == [200, 200, None]
    stats = server.stats()
    assert stats["hung"] == 1
    # The client closed its connection: the hanging request leaves the server.
    wait_until(lambda: server.stats()["concurrency"] == 0)
    assert statuses(burst(server.url, 2, timeout=5)) == [200, 200]


def test_retrograde_serves_less_at_four_times_the_peak(lab: LabFactory) -> None:
    """Goodput of a burst at 4×N* is clearly below goodput of a burst at N*."""
    server = lab("retrograde", service_ms=50.0)  # slow enough that sending takes no part

    def goodput(n: int) -> float:
        started = time.perf_counter()
        answers = statuses(burst(server.url, n))
        assert answers == [200] * n
        return n / (time.perf_counter() - started)

    peak = goodput(35)
    assert goodput(140) < 0.8 * peak


def test_shift_changes_capacity_and_restores_it(lab: LabFactory) -> None:
    """Capacity 6 drops to 1 at change_at and comes back at restore_at."""
    server = lab(
        "shift", capacity=6, capacity_after=1, change_at=0.8, restore_at=1.8, service_ms=150.0
    )
    host, port = address(server.url)

    def load(n: int) -> tuple[int, int]:
        """n requests at once: (in service, waiting) while they are all inside."""
        conns = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(n)]
        for conn in conns:
            conn.request("GET", "/")
        stats = stats_at(server, n)
        assert all(conn.getresponse().status == 200 for conn in conns)
        return stats["busy"], stats["queued"]

    assert load(6) == (6, 0)
    wait_until(lambda: server.stats()["capacity"] == 1)
    assert load(3) == (1, 2)
    wait_until(lambda: server.stats()["capacity"] == 6)
    assert load(6) == (6, 0)


def test_noisy_latency_has_a_heavy_tail(lab: LabFactory) -> None:
    """Service times vary widely: the slowest of many requests takes several times the median."""
    server = lab("noisy")
    latencies = []
    with requests.Session() as session:
        for _ in range(60):
            latencies.append(session.get(server.url, timeout=5).elapsed.total_seconds())
    latencies.sort()
    assert latencies[-1] > 3 * latencies[len(latencies) // 2]


# --- in-process and child-process servers -------------------------------------------


def test_lab_server_refuses_a_non_loopback_host() -> None:
    """The lab is a load target: it never listens beyond loopback."""
    with pytest.raises(LabError, match="loopback only"):
        LabServer("instant", host="0.0.0.0").start()


def test_lab_process_prints_its_line_and_stops_cleanly() -> None:
    """The child prints the listening line, serves, answers stats and exits 0 on SIGTERM."""
    with LabProcess(profile("hang", hang_s=None, cliff=50, capacity=8)) as process:
        assert re.fullmatch(
            r"lab listening on http://127\.0\.0\.1:\d+/ profile=hang knee=8 cliff=51",
            process.banner,
        )
        assert requests.get(process.url, timeout=5).status_code == 200
        stats = process.stats()
        assert stats["served"] == {"200": 1}
        assert stats["parameters"]["hang_s"] is None
    assert process.returncode == 0


def test_lab_process_pins_its_cpu() -> None:
    """`cpu=0` pins the child to CPU 0."""
    with LabProcess("instant", cpu=0) as process:
        assert process.pid is not None
        assert os.sched_getaffinity(process.pid) == {0}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--capacity", "many"], "invalid _count value"),
        (["--profile", "nope"], "invalid choice"),
        (["--capacity", "0"], "capacity must be >= 1: 0"),
        (["--host", "10.1.2.3"], "loopback only"),
    ],
)
def test_bad_flags_exit_2(flags: list[str], message: str) -> None:
    """A bad flag is one line on stderr and exit code 2."""
    done = subprocess.run(
        [sys.executable, "-m", "tuner.lab", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_tuner_lab_command_serves_until_sigint() -> None:
    """`python -m tuner lab` prints its line first, serves, and exits 0 on SIGINT."""
    with subprocess.Popen(
        [sys.executable, "-m", "tuner", "lab", "--profile", "cliff", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("lab listening on http://127.0.0.1:")
        assert line.rstrip().endswith(" profile=cliff knee=24 cliff=41")
        assert requests.get(line.split()[3], timeout=5).status_code == 200
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=10) == 0


def test_tuner_lab_command_refuses_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    """`tuner lab --capacity 0` exits 2 with the rule and the value on stderr."""
    assert cli.main(["lab", "--port", "0", "--capacity", "0"]) == 2
    assert capsys.readouterr().err == "tuner lab: profile queue: capacity must be >= 1: 0\n"
