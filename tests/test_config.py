"""The config loader: each bad-config rule with its fixture and exact message, then valid files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from tuner import metrics
from tuner.config import (
    MAX_TIMEOUT_S,
    Schedule,
    Target,
    Workers,
    load_config,
    parse_duration,
)
from tuner.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "config"
EXAMPLE = Path(__file__).parent.parent / "config" / "example.yaml"


def problems(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The problems `tuner check` would print for fixture `name`, loaded from a copy in tmp_path."""
    shutil.copy(FIXTURES / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(name, env={})
    return list(caught.value.problems)


RULES = {
    "unknown_key.yaml": [
        "unknown_key.yaml:5: targets[0].workers.maximum: unknown key: 64",
    ],
    "duplicate_key.yaml": [
        'duplicate_key.yaml:7: targets[0].timeout: duplicate key (first at line 5): "20s"',
    ],
    "wrong_type.yaml": [
        'wrong_type.yaml:5: targets[0].repeat: must be an integer: "20"',
    ],
    "bad_duration.yaml": [
        "bad_duration.yaml:5: targets[0].timeout: must be a duration such as 250ms, 30s, 5m,"
        ' 1h or a number of seconds: "10 sec"',
    ],
    "zero_duration.yaml": [
        'zero_duration.yaml:5: targets[0].timeout: must be longer than 0: "0s"',
    ],
    "timeout_above_top_bucket.yaml": [
        "timeout_above_top_bucket.yaml:5: targets[0].timeout: must be <= 120s"
        ' (the histogram\'s top bucket): "5m"',
    ],
    "connect_timeout_above_timeout.yaml": [
        "connect_timeout_above_timeout.yaml:7: targets[0].connect_timeout:"
        ' must be <= timeout (5s): "10s"',
    ],
    "bad_url.yaml": [
        "bad_url.yaml:6: targets[0].urls[1]: must be an http:// or https:// URL with a host:"
        ' "ftp://127.0.0.1/file"',
        "bad_url.yaml:7: targets[0].urls[2]: must be an http:// or https:// URL with a host:"
        ' "http:///no-host"',
    ],
    "undefined_variable.yaml": [
        "undefined_variable.yaml:5: targets[0].headers.Authorization:"
        " undefined environment variable: CATALOG_TOKEN",
    ],
    "urls_file_missing.yaml": [
        'urls_file_missing.yaml:4: targets[0].urls_file: cannot read (no such file): "catalog.txt"',
    ],
    "urls_file_directory.yaml": [
        'urls_file_directory.yaml:4: targets[0].urls_file: cannot read (is a directory): "."',
    ],
    "duplicate_name.yaml": [
        "duplicate_name.yaml:5: targets[1].name: duplicate target name (first at targets[0]):"
        ' "api"',
    ],
    "workers_min_above_max.yaml": [
        "workers_min_above_max.yaml:7: targets[0].workers.max: must be >= workers.min (4): 2",
    ],
    "workers_min_above_max_in_defaults.yaml": [
        "workers_min_above_max_in_defaults.yaml:5: defaults.workers.max:"
        " must be >= workers.min (8): 4",
    ],
    "workers_min_below_one.yaml": [
        "workers_min_below_one.yaml:5: targets[0].workers.min: must be >= 1: 0",
    ],
    "bad_name.yaml": [
        'bad_name.yaml:3: targets[0].name: must match [a-z0-9_-]+: "My API"',
    ],
    "missing_name.yaml": [
        "missing_name.yaml:3: targets[0].name: missing required key",
    ],
    "urls_and_urls_file.yaml": [
        "urls_and_urls_file.yaml:3: targets[0]: needs exactly one of urls or urls_file, got both",
    ],
    "no_urls.yaml": [
        "no_urls.yaml:3: targets[0]: needs exactly one of urls or urls_file, got neither",
    ],
    "empty_urls.yaml": [
        "empty_urls.yaml:4: targets[0].urls: must not be empty: []",
    ],
    "schedule_both.yaml": [
        "schedule_both.yaml:5: targets[0].schedule: needs exactly one of every or cron, got both",
    ],
    "schedule_neither.yaml": [
        "schedule_neither.yaml:3: defaults.schedule: needs exactly one of every or cron,"
        " got neither",
    ],
    "bad_cron.yaml": [
        "bad_cron.yaml:5: targets[0].schedule.cron: must be a 5-field cron expression"
        ' (Wrong number of fields; got 4, expected 5): "*/5 * * *"',
    ],
    "bad_listen.yaml": [
        "bad_listen.yaml:2: listen: must be HOST:PORT, with an IPv6 host in brackets"
        ' ([::1]:9717): "::1:9717"',
    ],
    "bad_method.yaml": [
        "bad_method.yaml:5: targets[0].method: must be one of 'GET', 'HEAD', 'POST', 'PUT',"
        " 'DELETE', 'OPTIONS' or 'PATCH': \"get\"",
    ],
    "bad_status.yaml": [
        "bad_status.yaml:5: targets[0].success_statuses[2]: must be a status code from 100 to"
        ' 599 or a class such as 2xx: "7xx"',
    ],
    "bad_error_budget.yaml": [
        "bad_error_budget.yaml:5: targets[0].error_budget: must be < 1: 5",
    ],
    "bad_max_body.yaml": [
        "bad_max_body.yaml:5: targets[0].max_body: must be a size such as 512KiB, 10MiB, 1GiB"
        ' or a number of bytes, above 0: "10MB"',
    ],
    "tls_verify_missing.yaml": [
        'tls_verify_missing.yaml:5: targets[0].tls_verify: cannot read (no such file): "ca.pem"',
    ],
    "header_redacted.yaml": [
        "header_redacted.yaml:6: targets[0].headers.X-Api-Key: must be a string: <redacted>",
    ],
    "empty.yaml": [
        "empty.yaml:1: empty config: expected a mapping with a targets list",
    ],
    "not_a_mapping.yaml": [
        'not_a_mapping.yaml:2: must be a mapping: [{"name": "api", "urls":'
        ' ["http://127.0.0.1:8080/"]}]',
    ],
    "yaml_syntax.yaml": [
        "yaml_syntax.yaml:5: invalid YAML: expected ',' or ']', but got ':' (column 11)",
    ],
    "many_problems.yaml": [
        "many_problems.yaml:2: listen: must be HOST:PORT, with an IPv6 host in brackets"
        ' ([::1]:9717): "localhost"',
        'many_problems.yaml:3: state: unknown key: "/tmp/tuner"',
        "many_problems.yaml:7: targets[0].workers.min: must be >= 1: 0",
        'many_problems.yaml:8: targets[1].name: duplicate target name (first at targets[0]): "api"',
        'many_problems.yaml:9: targets[1].urls_file: cannot read (no such file): "missing.txt"',
        "many_problems.yaml:10: targets[1].headers.Authorization:"
        " undefined environment variable: NO_SUCH_TOKEN",
    ],
}


@pytest.mark.parametrize(("fixture", "expected"), RULES.items(), ids=list(RULES))
def test_rule(
    fixture: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad fixture yields exactly its problem lines, sorted by line, all in one pass."""
    assert problems(fixture, tmp_path, monkeypatch) == expected


def test_every_fixture_has_a_rule() -> None:
    """No fixture sits unused: each bad one is in the table, the valid one in its own test."""
    tested = {*RULES, "urls_file_no_permission.yaml", "valid_full.yaml"}
    assert {p.name for p in FIXTURES.iterdir()} == tested


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_urls_file_without_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A urls_file the daemon's user may not read is reported as such."""
    secret = tmp_path / "secret.txt"
    secret.write_text("http://127.0.0.1:8080/\n")
    secret.chmod(0)
    assert problems("urls_file_no_permission.yaml", tmp_path, monkeypatch) == [
        "urls_file_no_permission.yaml:4: targets[0].urls_file: cannot read (permission denied):"
        ' "secret.txt"'
    ]


def test_file_is_named_as_given(tmp_path: Path) -> None:
    """FILE in each problem is the path exactly as the caller wrote it."""
    path = tmp_path / "tuner.yaml"
    shutil.copy(FIXTURES / "bad_name.yaml", path)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), env={})
    assert caught.value.problems == (
        f'{path}:3: targets[0].name: must match [a-z0-9_-]+: "My API"',
    )


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that is not there is one clear problem, not a traceback."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == (f"{path}: cannot read: No such file or directory",)


