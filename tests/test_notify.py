"""tuner.notify against real AF_UNIX datagram sockets, as systemd's manager listens on them."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner import notify


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the value $NOTIFY_SOCKET gets

    def fields(self) -> list[str]:
        """The KEY=VALUE fields of the next datagram (fails the test if none arrives)."""
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def nothing_more(self) -> bool:
        """True when no further datagram is waiting."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A socket bound to a file, like /run/systemd/notify."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with sock:
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A socket in Linux's abstract namespace, which $NOTIFY_SOCKET writes as '@name'."""
    name = f"tuner-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.bind(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with sock:
        yield Listener(sock, "@" + name)


def test_ready_with_status_is_one_datagram(path_socket: Listener) -> None:
    """systemd sees READY=1 and the status line together, so `systemctl status` shows both."""
    assert notify.ready("2 targets") is True
    assert path_socket.fields() == ["READY=1", "STATUS=2 targets"]
    assert path_socket.nothing_more()


def test_ready_without_status(path_socket: Listener) -> None:
    """A bare ready() sends only READY=1."""
    assert notify.ready() is True
    assert path_socket.fields() == ["READY=1"]


def test_abstract_socket(abstract_socket: Listener) -> None:
    """An '@' address reaches the abstract socket (systemd uses these in containers)."""
    assert notify.notify("READY=1", "STATUS=up") is True
    assert abstract_socket.fields() == ["READY=1", "STATUS=up"]


def test_reloading_carries_monotonic_timestamp(path_socket: Listener) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC of now, which systemd >= 253 requires."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = path_socket.fields()
    assert fields[0] == "RELOADING=1"
    key, _, value = fields[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping_watchdog_status(path_socket: Listener) -> None:
    """Each helper sends the field systemd acts on."""
    assert notify.stopping()
    assert path_socket.fields() == ["STOPPING=1"]
    assert notify.watchdog()
    assert path_socket.fields() == ["WATCHDOG=1"]
    assert notify.status("reloaded\nconfig")
    # A newline would end the field early; it is folded so the whole text shows.
    assert path_socket.fields() == ["STATUS=reloaded config"]


def test_not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $NOTIFY_SOCKET every call is a quiet no-op that returns False."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready("x") is False
    assert notify.watchdog() is False
    assert notify.reloading() is False


def test_missing_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that went away (systemd restarted) costs a False, never the daemon."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@tuner-test-nobody-listens-here")
    assert notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert notify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """WatchdogSec=30 arrives as WATCHDOG_USEC=30000000 and reads as 30 seconds."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 30.0
    monkeypatch.delenv("WATCHDOG_PID")
    assert notify.watchdog_interval() == 30.0


def test_watchdog_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watchdog meant for another PID (an inherited environment) is not ours to ping."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None


def test_no_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """No, empty, zero or garbled WATCHDOG_USEC means no watchdog."""
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_interval() is None
    for value in ("", "0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", value)
        assert notify.watchdog_interval() is None
