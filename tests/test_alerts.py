"""Prometheus scrape config and alerting rules, checked by the real promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parent.parent / "config"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package: prometheus; make tools)"
)

EXPECTED_ALERTS = {
    "TunerDown",
    "TunerTargetRunsFailing",
    "TunerTargetErrorsAboveBudget",
    "TunerRunsSkipped",
    "TunerConfigReloadFailed",
    "TunerTargetAtCeiling",
    "TunerTargetStale",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from config/ (rule_files paths there are relative) and capture its output."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=CONFIG, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    """The example prometheus.yml loads, rule file included."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_are_valid() -> None:
    """alerts.yml parses and every expression is valid PromQL."""
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alerts_fire_when_they_should() -> None:
    """Every case in alerts_test.yml passes: each alert fires on its condition and not otherwise."""
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def rules() -> list[dict[str, Any]]:
    """The alerting rules of alerts.yml."""
    doc = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_actionable() -> None:
    """Each alert says how bad (severity) and what happened (summary, description)."""
    assert {rule["alert"] for rule in rules()} == EXPECTED_ALERTS
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_every_alert_has_a_unit_test() -> None:
    """alerts_test.yml checks each alert both firing and staying quiet."""
    doc = yaml.safe_load((CONFIG / "alerts_test.yml").read_text())
    checks = [check for test in doc["tests"] for check in test["alert_rule_test"]]
    for name in EXPECTED_ALERTS:
        mine = [check for check in checks if check["alertname"] == name]
        assert any(check["exp_alerts"] for check in mine), f"{name}: never expected to fire"
        assert any(not check["exp_alerts"] for check in mine), f"{name}: never expected quiet"


def test_scrape_job_points_at_the_default_listen_address() -> None:
    """Prometheus scrapes job "tuner" where `tuner run` listens by default."""
    doc = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    (job,) = [job for job in doc["scrape_configs"] if job["job_name"] == "tuner"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9717"]
    assert doc["rule_files"] == ["alerts.yml"]
