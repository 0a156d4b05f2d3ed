"""`tuner sweep` and its library face, against the lab's queue with a known knee."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.errors import UsageError
from tuner.lab import LabServer, profile
from tuner.measure import Step
from tuner.sweep import knee_of, parse_workers, sweep


@pytest.fixture(scope="module")
def queue4() -> Iterator[LabServer]:
    """Four slots of 20 ms: about 50 req/s per worker up to 4 workers, 200 req/s beyond."""
    with LabServer(profile("queue", capacity=4, service_ms=20.0)) as lab:
        yield lab


def step(workers: int, goodput: float) -> Step:
    return Step(workers, 100, goodput, 0.0, 0.01, 0.02)


def test_sweep_finds_the_knee_of_a_four_slot_server(queue4: LabServer) -> None:
    """One step per size; goodput grows up to 4 workers and the knee is at 4 (or 8 if noisy)."""
    steps = sweep(queue4.url, [1, 4, 8], requests=60)
    assert [s.workers for s in steps] == [1, 4, 8]
    assert all(s.requests == 60 and s.error_ratio == 0 for s in steps)
    assert steps[1].goodput_rps > 2 * steps[0].goodput_rps
    assert knee_of(steps).workers in (4, 8)


def test_knee_is_the_smallest_pool_within_5_percent_of_the_best() -> None:
    """48 is best, 32 is within 5% of it, 16 is not: the knee is 32."""
    steps = [step(16, 1200.0), step(32, 1587.2), step(48, 1601.0), step(64, 1590.0)]
    assert knee_of(steps).workers == 32


def test_worker_lists_take_sizes_and_ranges() -> None:
    """`1,2,4` and `8-64:8` both work, and mix."""
    assert parse_workers("1,2,4") == [1, 2, 4]
    assert parse_workers("8-32:8") == [8, 16, 24, 32]
    assert parse_workers("1,2,4-6") == [1, 2, 4, 5, 6]


@pytest.mark.parametrize("text", ["", "a", "0,1", "8-4", "1-8:0"])
def test_bad_worker_lists_are_usage_errors(text: str) -> None:
    """A list that names no valid pool size is refused before any request."""
    with pytest.raises(UsageError):
        parse_workers(text)


def test_table_ends_with_the_knee(queue4: LabServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The table has a row per size and a last line naming the knee."""
    assert main(["sweep", queue4.url, "--workers", "1,2", "--requests", "20"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "workers" and len(lines) == 4
    assert lines[-1].startswith("knee: ") and "req/s; best" in lines[-1]


def test_json_and_csv(
    queue4: LabServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the SPEC's shape; --csv writes the same steps."""
    out_csv = tmp_path / "steps.csv"
    args = ["sweep", queue4.url, "--workers", "1,2", "--requests", "20", "--json"]
    assert main([*args, "--csv", str(out_csv)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["url"] == queue4.url
    assert [s["workers"] for s in doc["steps"]] == [1, 2]
    assert set(doc["steps"][0]) == {
        "workers",
        "requests",
        "goodput_rps",
        "error_ratio",
        "p50_s",
        "p95_s",
    }
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["workers"]) for r in rows] == [1, 2]
    assert float(rows[0]["goodput_rps"]) == doc["steps"][0]["goodput_rps"]


def test_plot_writes_a_png(queue4: LabServer, tmp_path: Path) -> None:
    """--plot draws the chart to a PNG file."""
    png = tmp_path / "sweep.png"
    assert (
        main(["sweep", queue4.url, "--workers", "1,2", "--requests", "10", "--plot", str(png)]) == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_usage_error(tmp_path: Path) -> None:
    """Without matplotlib installed, --plot says how to get it and exits 2, before any request."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from tuner.cli import main\n"
        f"sys.exit(main(['sweep', 'http://127.0.0.1:9/', '--workers', '1', '--plot', "
        f"{str(tmp_path / 'x.png')!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "tuner[plot]" in out.stderr and len(out.stderr.strip().splitlines()) == 1
