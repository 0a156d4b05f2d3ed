"""The /metrics text as Prometheus sees it: names, types and labels of SPEC, scraped and parsed."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tuner.controller import Decision, Phase
from tuner.measure import Outcome, Result, Window
from tuner.metrics import DURATION_BUCKETS, PHASE_STATES, Metrics

# SPEC's metric table: family name as the text format names it -> (type, label names).
SPEC = {
    "tuner_build_info": ("gauge", {"version"}),
    "tuner_config_last_reload_successful": ("gauge", set()),
    "tuner_config_last_reload_success_timestamp_seconds": ("gauge", set()),
    "tuner_requests": ("counter", {"target", "outcome"}),
    "tuner_request_duration_seconds": ("histogram", {"target"}),
    "tuner_pool_workers": ("gauge", {"target"}),
    "tuner_in_flight_requests": ("gauge", {"target"}),
    "tuner_pool_min_workers": ("gauge", {"target"}),
    "tuner_pool_max_workers": ("gauge", {"target"}),
    "tuner_pool_ceiling_workers": ("gauge", {"target"}),
    "tuner_optimal_concurrency": ("gauge", {"target"}),
    "tuner_throughput_requests_per_second": ("gauge", {"target"}),
    "tuner_phase": ("gauge", {"target", "tuner_phase"}),  # an enum is a gauge per state in text
    "tuner_decisions": ("counter", {"target", "reason"}),
    "tuner_runs": ("counter", {"target", "result"}),
    "tuner_last_run_duration_seconds": ("gauge", {"target"}),
    "tuner_last_run_timestamp_seconds": ("gauge", {"target"}),
    "tuner_last_run_success": ("gauge", {"target"}),
}


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted label pairs: value}, parsed from the rendered text."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value; KeyError when the series is absent."""
    return scrape(metrics)[name][tuple(sorted(labels.items()))]


def series_of(metrics: Metrics, target: str) -> list[str]:
    """Every sample line of one target."""
    return [
        f"{name}{dict(key)}"
        for name, by_labels in scrape(metrics).items()
        for key in by_labels
        if ("target", target) in key
    ]


def window(workers: int, successes: int, duration_s: float = 1.0) -> Window:
    return Window(workers=workers, duration_s=duration_s, successes=successes)


def busy_target(metrics: Metrics, name: str = "api") -> None:
    """A target that has done a bit of everything, so every series of it exists."""
    tm = metrics.target(name, timeout_s=10.0, min_workers=1, max_workers=64)
    tm.pool(4, ceiling=512)
    tm.in_flight(3)
    for outcome in Outcome:
        tm.result(Result(outcome=outcome, started=0.0, latency_s=0.05))
    tm.decision(Decision(workers=8, phase=Phase.RAMP, reason="ramp", ceiling=512), window(4, 40))
    tm.decision(Decision(workers=8, phase=Phase.PAUSED, reason="throttled", pause_s=2.0), None)
    tm.decision(Decision(workers=6, phase=Phase.HOLD, reason="knee", knee=6), window(8, 70))
    tm.run_finished("completed", 12.5, stamp=1_700_000_000.0)
    tm.run_skipped()


def test_every_spec_metric_is_there_with_its_type_and_labels() -> None:
    """A scrape shows each metric of SPEC's table, typed and labelled as SPEC says."""
    m = Metrics(version="1.2.3")
    m.config_loaded(True, stamp=1_700_000_000.0)
    busy_target(m)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    for name, (mtype, labels) in SPEC.items():
        assert name in families, name
        family = families[name]
        assert family.type == mtype, name
        label_names = {k for s in family.samples for k in s.labels} - {"le"}
        assert label_names == labels, name
    assert any(name.startswith("process_") for name in families)
    assert "tuner_requests_created" not in families  # _created series are switched off


def test_values_follow_what_the_target_did() -> None:
    """Counts, gauges and the phase enum read back what the runner reported."""
    m = Metrics(version="1.2.3")
    busy_target(m)
    assert value(m, "tuner_build_info", version="1.2.3") == 1
    assert value(m, "tuner_requests_total", target="api", outcome="timeout") == 1
    assert value(m, "tuner_request_duration_seconds_count", target="api") == len(Outcome)
    # 4 -> 8 (ramp), a pause at 8 (throttled), 8 -> 6 (knee): three decisions.
    assert value(m, "tuner_decisions_total", target="api", reason="ramp") == 1
    assert value(m, "tuner_decisions_total", target="api", reason="throttled") == 1
    assert value(m, "tuner_decisions_total", target="api", reason="knee") == 1
    assert value(m, "tuner_pool_workers", target="api") == 6
    assert value(m, "tuner_pool_ceiling_workers", target="api") == 512
    assert value(m, "tuner_optimal_concurrency", target="api") == 6
    assert value(m, "tuner_throughput_requests_per_second", target="api") == 70
    assert value(m, "tuner_pool_max_workers", target="api") == 64
    assert value(m, "tuner_runs_total", target="api", result="completed") == 1
    assert value(m, "tuner_runs_total", target="api", result="skipped") == 1
    assert value(m, "tuner_last_run_success", target="api") == 1
    assert value(m, "tuner_last_run_duration_seconds", target="api") == 12.5
    # After the run the target is idle, and exactly one state is set.
    phases = {s: value(m, "tuner_phase", target="api", tuner_phase=s) for s in PHASE_STATES}
    assert phases == {s: (1 if s == "idle" else 0) for s in PHASE_STATES}


