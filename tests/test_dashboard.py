"""The Grafana dashboard and its provisioning files.

Two layers: the rules a dashboard linter would enforce, checked over the JSON
(data source variable, job/instance matchers, counters only under rate(),
units and descriptions, metric names from SPEC.md's table); and a live check
that runs every PromQL expression of the dashboard against a real Prometheus
scraping a real `tuner run` fetching from the lab server.
"""

from __future__ import annotations

import json
import re
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "tuner.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# SPEC.md's Metrics table: the names dashboards may depend on, and their types.
SPEC_METRICS = {
    "tuner_build_info": "gauge",
    "tuner_config_last_reload_successful": "gauge",
    "tuner_config_last_reload_success_timestamp_seconds": "gauge",
    "tuner_requests_total": "counter",
    "tuner_request_duration_seconds": "histogram",
    "tuner_pool_workers": "gauge",
    "tuner_in_flight_requests": "gauge",
    "tuner_pool_min_workers": "gauge",
    "tuner_pool_max_workers": "gauge",
    "tuner_pool_ceiling_workers": "gauge",
    "tuner_optimal_concurrency": "gauge",
    "tuner_throughput_requests_per_second": "gauge",
    "tuner_phase": "enum",
    "tuner_decisions_total": "counter",
    "tuner_runs_total": "counter",
    "tuner_last_run_duration_seconds": "gauge",
    "tuner_last_run_timestamp_seconds": "gauge",
    "tuner_last_run_success": "gauge",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def series_names() -> dict[str, str]:
    """Every series name a query may use -> 'counter' (only under rate/increase) or 'gauge'."""
    names: dict[str, str] = {}
    for name, kind in SPEC_METRICS.items():
        if kind == "histogram":
            # Each histogram series is a counter; the bare name is not a series at all.
            names.update({name + suffix: "counter" for suffix in HISTOGRAM_SERIES})
        else:
            names[name] = "counter" if kind == "counter" else "gauge"
    return names


# A metric name and its optional {matchers}. Grouping clauses are removed before
# scanning, so a label like `tuner_phase` in `by (tuner_phase)` is not taken for a metric.
SELECTOR = re.compile(r"(?<![\w:])(tuner_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\(\s*(tuner_\w+)\s*\{[^}]*\}\s*\[([^\]]+)\]")


def load_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana reads it."""
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels that show data (rows only group them)."""
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query on the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in data_panels(dashboard)
        for target in panel["targets"]
    ]


def selectors_of(expr: str) -> list[tuple[int, str, str]]:
    """(position, metric name, matchers) of every metric selector in `expr`."""
    stripped = GROUPING.sub(lambda m: " " * len(m.group(0)), expr)
    return [(m.start(), m.group(1), m.group(2) or "") for m in SELECTOR.finditer(stripped)]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard JSON, parsed once."""
    return load_dashboard()


def test_identity(dashboard: dict[str, Any]) -> None:
    """A stable uid keeps links and provisioning updates pointing at the same dashboard."""
    assert dashboard["uid"] == "tuner"
    assert dashboard["title"] == "tuner"
    assert dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_datasource_variable_everywhere(dashboard: dict[str, Any]) -> None:
    """Every panel and query follows the data source picker; nothing needs an import step."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in data_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance", "target"):
        assert variables[name]["datasource"] == DATASOURCE, name
    text = DASHBOARD.read_text()
    assert "${DS_" not in text and "__inputs" not in dashboard


