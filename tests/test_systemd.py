"""The systemd units, checked by systemd's own `systemd-analyze` (verify and security)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "config" / "systemd"
INSTALLED_BINARY = "/opt/tuner/bin/tuner"
MAX_EXPOSURE = 2.0
# The longest the daemon waits for in-flight requests after SIGTERM (docs/operations.md).
SHUTDOWN_GRACE_S = 30

# unit file in the repo -> the unit name it is checked as (a template only loads as an instance)
CASES = {
    "tuner.service": "tuner.service",
    "tuner@.service": "tuner@example.service",
}

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd; make tools)"
)


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze and capture everything it says."""
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def existing_binary() -> str:
    """An executable standing in for /opt/tuner/bin/tuner: verify checks that it exists."""
    venv_tuner = Path(sys.executable).with_name("tuner")
    return str(venv_tuner) if venv_tuner.exists() else sys.executable


def staged(tmp_path: Path, source: str, name: str) -> Path:
    """A copy of the unit named as it is loaded, with the install path pointing at a real binary.

    Only the binary path changes: every other line is checked as shipped.
    """
    text = (UNITS / source).read_text()
    assert INSTALLED_BINARY in text
    unit = tmp_path / name
    unit.write_text(text.replace(INSTALLED_BINARY, existing_binary()))
    return unit


@pytest.mark.parametrize(("source", "name"), CASES.items())
def test_verify_is_silent(tmp_path: Path, source: str, name: str) -> None:
    """`systemd-analyze verify` finds no unknown key, bad value or missing binary."""
    result = analyze("verify", "--man=no", staged(tmp_path, source, name))
    said = (result.stdout + result.stderr).strip()
    assert said == "", f"systemd-analyze verify {name}:\n{said}"
    assert result.returncode == 0


@pytest.mark.parametrize(("source", "name"), CASES.items())
def test_security_exposure(tmp_path: Path, source: str, name: str) -> None:
    """The sandbox keeps `systemd-analyze security` exposure at or below 2.0 ("OK")."""
    result = analyze("security", "--offline=yes", staged(tmp_path, source, name))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, f"no exposure level in output:\n{result.stdout}{result.stderr}"
    score = float(found.group(1))
    failed = "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score} > {MAX_EXPOSURE}; failing:\n{failed}"


@pytest.mark.parametrize("source", CASES)
def test_notify_and_watchdog(source: str) -> None:
    """The units rely on tuner.notify: Type=notify, watchdog, only the main process may notify."""
    settings = unit_settings(UNITS / source)
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["WatchdogSec"] == ["30"]


@pytest.mark.parametrize("source", CASES)
def test_stop_timeout_leaves_room_for_graceful_shutdown(source: str) -> None:
    """SIGTERM goes to the daemon alone, and SIGKILL waits past its 30 s shutdown grace."""
    settings = unit_settings(UNITS / source)
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["KillMode"] == ["mixed"]
    timeout = settings["TimeoutStopSec"][0]
    assert timeout.endswith("s")
    assert int(timeout[:-1]) > SHUTDOWN_GRACE_S


@pytest.mark.parametrize("source", CASES)
def test_limits_for_the_pool(source: str) -> None:
    """The open-file and task limits the ceiling logic reads are generous and explicit."""
    settings = unit_settings(UNITS / source)
    assert settings["LimitNOFILE"] == ["65536"]
    assert int(settings["TasksMax"][0]) >= 4096


def test_reload_and_run_agree_on_the_address() -> None:
    """`systemctl reload tuner` calls the address `tuner run` listens on."""
    settings = unit_settings(UNITS / "tuner.service")
    assert settings["Environment"] == ["TUNER_LISTEN=127.0.0.1:9717"]
    assert "--listen ${TUNER_LISTEN}" in settings["ExecStart"][0]
    assert "--listen ${TUNER_LISTEN}" in settings["ExecReload"][0]


def test_template_instances_are_apart() -> None:
    """tuner@NAME has its own config, state directory and journal identifier."""
    settings = unit_settings(UNITS / "tuner@.service")
    assert "-c /etc/tuner/%i.yaml" in settings["ExecStart"][0]
    assert "-c /etc/tuner/%i.yaml" in settings["ExecReload"][0]
    assert settings["StateDirectory"] == ["tuner/%i"]
    assert settings["SyslogIdentifier"] == ["tuner-%i"]


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (comments and section headers dropped)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings
