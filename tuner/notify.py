"""The systemd notify protocol (sd_notify(3)), without a third-party package.

Under a unit with `Type=notify`, systemd passes `$NOTIFY_SOCKET`: a datagram
socket, either a filesystem path or an abstract name written with a leading
`@`. The daemon sends newline-separated `KEY=VALUE` fields to it:

    notify.ready("2 targets")      # READY=1: systemd marks the unit started
    notify.reloading()             # RELOADING=1 while the config is re-read
    notify.ready()                 # ... and READY=1 again when it is done
    notify.stopping()              # STOPPING=1 on SIGTERM
    notify.watchdog()              # WATCHDOG=1 every watchdog_interval() / 2 seconds

Every function returns False (and never raises) when there is no socket to
talk to, so the daemon calls them unconditionally: outside systemd they are
no-ops.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(raw: str) -> str | bytes:
    """The socket address for `$NOTIFY_SOCKET`: '@name' is Linux's abstract namespace."""
    if raw.startswith("@"):
        # Abstract sockets are addressed by a leading NUL byte instead of the '@'.
        return b"\0" + raw[1:].encode()
    return raw


def notify(*fields: str) -> bool:
    """Send `fields` as one datagram to `$NOTIFY_SOCKET`.

    Returns True when the datagram went out, False when not running under
    systemd (no `$NOTIFY_SOCKET`) or the socket is gone: a lost notification
    must never take the daemon down.

        notify("READY=1", "STATUS=tuning 3 targets")
    """
    raw = os.environ.get("NOTIFY_SOCKET", "")
    # Only paths and abstract names are valid; anything else (e.g. vsock
    # addresses, which this daemon never runs under) is treated as absent.
    if not fields or not (raw.startswith("/") or raw.startswith("@")):
        return False
    payload = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, _address(raw))
    except OSError:
        return False
    return True


def ready(status: str = "") -> bool:
    """Tell systemd the daemon is up (or back up after a reload), with an optional status line."""
    if status:
        return notify("READY=1", f"STATUS={_one_line(status)}")
    return notify("READY=1")


def reloading() -> bool:
    """Tell systemd a config reload has started; call `ready()` when it is done.

    MONOTONIC_USEC is required by systemd >= 253 for `Type=notify-reload` (it
    matches the message to the reload it asked for); older versions ignore it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Tell systemd the daemon is shutting down gracefully."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Ping the watchdog: systemd restarts the service if pings stop for `WatchdogSec=`."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status shown by `systemctl status`."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds, or None when systemd asks for no watchdog.

    Read from `$WATCHDOG_USEC`; when `$WATCHDOG_PID` is set it must be this
    process (the variables may be inherited by a child that is not the one
    being watched). The daemon pings at half this interval, as sd_watchdog_enabled(3)
    advises.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    """STATUS= ends at a newline, so fold any into spaces rather than send a broken field."""
    return " ".join(text.splitlines())
