"""Log lines as a person, jq and journald read them."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.log import event, setup_logging

log = logging.getLogger("tuner.test")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    aps_level = logging.getLogger("apscheduler").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(aps_level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_is_one_event_a_line() -> None:
    """The SPEC example line: stamp, level, event, then the fields in order."""
    out = io.StringIO()
    setup_logging("text", stream=out)
    event(log, "pool_resized", target="api", old=16, new=24, reason="ramp")
    (line,) = lines(out)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ info pool_resized target=api old=16 new=24 reason=ramp",
        line,
    )


def test_text_quotes_values_that_need_it() -> None:
    """Spaces, quotes and newlines are quoted and escaped, so one event stays one line."""
    out = io.StringIO()
    setup_logging("text", stream=out)
    event(log, "run_failed", logging.ERROR, target="api", error='bad "thing"\nhappened', ok=False)
    (line,) = lines(out)
    assert line.endswith(r' error run_failed target=api error="bad \"thing\"\nhappened" ok=false')


def test_json_lines_parse() -> None:
    """Each line is a JSON object with ts, level, event and the fields."""
    out = io.StringIO()
    setup_logging("json", stream=out)
    event(log, "pool_resized", target="api", old=16, new=24, reason="ramp")
    event(log, "state_corrupt", logging.WARNING, path=Path("/x/api.json"))
    first, second = (json.loads(line) for line in lines(out))
    assert first == {
        "ts": first["ts"],
        "level": "info",
        "event": "pool_resized",
        "target": "api",
        "old": 16,
        "new": 24,
        "reason": "ramp",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["ts"])
    assert second["level"] == "warning"
    assert second["path"] == "/x/api.json"


def test_plain_records_and_tracebacks_stay_structured() -> None:
    """A library's plain log call and a traceback still come out as one JSON object each."""
    out = io.StringIO()
    setup_logging("json", stream=out)
    logging.getLogger("somelib").warning("disk %s is full", "sda")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("job failed")
    plain, failed = (json.loads(line) for line in lines(out))
    assert plain["event"] == "message"
    assert plain["logger"] == "somelib"
    assert plain["msg"] == "disk sda is full"
    assert "RuntimeError: boom" in failed["exc"]


def test_level_filters_and_setup_replaces_itself() -> None:
    """Below the level nothing is written; a second setup does not double every line."""
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", level=logging.WARNING, stream=first)
    setup_logging("text", level=logging.WARNING, stream=second)
    event(log, "noise", target="api")
    event(log, "run_skipped", logging.WARNING, target="api")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_reserved_field_names_are_refused() -> None:
    """A field may not pose as the line's own ts, level or event."""
    with pytest.raises(ValueError, match="reserved"):
        event(log, "x", ts=1)


def test_unknown_format_is_refused() -> None:
    """A typo in --log-format is an error that lists the choices."""
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("yaml")


def test_journald_gets_level_prefixes_and_no_stamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When stderr is the journal's stream, lines read `<N>level event ...` without a stamp."""
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("text", level=logging.DEBUG, stream=journal)
        event(log, "pool_resized", target="api", old=16, new=24)
        event(log, "run_skipped", logging.WARNING, target="api")
        event(log, "run_failed", logging.ERROR, target="api")
        event(log, "window", logging.DEBUG, target="api")
        journal.flush()
    assert (tmp_path / "journal").read_text().splitlines() == [
        "<6>info pool_resized target=api old=16 new=24",
        "<4>warning run_skipped target=api",
        "<3>error run_failed target=api",
        "<7>debug window target=api",
    ]


def test_another_journal_stream_is_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$JOURNAL_STREAM naming some other file (inherited by a child) leaves stamps on."""
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    with open(tmp_path / "stderr", "w") as stream:
        setup_logging("text", stream=stream)
        event(log, "started")
    assert re.fullmatch(r"\S+Z info started\n", (tmp_path / "stderr").read_text())
