"""`tuner probe` and `tuner once` end to end, against the lab server on loopback.

Bounds are loose on purpose (the right order of magnitude, the knee inside a
wide band): figures belong to `python -m bench.tuner`, not to tests.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.lab import LabProcess, profile
from tuner.probe import probe

TUNER = [sys.executable, "-m", "tuner"]


@pytest.fixture(scope="module")
def queue_lab():
    """A lab in its own process with a knee at 24 workers and a 5xx cliff at 41."""
    with LabProcess(profile("cliff", capacity=24, cliff=40)) as lab:
        yield lab


def test_probe_finds_the_knee_of_a_queue(queue_lab):
    """The knee lands in a wide band around the lab's capacity, with the goodput it promises."""
    report = probe(queue_lab.url, max_workers=256, time_limit_s=30.0)
    assert 12 <= report.best_workers <= 40
    assert report.goodput_rps > 300  # capacity 24 at 20 ms is 1,200/s; a busy CI box does less
    assert report.stop_reason in ("flattened", "errors")
    assert report.summary.requests > 0
    failed = report.summary.requests - report.summary.successes
    assert failed <= 0.05 * report.summary.requests, "probing must not cause an outage"


def test_probe_json_has_the_spec_shape(queue_lab):
    """`tuner probe --json` prints one object with SPEC's keys and step shape."""
    out = subprocess.run(
        [*TUNER, "probe", queue_lab.url, "--json", "--time-limit", "20", "--max-workers", "64"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    for key, kind in (
        ("url", str), ("best_workers", int), ("goodput_rps", float), ("ceiling_workers", int),
        ("stop_reason", str), ("steps", list),
    ):  # fmt: skip
        assert isinstance(data[key], kind), key
    assert data["cliff_workers"] is None or isinstance(data["cliff_workers"], int)
    assert data["stop_reason"] in (
        "flattened", "errors", "throttled", "latency", "ceiling", "max_workers", "time_limit"
    )  # fmt: skip
    step = data["steps"][0]
    assert set(step) == {"workers", "requests", "goodput_rps", "error_ratio", "p50_s", "p95_s"}
    assert data["best_workers"] <= 64


def test_probe_prints_a_live_table(queue_lab):
    """On a terminal (or a pipe), a line per step and a closing line naming the knee."""
    out = subprocess.run(
        [*TUNER, "probe", queue_lab.url, "--time-limit", "20", "--max-workers", "64"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["workers", "goodput/s"]
    assert len(lines) >= 5
    assert lines[-1].startswith("knee: ") or lines[-2].startswith("knee: ")


def test_probe_backs_off_a_throttling_server():
    """429 with Retry-After past 16 concurrent: the knee stays below 17, few requests throttled."""
    with LabProcess(profile("throttle", capacity=64, throttle_at=16, retry_after=1)) as lab:
        report = probe(lab.url, max_workers=256, time_limit_s=30.0)
        stats = lab.stats()
    assert report.best_workers <= 16
    assert report.cliff_workers is not None and report.cliff_workers <= 32
    assert stats["throttled_429"] <= 0.05 * sum(stats["served"].values())


def test_probe_respects_a_small_open_file_limit(tmp_path: Path):
    """With `ulimit -n 256` and a server that scales to 1,000: the ceiling is reported, exit 0."""
    with LabProcess(profile("queue", capacity=2000, service_ms=50)) as lab:

        def small_limit() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, min(256, hard)))

        done = subprocess.run(
            [*TUNER, "probe", lab.url, "--json", "--max-workers", "1000", "--time-limit", "40"],
            capture_output=True, text=True, timeout=90, preexec_fn=small_limit,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["ceiling_workers"] < 256
    assert data["best_workers"] <= data["ceiling_workers"]
    assert data["stop_reason"] in ("ceiling", "flattened")


def test_probe_rejects_a_non_http_url():
    """A URL tuner cannot fetch is bad usage: exit 2 and one line on stderr."""
    done = subprocess.run([*TUNER, "probe", "ftp://127.0.0.1/"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "http" in done.stderr


def test_once_runs_each_target_and_tunes_inside_the_run(queue_lab, tmp_path: Path):
    """2,000 URLs run once: the pool grows well past its start, and the summary says completed."""
    config = tmp_path / "tuner.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "targets:\n"
        "  - name: big\n"
        f"    urls: ['{queue_lab.url}a', '{queue_lab.url}b']\n"
        "    repeat: 1000\n"
        "  - name: small\n"
        f"    urls: ['{queue_lab.url}c']\n"
        "    repeat: 3\n"
    )
    done = subprocess.run(
        [*TUNER, "once", "-c", str(config), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reports = {r["target"]: r for r in json.loads(done.stdout)}
    big, small = reports["big"], reports["small"]
    assert big["result"] == "completed" and big["requests"] == 2000
    assert big["workers"] >= 8, "a run of 2,000 URLs must not crawl at its starting pool size"
    assert small["requests"] == 3 and small["workers"] <= 3, "three URLs never need more workers"


def test_once_fails_a_target_that_cannot_succeed(tmp_path: Path):
    """A target whose every request is refused: exit 1 and result failed."""
    config = tmp_path / "tuner.yaml"
    config.write_text(
        "targets:\n  - name: dead\n    urls: ['http://127.0.0.1:9/']\n    repeat: 5\n"
    )
    done = subprocess.run(
        [*TUNER, "once", "-c", str(config), "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    (report,) = json.loads(done.stdout)
    assert report["result"] == "failed"
    assert report["outcomes"]["connection_error"] == 5
