"""The config file: YAML in, frozen and validated objects out, every mistake reported in one pass.

    config = load_config("/etc/tuner/tuner.yaml")
    for target in config.targets:
        print(target.name, target.schedule.describe(), target.workers.max)

Loading runs in five steps, and each rule lives in exactly one of them:

1. YAML (`_Loader`): syntax errors, duplicate keys, and the line of every key.
2. `${VAR}` (`_substitute`): every string value is filled in from the
   environment; an undefined variable is an error that names it.
3. Each value by itself (the pydantic models `_ConfigIn`, `_TargetKeys`,
   `_TargetIn`): unknown keys, types, durations, sizes, URLs, cron, listen
   address, name pattern, ranges (`timeout <= MAX_TIMEOUT_S` among them).
4. Values against each other and the world (`_relations`): exactly one of
   `urls`/`urls_file` and of `every`/`cron`, `workers.min <= workers.max` and
   `connect_timeout <= timeout` after `defaults:` merged in, unique target
   names, readable files.
5. Build (`_build`): `defaults:` merged under each target into the frozen
   dataclasses below, so the rest of tuner never sees pydantic.

Every problem reads `FILE:LINE: path.to.key: rule: value`, sorted by line. A
value under `headers` is never printed (`<redacted>`): headers carry secrets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from tuner.errors import ConfigError
from tuner.schedule import check_cron

MiB = 1024 * 1024

MAX_TIMEOUT_S = 120.0
"""The longest request timeout a config may set, in seconds.

tuner/metrics.py's `DURATION_BUCKETS` (of `tuner_request_duration_seconds`) end
here: a longer timeout would let slow requests fall past every finite bucket.
Written out rather than imported, so that `tuner check` never loads
prometheus_client; a test holds the two equal.
"""

# --- the objects the rest of tuner uses ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workers:
    """Bounds of a target's pool: the tuner never goes below `min` or above `max`."""

    min: int = 1
    max: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ValueError(f"workers need 1 <= min <= max, got min={self.min} max={self.max}")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a target runs: every `every_s` seconds, or on a 5-field `cron` expression (UTC).

    Exactly one is set; `Schedule()` is every 5 minutes.
    """

    every_s: float | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if self.every_s is not None and self.cron is not None:
            raise ValueError("a schedule has either every_s or cron, not both")
        if self.every_s is None and self.cron is None:
            # frozen: set the default the way dataclasses themselves do
            object.__setattr__(self, "every_s", 300.0)

    def describe(self) -> str:
        """A short human form: `every 300s` or `cron */5 * * * *`."""
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {self.every_s:g}s"


@dataclass(frozen=True, slots=True)
class Target:
    """A named set of URLs, how often to fetch it, and the limits the tuner must respect.

    Every field but `name` has the built-in default a config file falls back to.
    `headers` is left out of `repr` because its values may hold secrets.
    """

    name: str
    urls: tuple[str, ...] = ()
    urls_file: Path | None = None
    repeat: int = 1
    schedule: Schedule = field(default_factory=Schedule)
    timeout_s: float = 10.0
    connect_timeout_s: float | None = None
    workers: Workers = field(default_factory=Workers)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    method: str = "GET"
    # out of repr: two hundred numbers would drown the rest
    success_statuses: frozenset[int] = field(default=frozenset(range(200, 400)), repr=False)
    error_budget: float = 0.01
    latency_budget_s: float | None = None
    max_body_bytes: int = 10 * MiB
    tls_verify: bool | str = True

    def iter_urls(self) -> Iterator[str]:
        """Each URL of one run: `repeat` passes over `urls`, or over the lines of `urls_file`.

        Streamed: the file is read lazily and reopened for each pass, so a file of
        a million lines costs one line of memory, and an edit shows up on the next pass.
        """
        for _ in range(self.repeat):
            if self.urls_file is None:
                yield from self.urls
            else:
                yield from _read_url_lines(self.urls_file)

    def url_count(self) -> int | None:
        """Requests in one run (`urls` × `repeat`), or None for a `urls_file` (unknown unread)."""
        if self.urls_file is not None:
            return None
        return len(self.urls) * self.repeat


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config file, validated. `digest` (sha256 of the file's bytes) tells edits apart."""

    path: Path
    listen: str
    state_dir: Path
    shutdown_grace_s: float
    targets: tuple[Target, ...]
    digest: str

    def target(self, name: str) -> Target:
        """The target called `name`; KeyError if there is none."""
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)


