"""`tuner demo`: the lab, the daemon against it, the tuning shown live and the knee printed."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest
import requests


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.timeout(90)
def test_demo_finds_the_knee_and_serves_metrics() -> None:
    """`tuner demo --duration 20` prints the config path, a table of windows and the knee."""
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", "demo", "--duration", "20", "--listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    scraped = ""
    for line in proc.stdout:
        lines.append(line)
        if not scraped and re.match(r"\s*\d+ ", line):  # windows are being measured
            scraped = requests.get(f"http://{listen}/metrics", timeout=5).text
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    out = "".join(lines)
    assert re.search(r"^lab listening on http://127\.0\.0\.1:\d+/ profile=cliff", out, re.M)
    config = re.search(r"^config:\s+(\S+tuner\.yaml)", out, re.M)
    assert config is not None, out
    assert re.search(r"^\s*workers\s+goodput/s", out, re.M)
    knee = re.search(r"^knee: (\d+) workers \((\d+) req/s\)", out, re.M)
    assert knee is not None, out
    assert 8 <= int(knee[1]) <= 48, out  # the lab's knee is 24: the right order of magnitude
    assert 'tuner_pool_workers{target="lab"}' in scraped