def test_variables_chain(dashboard: dict[str, Any]) -> None:
    """Job narrows instances, instances narrow targets; targets can be all or several."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["job"]["definition"] == "label_values(tuner_build_info, job)"
    assert (
        variables["instance"]["definition"]
        == 'label_values(tuner_build_info{job="$job"}, instance)'
    )
    assert (
        variables["target"]["definition"]
        == 'label_values(tuner_pool_workers{job="$job",instance=~"$instance"}, target)'
    )
    for name in ("job", "instance", "target"):
        assert variables[name]["query"]["query"] == variables[name]["definition"]
    assert variables["target"]["multi"] and variables["target"]["includeAll"]


def test_every_query_is_scoped_to_job_and_instance(dashboard: dict[str, Any]) -> None:
    """Two tuner deployments in one Prometheus never mix on the dashboard."""
    for title, expr in queries(dashboard):
        found = selectors_of(expr)
        assert found, f"{title}: no tuner metric in {expr}"
        for _, name, matchers in found:
            assert 'job="$job"' in matchers, f"{title}: {name} lacks job matcher"
            assert 'instance=~"$instance"' in matchers, f"{title}: {name} lacks instance matcher"


def test_metric_names_come_from_spec(dashboard: dict[str, Any]) -> None:
    """Every series the dashboard reads is one SPEC.md promises, so it cannot silently go blank."""
    known = series_names()
    for title, expr in queries(dashboard):
        for _, name, _ in selectors_of(expr):
            assert name in known, f"{title}: {name} is not in SPEC.md's metrics table"


def test_every_spec_metric_is_shown(dashboard: dict[str, Any]) -> None:
    """Nothing the daemon exports is left off (tuner_build_info feeds the variables)."""
    used = {name for _, expr in queries(dashboard) for _, name, _ in selectors_of(expr)}
    used |= {
        name
        for variable in dashboard["templating"]["list"]
        for _, name, _ in selectors_of(str(variable.get("definition", "")))
    }
    for name, kind in SPEC_METRICS.items():
        if kind == "histogram":
            assert name + "_bucket" in used, name
        else:
            assert name in used, name


def test_counters_only_under_rate(dashboard: dict[str, Any]) -> None:
    """A raw counter is meaningless on a graph, and rate() of a gauge is wrong."""
    kinds = series_names()
    for title, expr in queries(dashboard):
        stripped = GROUPING.sub(lambda m: " " * len(m.group(0)), expr)
        for position, name, _ in selectors_of(expr):
            under_rate = re.search(r"\b(rate|irate|increase)\(\s*$", stripped[:position])
            if kinds.get(name) == "counter":
                assert under_rate, f"{title}: counter {name} outside rate()/increase()"
            else:
                assert not under_rate, f"{title}: rate()/increase() of gauge {name}"


def test_rate_uses_rate_interval(dashboard: dict[str, Any]) -> None:
    """rate() windows follow $__rate_interval, so they always span enough scrapes."""
    for title, expr in queries(dashboard):
        calls = re.findall(r"\b(?:rate|irate)\(", expr)
        windows = [m for m in RANGE_FUNCTION.findall(expr) if m[0] in ("rate", "irate")]
        assert len(calls) == len(windows), f"{title}: a rate() not over a plain selector: {expr}"
        for function, name, window in windows:
            assert window == "$__rate_interval", f"{title}: {function}({name}[{window}])"


def test_every_panel_has_unit_and_description(dashboard: dict[str, Any]) -> None:
    """An operator can read each number's unit and find out what the panel means."""
    for panel in data_panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"


def test_per_target_row_repeats(dashboard: dict[str, Any]) -> None:
    """Each selected target gets its own row; its panels show that target alone."""
    panels = dashboard["panels"]
    rows = [i for i, panel in enumerate(panels) if panel.get("repeat") == "target"]
    assert len(rows) == 1
    repeated = panels[rows[0] + 1 :]
    assert len(repeated) >= 10
    for panel in repeated:
        for target in panel["targets"]:
            for _, name, matchers in selectors_of(target["expr"]):
                assert 'target="$target"' in matchers, f"{panel['title']}: {name}"


def test_overview_covers_all_targets(dashboard: dict[str, Any]) -> None:
    """The overview shows goodput, error share and pool vs knee vs ceiling for every target."""
    panels = dashboard["panels"]
    first_repeat = next(i for i, panel in enumerate(panels) if panel.get("repeat") == "target")
    overview = panels[:first_repeat]
    exprs = " ".join(t["expr"] for panel in overview for t in panel.get("targets", []))
    for name in ("tuner_pool_workers", "tuner_optimal_concurrency", "tuner_pool_ceiling_workers"):
        assert name in exprs
    assert 'outcome="success"' in exprs
    assert 'target=~"$target"' in exprs


def test_dashboard_provider_parses() -> None:
    """Grafana's file provider loads the dashboard from the documented directory."""
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "tuner.yaml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/tuner"


def test_datasource_provisioning_parses() -> None:
    """A default Prometheus data source, which the dashboard's variable starts on."""
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"].startswith("http://")


# --- live: real Prometheus, real daemon, real lab server ------------------------------

PROMETHEUS = shutil.which("prometheus")
TARGET = "lab"
RATE_INTERVAL = "20s"  # what Grafana would pick for a 1s scrape interval, with margin


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line `proc` prints, or fail after `timeout` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"{proc.args!r} printed nothing within {timeout}s")
    return proc.stdout.readline()