def _read_url_lines(path: Path) -> Iterator[str]:
    """The URLs of a urls file, one a line; blank lines and `#` comment lines skipped."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            url = line.strip()
            if url and not url.startswith("#"):
                yield url


# --- values with units -----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", re.ASCII)
_SECONDS_PER = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB)?", re.ASCII)
_BYTES_PER = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, None: 1}


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, or a number of seconds.

        parse_duration("5m")    # 300.0
        parse_duration(1.5)     # 1.5

    ValueError for anything else, negative and non-finite numbers included.
    """
    seconds: float | None = None
    # bool is an int to Python, but `timeout: true` is a mistake, not one second
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _SECONDS_PER[match[2]]
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"not a duration: {value!r} (use 250ms, 30s, 5m, 1h or a number of seconds >= 0)"
        )
    return seconds


# --- step 3: each value by itself (pydantic) -------------------------------------------------
# The validators raise ValueError with the rule alone; the problem line adds place and value.

_DURATION_RULE = "must be a duration such as 250ms, 30s, 5m, 1h or a number of seconds"
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", re.ASCII)
_NAME_PATTERN = r"^[a-z0-9_-]+$"


def _duration(value: object) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError(_DURATION_RULE)
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(_DURATION_RULE) from None


def _positive_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds == 0:
        raise ValueError("must be longer than 0")
    return seconds


def _timeout(value: object) -> float:
    seconds = _positive_duration(value)
    if seconds > MAX_TIMEOUT_S:
        raise ValueError(f"must be <= {MAX_TIMEOUT_S:g}s (the histogram's top bucket)")
    return seconds


def _optional_duration(value: object) -> float | None:
    # null is a value here: it lets a target drop a budget or timeout its defaults set
    return None if value is None else _positive_duration(value)


def _size(value: object) -> int:
    rule = "must be a size such as 512KiB, 10MiB, 1GiB or a number of bytes, above 0"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match[1]) * _BYTES_PER[match[2]]
    else:
        raise ValueError(rule)
    if size <= 0:
        raise ValueError(rule)
    return size


def _statuses(value: object) -> frozenset[int]:
    """One item of `success_statuses`: a code such as 204, or a class such as "2xx"."""
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return frozenset({value})
    if isinstance(value, str) and re.fullmatch(r"[1-5]xx", value):
        first = int(value[0]) * 100
        return frozenset(range(first, first + 100))
    raise ValueError("must be a status code from 100 to 599 or a class such as 2xx")


def _tls_verify(value: object) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise ValueError("must be true, false or the path of a CA bundle file")


def _cron(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a 5-field cron expression in quotes")
    why = check_cron(value)
    if why is not None:
        raise ValueError(f"must be a 5-field cron expression ({why})")
    return value


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- reading it is the check: a bad port raises ValueError
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
    ):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _listen(value: str) -> str:
    match = _LISTEN.fullmatch(value)
    ok = match is not None and int(match[2]) <= 65535
    if ok and match is not None and match[1].startswith("["):
        try:
            ipaddress.IPv6Address(match[1][1:-1])
        except ValueError:
            ok = False
    if not ok:
        raise ValueError("must be HOST:PORT, with an IPv6 host in brackets ([::1]:9717)")
    return value


Duration = Annotated[float, PlainValidator(_duration)]
PositiveDuration = Annotated[float, PlainValidator(_positive_duration)]
Timeout = Annotated[float, PlainValidator(_timeout)]
OptionalDuration = Annotated[float | None, PlainValidator(_optional_duration)]

