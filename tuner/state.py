"""What the tuner learned, kept across restarts: one JSON file per target.

    save_state(state_dir, "api", {"knee": 24, "cliff": 96})
    learned = load_state(state_dir, "api", log)   # {"knee": 24, "cliff": 96}, or None

`<state_dir>/<target>.json` holds
`{"version": 1, "target": "api", "saved_at": <Unix time>, "learned": {...}}`.
A save replaces the file atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the old state or the new one, never half
of one. A file that cannot be read is moved aside, never deleted, and the
target starts fresh: lost learning costs a ramp, not an outage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuner.errors import StateError
from tuner.log import event

VERSION = 1
"""The layout of a state file; a file of another version is set aside, not guessed at."""

# Target names as config allows them; anything else could escape state_dir.
_NAME = re.compile(r"[a-z0-9_-]+")


def state_path(state_dir: Path, target: str) -> Path:
    """The state file of a target. ValueError for a name config would never accept."""
    if not _NAME.fullmatch(target):
        raise ValueError(f"not a target name: {target!r}")
    return state_dir / f"{target}.json"


def _temp_prefix(target: str) -> str:
    """Temp files of a save: hidden, and never named like a state file."""
    return f".{target}.json."


def save_state(state_dir: Path, target: str, data: Mapping[str, Any]) -> None:
    """Write what a target learned, atomically; creates `state_dir` (mode 0700) when missing.

    Raises StateError naming the path and the reason when the data is not
    JSON or the file cannot be written. Saves of one target must not run
    concurrently (its runs never overlap): each save first removes the temp
    files that a crashed save left behind.
    """
    path = state_path(state_dir, target)
    doc = {"version": VERSION, "target": target, "saved_at": time.time(), "learned": dict(data)}
    try:
        text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise StateError(f"{path}: cannot encode state as JSON: {err}") from err
    tmp: str | None = None
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale_temps(state_dir, target)
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=_temp_prefix(target), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise StateError(f"{path}: cannot save state: {err.strerror or err}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load_state(
    state_dir: Path,
    target: str,
    log: logging.Logger,
    check: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any] | None:
    """What a target learned before, or None when nothing (usable) was saved. Never raises.

    A file that cannot be read, is not a state file of this version and
    target, or whose data `check` rejects (by raising ValueError or
    TypeError) is logged (one warning), moved aside to `<name>.corrupt-<UTC
    stamp>` and kept; the target then starts fresh.
    """
    path = state_path(state_dir, target)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        problem = f"unreadable: {(err.strerror if isinstance(err, OSError) else None) or err}"
    else:
        parsed = _parse(text, target)
        if isinstance(parsed, dict):
            try:
                if check is not None:
                    check(parsed)
            except (TypeError, ValueError) as err:
                parsed = f"unusable values: {err}"
            else:
                return parsed
        problem = parsed
    _set_aside(path, problem, log)
    return None


def _parse(text: str, target: str) -> dict[str, Any] | str:
    """The learned data of a state file's text, or why it is not a usable state file of `target`."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        return f"not JSON: {err}"
    if not isinstance(doc, dict):
        return f"not a JSON object but {type(doc).__name__}"
    if doc.get("version") != VERSION:
        return f"version {doc.get('version')!r}, expected {VERSION}"
    if doc.get("target") != target:
        return f"state of target {doc.get('target')!r}, expected {target!r}"
    learned = doc.get("learned")
    if not isinstance(learned, dict):
        return "no learned object"
    return learned


def _set_aside(path: Path, reason: str, log: logging.Logger) -> None:
    """Move a bad state file out of the way (never delete it) and say so in one warning."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():  # two bad files in one second: keep both
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        os.replace(path, aside)
    except OSError as err:
        event(log, "state_unusable", logging.WARNING, path=path, reason=reason,
              moved_to=None, move_error=err.strerror or str(err))  # fmt: skip
    else:
        event(log, "state_unusable", logging.WARNING, path=path, reason=reason, moved_to=aside)


def _remove_stale_temps(state_dir: Path, target: str) -> None:
    """Delete the temp files of saves that a crash interrupted: they never held the state."""
    for stale in state_dir.glob(_temp_prefix(target) + "*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or the save below will say why
            stale.unlink()