def test_header_value_never_in_messages(tmp_path: Path) -> None:
    """A secret in a duplicated header shows nowhere in the problem lines."""
    path = tmp_path / "tuner.yaml"
    path.write_text(
        "targets:\n"
        "  - name: api\n"
        "    urls: [http://127.0.0.1:8080/]\n"
        "    headers:\n"
        "      Authorization: Bearer first-s3cret\n"
        "      Authorization: Bearer second-s3cret\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == (
        f"{path}:6: targets[0].headers.Authorization: duplicate key (first at line 5): <redacted>",
    )


def test_connect_timeout_against_a_target_timeout(tmp_path: Path) -> None:
    """A target's own timeout under its inherited connect_timeout is the line blamed."""
    path = tmp_path / "tuner.yaml"
    path.write_text(
        "defaults: {connect_timeout: 3s}\n"
        "targets:\n"
        "  - {name: a, urls: [http://127.0.0.1:8080/], timeout: 2s}\n"
        "  - {name: b, urls: [http://127.0.0.1:8080/], timeout: 2s, connect_timeout: null}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == (
        f'{path}:3: targets[0].timeout: must be >= connect_timeout (3s): "2s"',
    )


def test_timeout_limits_are_inclusive(tmp_path: Path) -> None:
    """A timeout of exactly 120s, and a connect_timeout equal to the timeout, are valid."""
    path = tmp_path / "tuner.yaml"
    path.write_text(
        "targets:\n"
        "  - {name: a, urls: [http://127.0.0.1:8080/], timeout: 2m, connect_timeout: 120}\n"
        "  - {name: b, urls: [http://127.0.0.1:8080/], connect_timeout: 10s}\n"
    )
    config = load_config(path, env={})
    assert (config.target("a").timeout_s, config.target("a").connect_timeout_s) == (120.0, 120.0)
    assert config.target("b").connect_timeout_s == config.target("b").timeout_s == 10.0