# The default of every key a target or `defaults:` may leave out. Typed Any so that a
# field can be optional without accepting `null`: pydantic does not validate defaults,
# and only the keys a file gives are ever read (`model_dump(exclude_unset=True)`); the
# built-in defaults live on `Target`, in one place.
_NOT_GIVEN: Any = None


class _Strict(BaseModel):
    """No unknown keys, no coercion (`"8"` is not an int), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _WorkersIn(_Strict):
    min: int = Field(_NOT_GIVEN, ge=1)
    max: int = Field(_NOT_GIVEN, ge=1)


class _ScheduleIn(_Strict):
    every_s: PositiveDuration = Field(_NOT_GIVEN, alias="every")
    cron: Annotated[str, PlainValidator(_cron)] = _NOT_GIVEN


class _TargetKeys(_Strict):
    """The keys a target and `defaults:` share. Aliases are the YAML names."""

    repeat: int = Field(_NOT_GIVEN, ge=1)
    schedule: _ScheduleIn = _NOT_GIVEN
    timeout_s: Timeout = Field(_NOT_GIVEN, alias="timeout")
    connect_timeout_s: OptionalDuration = Field(_NOT_GIVEN, alias="connect_timeout")
    workers: _WorkersIn = _NOT_GIVEN
    headers: dict[str, str] = _NOT_GIVEN
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"] = _NOT_GIVEN
    success_statuses: list[Annotated[frozenset[int], PlainValidator(_statuses)]] = Field(
        _NOT_GIVEN, min_length=1
    )
    error_budget: float = Field(_NOT_GIVEN, gt=0, lt=1)
    latency_budget_s: OptionalDuration = Field(_NOT_GIVEN, alias="latency_budget")
    max_body_bytes: Annotated[int, PlainValidator(_size)] = Field(_NOT_GIVEN, alias="max_body")
    tls_verify: Annotated[bool | str, PlainValidator(_tls_verify)] = _NOT_GIVEN


class _TargetIn(_TargetKeys):
    """One entry of `targets:`: the shared keys plus what only a target may have."""

    name: str = Field(pattern=_NAME_PATTERN)
    urls: list[Annotated[str, AfterValidator(_url)]] = Field(_NOT_GIVEN, min_length=1)
    urls_file: str = _NOT_GIVEN


class _ConfigIn(_Strict):
    """The whole file. Top-level keys have their defaults here: they have no `defaults:`."""

    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:9717"
    state_dir: str = "/var/lib/tuner"
    shutdown_grace_s: Duration = Field(30.0, alias="shutdown_grace")
    defaults: _TargetKeys = _TargetKeys.model_validate({})  # frozen: safe to share
    targets: list[_TargetIn]


# pydantic error type -> our rule; `{name}` is filled from the error's context
_PYDANTIC_RULES = {
    "extra_forbidden": "unknown key",
    "missing": "missing required key",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "too_short": "must not be empty",
    "greater_than_equal": "must be >= {ge:g}",
    "greater_than": "must be > {gt:g}",
    "less_than": "must be < {lt:g}",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match [a-z0-9_-]+",
}


# --- problems --------------------------------------------------------------------------------

Loc = tuple[str | int, ...]
_NO_VALUE = object()


@dataclass(frozen=True, slots=True)
class _Problem:
    line: int
    loc: Loc
    rule: str
    value: object = _NO_VALUE

    def render(self, file: str) -> str:
        """`FILE:LINE: path.to.key: rule: value`; no path for the file as a whole."""
        parts = [f"{file}:{self.line}"]
        if self.loc:
            parts.append(_dotted(self.loc))
        parts.append(self.rule)
        # a mapping as the value says nothing the path and rule don't; headers hold secrets
        if self.value is not _NO_VALUE and not isinstance(self.value, dict):
            parts.append("<redacted>" if "headers" in self.loc else _show(self.value))
        return ": ".join(parts)


def _dotted(loc: Loc) -> str:
    """`("targets", 1, "workers", "max")` -> `targets[1].workers.max`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _show(value: object) -> str:
    """A YAML value as one short line: strings quoted so blanks and empties show."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


# --- step 1: YAML with lines and duplicate keys ----------------------------------------------


class _Loader(yaml.SafeLoader):
    """A SafeLoader that records the line of every key and list item, and repeated keys.

    PyYAML keeps the last of two equal keys without a word; a config must not, so
    this walks the node tree itself instead of calling `construct_document`.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[Loc, int] = {}
        self.problems: list[_Problem] = []

    def document(self) -> object:
        """The single document as plain Python values; None for an empty file."""
        node = self.get_single_node()
        if node is None:
            return None
        self.lines[()] = node.start_mark.line + 1
        return self._value(node, ())

    def _value(self, node: yaml.Node, loc: Loc) -> object:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                items.append(self._value(item, (*loc, index)))
            return items
        return self.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, object]:
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(_Problem(line, loc, "keys must be plain strings"))
                continue
            # the key as written: `on:` or `1:` stay names, not a bool or an int
            key: str = key_node.value
            if key in mapping:
                value = value_node.value if isinstance(value_node, yaml.ScalarNode) else _NO_VALUE
                first = self.lines[(*loc, key)]
                self.problems.append(
                    _Problem(line, (*loc, key), f"duplicate key (first at line {first})", value)
                )
                continue
            self.lines[(*loc, key)] = line
            mapping[key] = self._value(value_node, (*loc, key))
        return mapping


