"""Structured logs to stderr: one event a line, as text (logfmt-like) or JSON.

    setup_logging("text")
    event(log, "pool_resized", target="api", old=16, new=24, reason="ramp")
    # 2026-11-25T12:00:00Z info pool_resized target=api old=16 new=24 reason=ramp

Under journald (systemd sets $JOURNAL_STREAM to the device and inode of the
stderr it hands us) text lines start with a syslog level prefix such as `<6>`
and carry no timestamp: the journal stamps and ranks each line itself.

Secrets never reach the log because only the fields a caller passes are
written: callers pass names, counts and reasons, never a header value or a URL
with credentials in it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
"""The values of `--log-format`."""

# Where event() puts its fields on the LogRecord: one attribute, so no field
# name can clash with the LogRecord's own attributes.
_FIELDS = "tuner_fields"

# Keys every line has: a field may not take their place.
_RESERVED = frozenset({"ts", "level", "event"})

# syslog priorities, as sd-daemon(3) reads them from a "<N>" prefix.
_SYSLOG = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one event: a short snake_case name and its fields, in the order given.

        event(log, "run_finished", target="api", result="completed", duration_s=12.5)

    Pass names, counts and reasons only: never a header value or anything
    else secret. `ts`, `level` and `event` are taken by every line.
    """
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"event {name}: field names reserved for the line itself: {sorted(clash)}")
    log.log(level, name, extra={_FIELDS: fields})


def _level_name(levelno: int) -> str:
    return logging.getLevelName(levelno).lower()


def _stamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _record_event(record: logging.LogRecord) -> tuple[str, dict[str, object]]:
    """The event name and fields of a record; a plain log call (a library's) becomes a `message`."""
    fields: dict[str, object] | None = getattr(record, _FIELDS, None)
    if fields is not None:
        return record.getMessage(), dict(fields)
    return "message", {"logger": record.name, "msg": record.getMessage()}


def _text_value(value: object) -> str:
    """A value as logfmt writes it: bare when it can be, else double-quoted with escapes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)  # quotes and escapes, newlines included: one event a line
    return text


class TextFormatter(logging.Formatter):
    """`2026-11-25T12:00:00Z info pool_resized target=api old=16`; under journald `<6>info ...`."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        """One line (plus a traceback, when the record has one)."""
        name, fields = _record_event(record)
        parts = [_level_name(record.levelno), name]
        parts += [f"{key}={_text_value(value)}" for key, value in fields.items()]
        if self.journald:
            line = f"<{_SYSLOG.get(record.levelno, 6)}>" + " ".join(parts)
        else:
            line = _stamp(record.created) + " " + " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """`{"ts": "2026-11-25T12:00:00Z", "level": "info", "event": "pool_resized", "old": 16}`."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object on one line; a traceback goes in `exc`."""
        name, fields = _record_event(record)
        line: dict[str, Any] = {
            "ts": _stamp(record.created),
            "level": _level_name(record.levelno),
            "event": name,
        }
        line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def under_journald(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd handed us ($JOURNAL_STREAM = dev:ino)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor behind it (a StringIO, a closed file)
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """The handler setup_logging installs: its own class, so a second call can replace it."""


def setup_logging(
    fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send every log record to `stream` (default stderr) as one `fmt` (text|json) line each.

    Calling it again replaces the handler it installed before; handlers others
    installed (a test's log capture) stay.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}: {fmt!r}")
    out = stream if stream is not None else sys.stderr
    handler = _Handler(out)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter(journald=under_journald(out))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs every run at INFO and each skipped run as an unstructured
    # warning; tuner.schedule reports both as its own events. Its errors (a job
    # that raised) still come through.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
