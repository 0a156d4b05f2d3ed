"""Learned state on real files: it survives restarts, crashes and corruption."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from tuner.errors import StateError
from tuner.state import VERSION, load_state, save_state

log = logging.getLogger("tuner.test.state")


def test_round_trip(tmp_path: Path) -> None:
    """What one process saves, the next one loads, inside a versioned envelope."""
    state_dir = tmp_path / "state"
    save_state(state_dir, "api", {"knee": 24, "cliff": 96, "p50_s": 0.031})
    assert load_state(state_dir, "api", log) == {"knee": 24, "cliff": 96, "p50_s": 0.031}
    doc = json.loads((state_dir / "api.json").read_text())
    assert doc["version"] == VERSION
    assert doc["target"] == "api"
    assert isinstance(doc["saved_at"], float)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


def test_a_later_save_replaces_the_earlier(tmp_path: Path) -> None:
    save_state(tmp_path, "api", {"knee": 24})
    save_state(tmp_path, "api", {"knee": 32})
    assert load_state(tmp_path, "api", log) == {"knee": 32}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.json"]


def test_absent_state_is_a_fresh_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No file (or no directory yet) means None, quietly."""
    assert load_state(tmp_path / "missing", "api", log) is None
    assert load_state(tmp_path, "api", log) is None
    assert caplog.records == []


def test_crash_mid_write_keeps_the_old_state(tmp_path: Path) -> None:
    """A save cut short leaves only a temp file: the old state loads, the next save tidies up."""
    save_state(tmp_path, "api", {"knee": 24})
    stray = tmp_path / ".api.json.k3j2h1.tmp"
    stray.write_text('{"version": 1, "target": "api", "lear')  # the crash hit here
    assert load_state(tmp_path, "api", log) == {"knee": 24}
    save_state(tmp_path, "api", {"knee": 28})
    assert not stray.exists()
    assert load_state(tmp_path, "api", log) == {"knee": 28}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"version": 1, "target": "api", "lear', "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"version": 99, "target": "api", "learned": {}}', "version 99"),
        ('{"version": 1, "target": "web", "learned": {}}', "state of target 'web'"),
        ('{"version": 1, "target": "api", "learned": 3}', "no learned object"),
        (b"\xff\xfe\x00", "unreadable"),
    ],
)
def test_corrupt_state_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes, reason: str
) -> None:
    """A bad file gives one warning and a fresh start, and is kept beside as .corrupt-<stamp>."""
    path = tmp_path / "api.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert load_state(tmp_path, "api", log) is None
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    fields = warning.tuner_fields  # type: ignore[attr-defined]  # set by tuner.log.event
    assert fields["path"] == path
    assert reason in fields["reason"]
    (aside,) = tmp_path.glob("api.json.corrupt-*")
    assert fields["moved_to"] == aside
    assert aside.read_bytes() == (content if isinstance(content, bytes) else content.encode())
    assert not path.exists()
    # The fresh start can save again, and the bad file stays.
    save_state(tmp_path, "api", {"knee": 8})
    assert load_state(tmp_path, "api", log) == {"knee": 8}
    assert aside.exists()


def test_two_corruptions_keep_both_files(tmp_path: Path) -> None:
    """Setting aside never overwrites an earlier bad file, even within the same second."""
    for content in ("first", "second"):
        (tmp_path / "api.json").write_text(content)
        assert load_state(tmp_path, "api", log) is None
    kept = sorted(p.read_text() for p in tmp_path.glob("api.json.corrupt-*"))
    assert kept == ["first", "second"]


def test_save_into_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    """A state_dir that cannot exist is a StateError naming the file and the OS reason."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"file/sub/api\.json: cannot save state: Not a directory"):
        save_state(blocker / "sub", "api", {"knee": 1})


def test_save_into_a_read_only_directory(tmp_path: Path) -> None:
    """A read-only state_dir is a StateError, and the state already there stays."""
    save_state(tmp_path, "api", {"knee": 24})
    tmp_path.chmod(0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        with pytest.raises(StateError, match=r"api\.json: cannot save state: Permission denied"):
            save_state(tmp_path, "api", {"knee": 32})
    finally:
        tmp_path.chmod(0o700)
    assert load_state(tmp_path, "api", log) == {"knee": 24}


def test_data_that_is_not_json_is_a_state_error(tmp_path: Path) -> None:
    """Nothing is written when the data cannot be encoded; the old state stays."""
    save_state(tmp_path, "api", {"knee": 24})
    with pytest.raises(StateError, match="cannot encode"):
        save_state(tmp_path, "api", {"knee": float("nan")})
    assert load_state(tmp_path, "api", log) == {"knee": 24}


def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a target name"):
        save_state(tmp_path, "../etc/passwd", {})


def test_unusable_values_are_set_aside_too(tmp_path: Path) -> None:
    """A state file that parses but holds values the reader rejects is kept aside, not reused."""
    log = logging.getLogger("test")
    save_state(tmp_path, "api", {"knee": "many"})

    def check(data: dict[str, object]) -> None:
        int(str(data["knee"]))

    assert load_state(tmp_path, "api", log, check=check) is None
    assert not (tmp_path / "api.json").exists()
    assert len(list(tmp_path.glob("api.json.corrupt-*"))) == 1