# --- step 2: ${VAR} --------------------------------------------------------------------------

# `${NAME}` is replaced; `$${NAME}` is the escape for a literal `${NAME}`
_VARIABLE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(
    value: object, loc: Loc, env: Mapping[str, str], undefined: list[tuple[Loc, str]]
) -> object:
    """`value` with `${VAR}` filled in in every string; each undefined name goes to `undefined`."""
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), env, undefined) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env, undefined) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped:
            return "${" + name + "}"
        if name not in env:
            undefined.append((loc, name))
            return match[0]
        return env[name]

    return _VARIABLE.sub(replace, value)


# --- step 4: values against each other and the world -----------------------------------------

_Finding = tuple[Loc, str, object]  # (where, rule, offending value or _NO_VALUE)
_BUILTIN_WORKERS = Workers()
_BUILTIN_TIMEOUT_S = Target(name="").timeout_s


def _relations(doc: dict[str, object], base: Path) -> Iterator[_Finding]:
    """The rules that need more than one value, or the file system, to decide.

    They run on the raw document, whatever pydantic thought of it, so that one
    pass finds every mistake; each looks only at values of the right type.
    """
    defaults = _mapping_or_empty(doc.get("defaults"))
    targets = doc.get("targets")
    if not isinstance(targets, list):
        targets = []

    yield from _one_schedule(defaults, ("defaults",))
    yield from _readable_key(defaults, ("defaults",), "tls_verify", base)
    first_index: dict[str, int] = {}
    for index, target in enumerate(targets):
        if not isinstance(target, dict):
            continue  # pydantic has said so
        loc: Loc = ("targets", index)
        yield from _exactly_one(target, loc, "urls", "urls_file")
        yield from _readable_key(target, loc, "urls_file", base)
        yield from _readable_key(target, loc, "tls_verify", base)
        yield from _one_schedule(target, loc)
        yield from _workers_in_order(defaults, target, loc)
        yield from _connect_within_timeout(defaults, target, loc)
        name = target.get("name")
        if isinstance(name, str):
            if name in first_index:
                rule = f"duplicate target name (first at targets[{first_index[name]}])"
                yield (*loc, "name"), rule, name
            first_index.setdefault(name, index)