def start(stack: ExitStack, args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[str]:
    """Start a process that is stopped (SIGTERM, then SIGKILL) when the test ends."""
    stderr = stack.enter_context(log.open("w"))
    proc = subprocess.Popen(args, stderr=stderr, text=True, **kwargs)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    return proc


def promql(base: str, expr: str) -> list[Any]:
    """Evaluate `expr` now; fail the test with Prometheus' error if it is invalid."""
    response = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[Any] = body["data"]["result"]
    return result


def wait_for(
    what: str, check: Any, timeout: float, procs: dict[Path, subprocess.Popen[str]]
) -> None:
    """Poll `check()` until it is true; fail with the logs on timeout or if a process died."""
    deadline = time.monotonic() + timeout
    problem = f"timed out waiting for {what}"
    while time.monotonic() < deadline:
        dead = [
            f"{log.stem} exited with {proc.returncode}"
            for log, proc in procs.items()
            if proc.poll() is not None
        ]
        if dead:
            problem = f"{', '.join(dead)} while waiting for {what}"
            break
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in procs)
    pytest.fail(f"{problem}\n{tails}")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(Prometheus base URL, tuner instance): lab server -> tuner run -> Prometheus at 1s."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package: prometheus; make tools)")
    with ExitStack() as stack:
        lab = start(
            stack,
            [sys.executable, "-m", "tuner", "lab", "--profile", "queue", "--port", "0"],
            tmp_path / "lab.log",
            stdout=subprocess.PIPE,
        )
        line = first_line(lab, timeout=30)
        found = re.search(r"http://127\.0\.0\.1:\d+/\S*", line)
        assert found, f"lab did not print its address: {line!r}"

        instance = f"127.0.0.1:{free_port()}"
        config = tmp_path / "tuner.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": instance,
                    "targets": [
                        {
                            "name": TARGET,
                            "urls": [found.group(0)],
                            # Runs long enough for the tuner to find a knee in the first.
                            "repeat": 2000,
                            "schedule": {"every": "2s"},
                            "workers": {"min": 1, "max": 64},
                        }
                    ],
                }
            )
        )
        procs: dict[Path, subprocess.Popen[str]] = {}
        procs[tmp_path / "tuner.log"] = start(
            stack,
            [
                sys.executable,
                "-m",
                "tuner",
                "run",
                "-c",
                str(config),
                "--listen",
                instance,
                "--state-dir",
                str(tmp_path / "state"),
            ],
            tmp_path / "tuner.log",
        )

        prometheus_config = tmp_path / "prometheus.yml"
        prometheus_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "tuner", "static_configs": [{"targets": [instance]}]}
                    ],
                }
            )
        )
        listen = f"127.0.0.1:{free_port()}"
        assert PROMETHEUS is not None
        procs[tmp_path / "prometheus.log"] = start(
            stack,
            [
                PROMETHEUS,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={listen}",
            ],
            tmp_path / "prometheus.log",
            stdout=subprocess.DEVNULL,
        )
        base = f"http://{listen}"
        wait_for(
            "Prometheus to be ready",
            lambda: requests.get(f"{base}/-/ready", timeout=2).ok,
            timeout=30,
            procs=procs,
        )
        # A few scrapes after the first completed run, so every rate() window has two samples.
        last_run = f'tuner_last_run_timestamp_seconds{{job="tuner",target="{TARGET}"}}'
        wait_for(
            "five scrapes after the first run",
            lambda: promql(base, f"count_over_time({last_run}[1m]) >= 5"),
            timeout=90,
            procs=procs,
        )
        wait_for(
            "the knee to be scraped",
            lambda: promql(base, f'tuner_optimal_concurrency{{job="tuner",target="{TARGET}"}}'),
            timeout=60,
            procs=procs,
        )
        yield base, instance


def substitute(expr: str, instance: str) -> str:
    """The query Grafana would send with job=tuner, this instance and the lab target selected."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", "tuner")
        # Unescaped: the dots of an address match themselves, and a backslash would
        # need doubling inside a PromQL string.
        .replace("$instance", instance)
        .replace("$target", TARGET)
    )


@pytest.mark.timeout(240)
def test_every_dashboard_query_returns_data(live: tuple[str, str]) -> None:
    """Against a real daemon, each panel query is valid PromQL and draws something."""
    base, instance = live
    empty = []
    for title, expr in queries(load_dashboard()):
        query = substitute(expr, instance)
        if not promql(base, query):
            empty.append(f"{title}: {query}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)

    # The variables' label_values() queries, as Grafana runs them (the series API).
    def label_values(label: str, match: str) -> list[str]:
        response = requests.get(
            f"{base}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10
        )
        values: list[str] = response.json()["data"]
        return values

    assert "tuner" in label_values("job", "tuner_build_info")
    assert instance in label_values("instance", 'tuner_build_info{job="tuner"}')
    assert TARGET in label_values(
        "target", f'tuner_pool_workers{{job="tuner",instance=~"{instance}"}}'
    )
