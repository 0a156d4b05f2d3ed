"""`tuner run` and `tuner reload` as an operator lives with them: real processes, real
signals, real scrapes, a real lab server on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tuner.lab import LabServer

LabFactory = Callable[..., LabServer]  # the `lab` fixture of conftest.py

SPEC_TARGET_METRICS = (
    "tuner_requests_total",
    "tuner_request_duration_seconds_bucket",
    "tuner_pool_workers",
    "tuner_in_flight_requests",
    "tuner_pool_min_workers",
    "tuner_pool_max_workers",
    "tuner_pool_ceiling_workers",
    "tuner_optimal_concurrency",
    "tuner_throughput_requests_per_second",
    "tuner_phase",
    "tuner_decisions_total",
    "tuner_runs_total",
    "tuner_last_run_duration_seconds",
    "tuner_last_run_timestamp_seconds",
    "tuner_last_run_success",
)
SECRET = "s3cret-token-value"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `check()` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except requests.RequestException:
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def target(name: str, url: str, **keys: Any) -> dict[str, Any]:
    """A target entry of the config file."""
    return {"name": name, "urls": [url], **keys}


class Tuner:
    """A `tuner run` child process with its config file, state directory and log."""

    def __init__(self, tmp: Path, *, watch: bool = False) -> None:
        self.tmp = tmp
        self.config = tmp / "tuner.yaml"
        self.state = tmp / "state"
        self.listen = f"127.0.0.1:{free_port()}"
        self.base = f"http://{self.listen}"
        self.watch = watch
        self.log = tmp / "tuner.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, targets: list[dict[str, Any]], *, rename: bool = False) -> None:
        """Write the config; with `rename`, as an editor does: a new file renamed over it."""
        doc = {"listen": self.listen, "shutdown_grace": "5s", "targets": targets}
        text = yaml.safe_dump(doc, sort_keys=False)
        if rename:
            tmp = self.config.with_name(".tuner.yaml.swp")
            tmp.write_text(text)
            os.replace(tmp, self.config)
        else:
            self.config.write_text(text)

    def start(self) -> None:
        """Start the daemon and wait until it is ready."""
        args = [
            sys.executable,
            "-m",
            "tuner",
            "run",
            "-c",
            str(self.config),
            "--listen",
            self.listen,
            "--state-dir",
            str(self.state),
        ]
        if self.watch:
            args.append("--watch-config")
        env = {**os.environ, "API_TOKEN": SECRET}
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(args, stderr=log, env=env)
        wait_until("the daemon to be ready", lambda: self.get("/-/ready").status_code == 200)

    def get(self, path: str) -> requests.Response:
        """GET `path`; fails the test at once if the daemon died."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"tuner run exited with {self.proc.returncode}:\n{self.log_text()}")
        return requests.get(self.base + path, timeout=5)

    def status(self) -> dict[str, Any]:
        """The /-/status document."""
        doc: dict[str, Any] = self.get("/-/status").json()
        return doc

    def metrics(self) -> str:
        """One scrape of /metrics."""
        return self.get("/metrics").text

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one series in a fresh scrape, or None when absent."""
        want = {f'{k}="{v}"' for k, v in labels.items()}
        for line in self.metrics().splitlines():
            m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if m and m[1] == name and want <= set((m[2] or "").split(",")):
                return float(m[3])
        return None

    def runs(self, name: str, result: str = "completed") -> float:
        """tuner_runs_total of a target (0 when absent)."""
        return self.sample("tuner_runs_total", target=name, result=result) or 0.0

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.read_text()

    def kill(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tuner(tmp_path: Path) -> Iterator[Callable[..., Tuner]]:
    """`tuner(watch=False) -> Tuner` (not started); every one is killed at teardown."""
    made: list[Tuner] = []

    def make(watch: bool = False) -> Tuner:
        t = Tuner(tmp_path, watch=watch)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill()


def reload_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`tuner reload ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "tuner", "reload", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(150)
def test_an_operators_day(lab: LabFactory, tuner: Callable[..., Tuner]) -> None:
    """Start, scrape, add targets three ways, break the file, remove targets, stop, restart warm."""
    server = lab("queue", capacity=16)
    api = target(
        "api",
        server.url,
        repeat=600,
        schedule={"every": "2s"},
        headers={"Authorization": "Bearer ${API_TOKEN}"},
    )
    t = tuner(watch=True)
    t.write([api])
    t.start()

    # Scrape: every SPEC series of the target once it has run and found its knee.
    wait_until("api to find its knee", lambda: t.status()["targets"]["api"]["knee"], timeout=40)
    wait_until("a completed run of api", lambda: t.runs("api") >= 1)
    text = t.metrics()
    for name in SPEC_TARGET_METRICS:
        assert re.search(rf'^{name}\{{[^}}]*target="api"', text, re.M), name
    assert t.sample("tuner_config_last_reload_successful") == 1
    assert t.get("/-/healthy").status_code == 200
    promtool = shutil.which("promtool")
    if promtool is not None:  # test_metrics.py skips visibly when it is missing
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()

    # Add a target and reload three ways: SIGHUP, POST /-/reload, an editor's save.
    slow = {"schedule": {"every": "1h"}, "repeat": 20}
    t.write([api, target("b", server.url, **slow)])
    t.signal(signal.SIGHUP)
    wait_until("b to run after SIGHUP", lambda: t.runs("b") >= 1)
    t.write([api, target("b", server.url, **slow), target("c", server.url, **slow)])
    response = requests.post(t.base + "/-/reload", timeout=30)
    assert (response.status_code, response.text.strip()) == (200, "ok")
    wait_until("c to run after POST /-/reload", lambda: t.runs("c") >= 1)
    everything = [api, *(target(n, server.url, **slow) for n in "bcd")]
    t.write(everything, rename=True)
    wait_until("d to run after a save-by-rename", lambda: t.runs("d") >= 1, timeout=20)

    # Break the file: the reload fails with every problem, the old config keeps running.
    broken = [*everything, target("e", server.url, workers={"min": 8, "max": 2}, colour="red")]
    t.write(broken)
    response = requests.post(t.base + "/-/reload", timeout=30)
    assert response.status_code == 500
    problems = response.text.strip().splitlines()
    assert len(problems) == 2, problems
    assert all(re.match(rf"{re.escape(str(t.config))}:\d+: targets", p) for p in problems)
    assert any("colour" in p for p in problems) and any("workers" in p for p in problems)
    cli = reload_cli("-c", str(t.config))
    assert cli.returncode == 1
    assert all(p in cli.stderr for p in problems)
    assert t.sample("tuner_config_last_reload_successful") == 0
    before = t.runs("api")
    wait_until("api to keep running on the old config", lambda: t.runs("api") > before)
    assert set(t.status()["targets"]) == {"api", "b", "c", "d"}
    for problem in problems:  # one config_rejected line each, logfmt-quoted
        assert f"config_rejected trigger=http problem={json.dumps(problem)}" in t.log_text()

    # Remove targets: they stop and their series vanish; `tuner reload` says ok.
    t.write([api])
    cli = reload_cli("--listen", t.listen)
    assert cli.returncode == 0, cli.stderr
    assert t.sample("tuner_config_last_reload_successful") == 1
    text = t.metrics()
    assert not re.search(r'target="[bcd]"', text)
    assert set(t.status()["targets"]) == {"api"}

    # Stop: exit 0, state saved (and kept for the removed targets too).
    assert t.stop() == 0
    log = t.log_text()
    assert "event=" not in log  # text format: `info stopped ...`
    assert re.search(r"info stopping reason=SIGTERM", log)
    assert re.search(r"info stopped reason=SIGTERM", log)
    saved = json.loads((t.state / "api.json").read_text())
    knee = saved["learned"]["knee"]
    assert knee is not None and knee >= 2
    assert (t.state / "b.json").exists()
    assert SECRET not in log and SECRET not in text

    # Restart warm: the first run starts at the learned knee, holding it.
    warm = tuner(watch=False)
    warm.start()
    wait_until("the first run after restart", lambda: "run_started" in warm.log_text()[len(log) :])
    first = re.findall(
        r"run_started target=api workers=(\d+) phase=(\w+)", warm.log_text()[len(log) :]
    )
    assert first[0] == (str(knee), "hold")
    assert warm.status()["targets"]["api"]["knee"] == knee
    assert warm.stop() == 0


def test_a_long_run_makes_the_next_one_skip(lab: LabFactory, tuner: Callable[..., Tuner]) -> None:
    """A run that outlasts its interval: the next fire is skipped, counted and logged."""
    server = lab("queue", capacity=1, service_ms=100.0)
    t = tuner()
    t.write([target("slow", server.url, repeat=30, schedule={"every": "1s"}, workers={"max": 1})])
    t.start()
    wait_until("a skipped run", lambda: t.runs("slow", "skipped") >= 1)
    assert "run_skipped target=slow" in t.log_text()
    assert t.stop() == 0


def test_stop_abandons_requests_past_the_grace(
    lab: LabFactory, tuner: Callable[..., Tuner]
) -> None:
    """SIGTERM during hanging requests: exit 0 after the grace, the abandoned ones counted."""
    server = lab("hang", capacity=1, hang_s=120.0)
    t = tuner()
    t.write(
        [target("hang", server.url, repeat=100_000, timeout="60s", workers={"min": 4, "max": 4})]
    )
    t.start()
    wait_until("the run to start", lambda: "run_started" in t.log_text())
    time.sleep(2.0)  # the first request is served; the others hang
    began = time.monotonic()
    assert t.stop() == 0
    assert time.monotonic() - began < 20  # grace 5s: nowhere near the 60s timeout
    stopped = re.search(r"stopped reason=SIGTERM abandoned=(\d+)", t.log_text())
    assert stopped is not None and int(stopped[1]) >= 1, t.log_text()
    assert json.loads((t.state / "hang.json").read_text())["target"] == "hang"


def test_a_corrupt_state_file_means_a_fresh_start(
    lab: LabFactory, tuner: Callable[..., Tuner]
) -> None:
    """A state file that is not JSON: a warning, the file kept aside, the target runs anyway."""
    server = lab("queue")
    t = tuner()
    t.state.mkdir()
    (t.state / "api.json").write_text("{not json")
    t.write([target("api", server.url, repeat=50)])
    t.start()
    wait_until("a completed run", lambda: t.runs("api") >= 1)
    assert "state_unusable" in t.log_text()
    assert list(t.state.glob("api.json.corrupt-*"))
    assert t.stop() == 0


def test_json_logs(lab: LabFactory, tuner: Callable[..., Tuner], tmp_path: Path) -> None:
    """`--log-format json`: one JSON object a line, with the run's figures."""
    server = lab("queue")
    t = tuner()
    t.write([target("api", server.url, repeat=50)])
    args = [
        sys.executable,
        "-m",
        "tuner",
        "run",
        "-c",
        str(t.config),
        "--listen",
        t.listen,
        "--state-dir",
        str(t.state),
        "--log-format",
        "json",
    ]
    with t.log.open("w") as log:
        t.proc = subprocess.Popen(args, stderr=log)
    wait_until("a completed run", lambda: t.runs("api") >= 1)
    assert t.stop() == 0
    lines = [json.loads(line) for line in t.log_text().splitlines()]
    finished = next(e for e in lines if e["event"] == "run_finished")
    assert finished["target"] == "api" and finished["result"] == "completed"
    assert finished["requests"] == 50 and finished["failed"] == 0
    assert {"duration_s", "goodput", "workers", "knee"} <= set(finished)
    assert [e["event"] for e in lines][-1] == "stopped"


def test_an_invalid_config_does_not_start(tmp_path: Path) -> None:
    """A broken file at start: exit 2 with FILE:LINE problems, nothing listening."""
    config = tmp_path / "tuner.yaml"
    config.write_text("targets:\n  - name: Bad Name\n    urls: [http://127.0.0.1:1/]\n")
    run = subprocess.run(
        [sys.executable, "-m", "tuner", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert re.match(rf"{re.escape(str(config))}:2: targets\[0\]\.name", run.stderr), run.stderr


def test_reload_with_no_daemon() -> None:
    """`tuner reload` with nothing listening: exit 1 and one clear line."""
    listen = f"127.0.0.1:{free_port()}"
    run = reload_cli("--listen", listen)
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        == f"tuner reload: no tuner daemon listens on {listen} (connection refused)"
    )