def _mapping_or_empty(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _exactly_one(mapping: dict[str, object], loc: Loc, one: str, other: str) -> Iterator[_Finding]:
    given = [key for key in (one, other) if key in mapping]
    if len(given) != 1:
        got = "both" if given else "neither"
        yield loc, f"needs exactly one of {one} or {other}, got {got}", _NO_VALUE


def _one_schedule(keys: dict[str, object], loc: Loc) -> Iterator[_Finding]:
    # a schedule replaces the default one whole, so each is checked where it is written
    schedule = keys.get("schedule")
    if isinstance(schedule, dict):
        yield from _exactly_one(schedule, (*loc, "schedule"), "every", "cron")


def _readable_key(keys: dict[str, object], loc: Loc, key: str, base: Path) -> Iterator[_Finding]:
    value = keys.get(key)
    if isinstance(value, str) and value:
        why = _unreadable(base / value)
        if why is not None:
            yield (*loc, key), f"cannot read ({why})", value


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be opened as a file for reading, or None when it can."""
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory"
    except PermissionError:
        return "permission denied"
    except OSError as err:
        return err.strerror or type(err).__name__


def _workers_in_order(
    defaults: dict[str, object], target: dict[str, object], loc: Loc
) -> Iterator[_Finding]:
    """`workers.min <= workers.max` once `defaults:` is merged in, key by key.

    The problem points at a bound the target itself sets when there is one, else
    at the defaults (reported once, however many targets inherit it).
    """
    given: dict[str, tuple[Loc, int]] = {}
    for where, keys in ((("defaults",), defaults), (loc, target)):
        workers = _mapping_or_empty(keys.get("workers"))
        for bound in ("min", "max"):
            value = workers.get(bound)
            if isinstance(value, int) and not isinstance(value, bool):
                given[bound] = ((*where, "workers", bound), value)
    min_loc, low = given.get("min", ((), _BUILTIN_WORKERS.min))
    max_loc, high = given.get("max", ((), _BUILTIN_WORKERS.max))
    if low <= high:
        return
    if max_loc and (max_loc[0] == "targets" or min_loc[:1] != ("targets",)):
        yield max_loc, f"must be >= workers.min ({low})", high
    else:
        yield min_loc, f"must be <= workers.max ({high})", low


def _connect_within_timeout(
    defaults: dict[str, object], target: dict[str, object], loc: Loc
) -> Iterator[_Finding]:
    """`connect_timeout <= timeout` once `defaults:` is merged in: connecting is part of a request.

    The problem points at `connect_timeout` unless only `timeout` is the
    target's own. A value that is null or no duration is skipped: null drops
    the connect timeout, and step 3 reports a bad one.
    """
    given: dict[str, tuple[Loc, object]] = {}
    for where, keys in ((("defaults",), defaults), (loc, target)):
        for key in ("timeout", "connect_timeout"):
            if key in keys:
                given[key] = ((*where, key), keys[key])
    if "connect_timeout" not in given:
        return
    connect_loc, connect_value = given["connect_timeout"]
    timeout_loc, timeout_value = given.get("timeout", ((), _BUILTIN_TIMEOUT_S))
    connect, timeout = _seconds_or_none(connect_value), _seconds_or_none(timeout_value)
    if connect is None or timeout is None or connect <= timeout:
        return
    if connect_loc[0] == "targets" or timeout_loc[:1] != ("targets",):
        yield connect_loc, f"must be <= timeout ({timeout:g}s)", connect_value
    else:
        yield timeout_loc, f"must be >= connect_timeout ({connect:g}s)", timeout_value


def _seconds_or_none(value: object) -> float | None:
    try:
        return _positive_duration(value)
    except ValueError:
        return None


def _from_pydantic(error: Any) -> _Finding:
    """One pydantic error as a finding, in our words."""
    kind = error["type"]
    if kind == "value_error":  # our own validators: the message is the rule
        rule = str(error["ctx"]["error"])
    elif kind in _PYDANTIC_RULES:
        rule = _PYDANTIC_RULES[kind].format(**error.get("ctx", {}))
    else:  # a check we have no words for yet: pydantic's own are clear enough
        rule = error["msg"]
    value = _NO_VALUE if kind == "missing" else error["input"]
    return tuple(error["loc"]), rule, value


# --- step 5: build ---------------------------------------------------------------------------

# validated value -> Target field, for the fields whose YAML shape differs from the field's
_FINISH: dict[str, Callable[[Any, Path], Any]] = {
    "urls": lambda urls, _: tuple(urls),
    "urls_file": lambda path, base: base / path,
    "schedule": lambda schedule, _: Schedule(**schedule),
    "workers": lambda workers, _: Workers(**workers),
    "headers": lambda headers, _: tuple(headers.items()),
    "success_statuses": lambda classes, _: frozenset[int]().union(*classes),
    "tls_verify": lambda verify, base: verify if isinstance(verify, bool) else str(base / verify),
}


def _build(model: _ConfigIn, path: Path, digest: str) -> Config:
    """The frozen config: each target's own keys over `defaults:`, `workers` key by key."""
    base = path.absolute().parent  # relative paths in the file are relative to the file
    defaults = model.defaults.model_dump(exclude_unset=True)
    targets = []
    for target in model.targets:
        own = target.model_dump(exclude_unset=True)
        keys = {**defaults, **own}
        if "workers" in keys:
            keys["workers"] = {**defaults.get("workers", {}), **own.get("workers", {})}
        finished: dict[str, Any] = {
            k: _FINISH[k](v, base) if k in _FINISH else v for k, v in keys.items()
        }
        targets.append(Target(**finished))
    return Config(
        path=path,
        listen=model.listen,
        state_dir=base / model.state_dir,
        shutdown_grace_s=model.shutdown_grace_s,
        targets=tuple(targets),
        digest=digest,
    )


# --- the whole load --------------------------------------------------------------------------


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, check and build the config at `path`; `${VAR}` come from `env` (default os.environ).

        config = load_config("tuner.yaml", env={"CATALOG_TOKEN": "s3cret"})

    Raises ConfigError carrying every problem found, one `FILE:LINE: path: rule: value`
    line each, sorted by line; FILE is `path` as given.
    """
    env = os.environ if env is None else env
    file = str(path)
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError([f"{file}: cannot read: {err.strerror or err}"]) from None

    doc, lines, problems = _read_yaml(data)
    if doc is None:
        raise ConfigError([p.render(file) for p in problems])

    undefined: list[tuple[Loc, str]] = []
    doc = _substitute(doc, (), env, undefined)
    findings: list[_Finding] = [
        (loc, f"undefined environment variable: {name}", _NO_VALUE) for loc, name in undefined
    ]
    model = None
    try:
        model = _ConfigIn.model_validate(doc)
    except ValidationError as err:
        findings += [_from_pydantic(error) for error in err.errors()]
    if isinstance(doc, dict):
        findings += _relations(doc, path.absolute().parent)

    problems += [_Problem(_line(lines, loc), loc, rule, value) for loc, rule, value in findings]
    if problems or model is None:
        problems.sort(key=lambda p: (p.line, _dotted(p.loc), p.rule))
        # dict.fromkeys: a default's mistake inherited by several targets is one line
        raise ConfigError(list(dict.fromkeys(p.render(file) for p in problems)))
    return _build(model, path, hashlib.sha256(data).hexdigest())


def _read_yaml(data: bytes) -> tuple[object, dict[Loc, int], list[_Problem]]:
    """The document, the line of each key, and the problems; the document is None when
    the file cannot be read as YAML at all or is empty."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, {}, [_Problem(data[: err.start].count(b"\n") + 1, (), "not UTF-8 text")]
    loader = _Loader(text)
    try:
        doc = loader.document()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(err, "problem", None) or str(err)
        where = f" (column {mark.column + 1})" if mark else ""
        return None, {}, [_Problem(line, (), f"invalid YAML: {reason}{where}")]
    finally:
        loader.dispose()
    if doc is None:
        return None, {}, [_Problem(1, (), "empty config: expected a mapping with a targets list")]
    return doc, loader.lines, loader.problems


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    """The line of `loc`, or of its nearest parent written in the file (a missing key)."""
    while loc not in lines and loc:
        loc = loc[:-1]
    return lines.get(loc, 1)