def test_a_decision_that_keeps_the_size_is_not_counted() -> None:
    """Holding at the same size changes the phase but adds no decision."""
    m = Metrics(version="1")
    tm = m.target("api", timeout_s=10.0, min_workers=1, max_workers=64)
    tm.pool(8, ceiling=64)
    tm.decision(Decision(workers=8, phase=Phase.HOLD, reason="steady"), window(8, 80))
    assert "tuner_decisions_total" not in scrape(m)
    assert value(m, "tuner_phase", target="api", tuner_phase="hold") == 1


def test_new_target_starts_at_zero_for_every_outcome_and_result() -> None:
    """rate() works from the first scrape: all outcome and result series exist at 0."""
    m = Metrics(version="1")
    m.target("api", timeout_s=10.0, min_workers=1, max_workers=8)
    for outcome in Outcome:
        assert value(m, "tuner_requests_total", target="api", outcome=outcome.value) == 0
    for result in ("completed", "failed", "skipped"):
        assert value(m, "tuner_runs_total", target="api", result=result) == 0
    assert value(m, "tuner_request_duration_seconds_count", target="api") == 0
    assert value(m, "tuner_phase", target="api", tuner_phase="idle") == 1


def test_new_target_has_no_gauge_that_would_mislead() -> None:
    """Before its first run, no 0 reads as a failed run or as a pool at its ceiling."""
    m = Metrics(version="1")
    m.target("api", timeout_s=10.0, min_workers=1, max_workers=8)
    samples = scrape(m)
    for name in (
        "tuner_last_run_success",
        "tuner_last_run_timestamp_seconds",
        "tuner_pool_workers",
        "tuner_pool_ceiling_workers",
        "tuner_optimal_concurrency",
    ):
        assert name not in samples, name
    assert value(m, "tuner_pool_min_workers", target="api") == 1


def test_failed_run_and_config_reload() -> None:
    """A failed run clears last_run_success; a failed reload keeps the last good stamp."""
    m = Metrics(version="1")
    tm = m.target("api", timeout_s=10.0, min_workers=1, max_workers=8)
    tm.run_finished("failed", 3.0, stamp=1_700_000_100.0)
    assert value(m, "tuner_last_run_success", target="api") == 0
    assert value(m, "tuner_runs_total", target="api", result="failed") == 1
    with pytest.raises(ValueError, match="completed or failed"):
        tm.run_finished("skipped", 0.0, stamp=0.0)
    m.config_loaded(True, stamp=100.0)
    m.config_loaded(False, stamp=200.0)
    assert value(m, "tuner_config_last_reload_successful") == 0
    assert value(m, "tuner_config_last_reload_success_timestamp_seconds") == 100.0


def test_removed_target_leaves_no_series() -> None:
    """After remove_target nothing of it is scraped, even when a late worker still reports."""
    m = Metrics(version="1")
    busy_target(m, "api")
    busy_target(m, "web")
    late = m.target("api", timeout_s=10.0, min_workers=1, max_workers=64)
    m.remove_target("api")
    late.result(Result(outcome=Outcome.SUCCESS, started=0.0, latency_s=0.1))
    late.decision(Decision(workers=32, phase=Phase.BACKOFF, reason="errors"), window(6, 1))
    late.run_finished("failed", 1.0, stamp=0.0)
    assert series_of(m, "api") == []
    assert series_of(m, "web") != []
    # The name can come back, fresh.
    m.target("api", timeout_s=10.0, min_workers=1, max_workers=8)
    assert value(m, "tuner_requests_total", target="api", outcome="success") == 0


@pytest.mark.parametrize("timeout_s", [10.0, 60.0])
def test_duration_buckets_cover_the_timeout(timeout_s: float) -> None:
    """The top finite bucket of the scraped histogram is at or above the target's timeout."""
    m = Metrics(version="1")
    m.target("api", timeout_s=timeout_s, min_workers=1, max_workers=8)
    buckets = scrape(m)["tuner_request_duration_seconds_bucket"]
    finite = [float(dict(key)["le"]) for key in buckets if dict(key)["le"] != "+Inf"]
    assert max(finite) >= timeout_s
    assert max(finite) == DURATION_BUCKETS[-1]


def test_a_timeout_above_the_top_bucket_is_refused() -> None:
    """SPEC's promise (top bucket >= timeout) cannot be broken silently."""
    m = Metrics(version="1")
    with pytest.raises(ValueError, match="above the top duration bucket"):
        m.target("slow", timeout_s=DURATION_BUCKETS[-1] + 1, min_workers=1, max_workers=8)


def test_promtool_accepts_the_text(tmp_path: Path) -> None:
    """`promtool check metrics` finds no problem in a scrape (naming, types, help)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/tools installs it)")
    m = Metrics(version="1")
    m.config_loaded(True, stamp=1.0)
    busy_target(m)
    done = subprocess.run(
        [promtool, "check", "metrics"], input=m.render(), capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert done.stdout.decode() + done.stderr.decode() == ""


def test_render_stays_cheap_with_many_targets_and_observations() -> None:
    """50 targets after a million requests: a scrape is a matter of milliseconds, not seconds."""
    m = Metrics(version="1")
    targets = [m.target(f"t{i}", timeout_s=10.0, min_workers=1, max_workers=256) for i in range(50)]
    results = [
        Result(outcome=o, started=0.0, latency_s=0.001 * (i % 3000))
        for i, o in enumerate(list(Outcome) * 10)
    ]
    for i in range(1_000_000 // len(results)):
        tm = targets[i % len(targets)]
        for r in results:
            tm.result(r)
    started = time.perf_counter()
    body = m.render()
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert body.count(b"tuner_requests_total{") == 50 * len(Outcome)