def test_timeout_limit_is_the_histograms_top_bucket() -> None:
    """The longest timeout a config allows is the top finite duration bucket, and no other."""
    assert MAX_TIMEOUT_S == metrics.MAX_TIMEOUT_S == metrics.DURATION_BUCKETS[-1]


def test_check_does_not_load_prometheus_client() -> None:
    """`tuner check` imports the config loader without prometheus_client (why MAX_TIMEOUT_S is
    written out in config.py rather than imported from metrics.py)."""
    code = "import sys, tuner.cli, tuner.config; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def write_valid_full(tmp_path: Path) -> Path:
    """The full valid fixture next to the urls file it names."""
    (tmp_path / "catalog.txt").write_text(
        "# catalog\n\nhttp://127.0.0.1:8080/1\n  http://127.0.0.1:8080/2  \n"
    )
    return Path(shutil.copy(FIXTURES / "valid_full.yaml", tmp_path / "tuner.yaml"))


def test_valid_full_config(tmp_path: Path) -> None:
    """Every key reaches its field; a target's own value wins over defaults."""
    config = load_config(
        write_valid_full(tmp_path), env={"API_TOKEN": "t0k", "CATALOG_TOKEN": "c4t"}
    )
    assert config.listen == "[::1]:9800"
    assert config.state_dir == tmp_path / "state"
    assert config.shutdown_grace_s == 45.0
    api, catalog = config.targets
    assert api == Target(
        name="api",
        urls=("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b?token=t0k"),
        repeat=3,
        schedule=Schedule(every_s=60.0),
        timeout_s=5.0,
        connect_timeout_s=0.25,
        workers=Workers(min=2, max=16),
        headers=(("User-Agent", "tuner-test"),),
        method="HEAD",
        success_statuses=frozenset(range(200, 300)) | {304},
        error_budget=0.05,
        latency_budget_s=1.5,
        max_body_bytes=512 * 1024,
        tls_verify=False,
    )
    assert catalog.urls_file == tmp_path / "catalog.txt"
    assert catalog.schedule == Schedule(cron="*/5 * * * *")
    assert catalog.workers == Workers(min=2, max=128)
    # headers are replaced whole, not merged: only workers merges key by key
    assert catalog.headers == (("Authorization", "Bearer c4t"),)
    assert catalog.tls_verify == str(tmp_path / "catalog.txt")


def test_builtin_defaults(tmp_path: Path) -> None:
    """A target with only a name and URLs gets the documented defaults."""
    path = tmp_path / "tuner.yaml"
    path.write_text("targets:\n  - name: api\n    urls: [http://127.0.0.1:8080/]\n")
    config = load_config(path, env={})
    assert (config.listen, config.state_dir, config.shutdown_grace_s) == (
        "127.0.0.1:9717",
        Path("/var/lib/tuner"),
        30.0,
    )
    target = config.target("api")
    assert target == Target(name="api", urls=("http://127.0.0.1:8080/",))
    assert target.schedule.describe() == "every 300s"
    assert target.timeout_s == 10.0
    assert target.workers == Workers(min=1, max=256)
    assert target.success_statuses == frozenset(range(200, 400))
    assert target.max_body_bytes == 10 * 1024 * 1024
    assert (target.method, target.error_budget, target.tls_verify) == ("GET", 0.01, True)


def test_null_drops_an_inherited_budget(tmp_path: Path) -> None:
    """`latency_budget: null` in a target removes the budget its defaults set."""
    path = tmp_path / "tuner.yaml"
    path.write_text(
        "defaults: {latency_budget: 2s}\n"
        "targets:\n"
        "  - {name: a, urls: [http://127.0.0.1:8080/]}\n"
        "  - {name: b, urls: [http://127.0.0.1:8080/], latency_budget: null}\n"
    )
    config = load_config(path, env={})
    assert config.target("a").latency_budget_s == 2.0
    assert config.target("b").latency_budget_s is None


def test_escaped_variable_stays_literal(tmp_path: Path) -> None:
    """`$${NAME}` is a literal `${NAME}`, not a lookup."""
    path = tmp_path / "tuner.yaml"
    path.write_text("targets:\n  - name: api\n    urls: ['http://127.0.0.1:8080/$${PAGE}']\n")
    assert load_config(path, env={}).target("api").urls == ("http://127.0.0.1:8080/${PAGE}",)


def test_env_defaults_to_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `env`, variables come from os.environ."""
    monkeypatch.setenv("TUNER_TEST_PORT", "8081")
    path = tmp_path / "tuner.yaml"
    path.write_text("targets:\n  - name: api\n    urls: ['http://127.0.0.1:${TUNER_TEST_PORT}/']\n")
    assert load_config(path).target("api").urls == ("http://127.0.0.1:8081/",)


def test_target_lookup_and_digest(tmp_path: Path) -> None:
    """`target()` raises KeyError for an unknown name; the digest changes with the bytes."""
    path = tmp_path / "tuner.yaml"
    path.write_text("targets:\n  - name: api\n    urls: [http://127.0.0.1:8080/]\n")
    first = load_config(path, env={})
    with pytest.raises(KeyError):
        first.target("web")
    assert load_config(path, env={}).digest == first.digest
    path.write_text(path.read_text() + "# a comment changes the file\n")
    assert load_config(path, env={}).digest != first.digest
    assert len(first.digest) == 64


def test_iter_urls_repeats_passes_and_skips_comments(tmp_path: Path) -> None:
    """A urls_file is read pass after pass, without blank lines or comments, stripped."""
    config = load_config(
        write_valid_full(tmp_path), env={"API_TOKEN": "t0k", "CATALOG_TOKEN": "c4t"}
    )
    catalog = config.target("catalog")
    assert list(catalog.iter_urls()) == ["http://127.0.0.1:8080/1", "http://127.0.0.1:8080/2"]
    assert catalog.url_count() is None
    api = config.target("api")
    one_pass = ["http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b?token=t0k"]
    assert list(api.iter_urls()) == one_pass * 3
    assert api.url_count() == 6


def test_iter_urls_rereads_the_file_each_pass(tmp_path: Path) -> None:
    """An edit to the urls file shows from the next pass on."""
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:8080/old\n")
    passes = Target(name="api", urls_file=urls, repeat=2).iter_urls()
    assert next(passes) == "http://127.0.0.1:8080/old"
    urls.write_text("http://127.0.0.1:8080/new\n")
    assert list(passes) == ["http://127.0.0.1:8080/new"]


def test_iter_urls_streams_a_million_lines(tmp_path: Path) -> None:
    """A 1,000,000-line urls file is walked in bounded memory, not loaded whole."""
    urls = tmp_path / "urls.txt"
    with urls.open("w") as out:
        out.writelines(f"http://127.0.0.1:8080/item/{i}\n" for i in range(1_000_000))
    tracemalloc.start()
    try:
        count = sum(1 for _ in Target(name="big", urls_file=urls).iter_urls())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1_000_000
    assert peak < 1024 * 1024  # the file is ~35 MB


def test_headers_stay_out_of_repr(tmp_path: Path) -> None:
    """A header value never reaches a log line through repr()."""
    env = {"API_TOKEN": "t0k", "CATALOG_TOKEN": "c4t-s3cret"}
    config = load_config(write_valid_full(tmp_path), env=env)
    assert "c4t-s3cret" not in repr(config)
    assert config.target("catalog").headers == (("Authorization", "Bearer c4t-s3cret"),)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        (" 1.5s ", 1.5),
        (7, 7.0),
        (0.5, 0.5),
        ("12", 12.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    """Units ms, s, m, h, or plain seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10 sec", "1d", "-5s", -1, True, "", "1m30s", float("inf")])
def test_parse_duration_rejects(bad: str | int | float) -> None:
    """Anything else is a ValueError that quotes the value."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_schedule_has_exactly_one_trigger() -> None:
    """A bare Schedule runs every 5 minutes; describe() reads well; both at once is refused."""
    assert Schedule() == Schedule(every_s=300.0)
    assert Schedule(every_s=0.25).describe() == "every 0.25s"
    assert Schedule(cron="*/5 * * * *").describe() == "cron */5 * * * *"
    with pytest.raises(ValueError):
        Schedule(every_s=60.0, cron="* * * * *")


def test_example_config_is_valid() -> None:
    """config/example.yaml, the documented example, passes the checks as shipped."""
    config = load_config(EXAMPLE, env={})
    assert config.targets
