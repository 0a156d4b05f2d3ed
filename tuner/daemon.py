"""`tuner run`, the daemon, and `tuner reload`, which asks a running daemon to reload.

    daemon = Daemon(load_config("tuner.yaml"), listen="127.0.0.1:9717", state_dir=Path("state"))
    code = daemon.serve()          # until SIGTERM/SIGINT; 0 on a clean stop

Threads, and who owns what:

- the **main thread** owns signals, reloads, config watching, systemd
  notifications (watchdog pings included) and the stop. Signal handlers only
  note the signal; `signal.set_wakeup_fd` writes a byte to a self-pipe, which
  wakes the main loop, and the loop acts. `POST /-/reload` queues its request
  on the same pipe and waits for the main loop's answer, so every reload runs
  in one place, one at a time.
- the **scheduler** (`tuner.schedule`, APScheduler) runs each target on its
  schedule, in UTC, the first run at start, one run of a target at a time: a
  fire during a run is skipped and counted. A target keeps one
  `TargetRunner` for its life, so a run starts where the last one settled.
- the **HTTP server** answers in its own threads; nothing it does waits on a
  run, so `/metrics` stays fast while the pools are busy.

Endpoints on `--listen` (default: the config's `listen:`, else 127.0.0.1:9717):

| endpoint | answer |
| --- | --- |
| `GET /metrics` | the Prometheus text exposition |
| `GET /-/healthy` | 200 `ok` while the scheduler runs, else 503 |
| `GET /-/ready` | 200 `ok` once the config is loaded and the scheduler started; 503 at stop |
| `POST /-/reload` | 200 `ok`, or 500 with one config problem a line (the old config stays) |
| `GET /-/status` | JSON: the daemon and each target's tuner, below |

`GET /-/status` (an extension of SPEC) answers:

    {"version": str, "config": str, "listen": str, "state_dir": str,
     "config_digest": str, "ready": bool,
     "targets": {NAME: {"schedule": "every 10s" | "cron */5 * * * *",
                        "running": bool,
                        "phase": "ramp" | "search" | "hold" | "backoff" | "paused",
                        "workers": int,          # the pool size of the next (or current) window
                        "knee": int | null, "ceiling": int,
                        "cliff": int | null, "cliff_reason": str,
                        "last_run": null | {"result": "completed" | "failed", "end": str,
                                            "started_at": float, "finished_at": float,
                                            "duration_s": float, "requests": int,
                                            "failed": int, "abandoned": int,
                                            "goodput_rps": float, "workers": int}}}}

Reload (SIGHUP, `POST /-/reload`, or with `--watch-config` a change of the
file's bytes, polled every 2 s, which also sees an editor's save-by-rename)
validates the file first and then swaps the whole config at once. Runs under
way finish on the config they started with; a changed target takes its new
definition at its next run, and is rescheduled when its schedule changed.
Added targets start at once; removed ones are unscheduled, their run under
way (if any) is stopped, and their series leave /metrics; their state file
stays. The listen address and the state directory are fixed for the life of
the process.

State files (`tuner.state`) hold `Learned.as_dict()`, except that
`cliff_until` is Unix time there: the controller's clock is monotonic and
does not survive a restart.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from tuner import __version__, notify
from tuner.ceiling import client_ceiling
from tuner.cli import DEFAULT_LISTEN, add_config_argument, default_config_path
from tuner.config import Config, Target, load_config
from tuner.controller import Decision, Learned
from tuner.errors import ConfigError, StateError, TunerError, UsageError
from tuner.log import FORMATS, event, setup_logging
from tuner.measure import Result, Window
from tuner.metrics import CONTENT_TYPE, Metrics, TargetMetrics
from tuner.runner import Observer, RunSummary
from tuner.schedule import Scheduler
from tuner.state import load_state, save_state
from tuner.targets import TargetRunner

log = logging.getLogger("tuner.daemon")

WATCH_INTERVAL_S = 2.0
"""How often `--watch-config` reads the config file's bytes."""

RELOAD_TIMEOUT_S = 60.0
"""How long `POST /-/reload` (and so `tuner reload`) waits for the main loop's answer."""

STOP_SLACK_S = 5.0
"""Past the shutdown grace, how long the stop waits for runs to hand back their threads."""

STOPPING = "tuner is stopping: the config was not reloaded"
"""The answer to a reload asked for during the stop."""

ObserverFactory = Callable[[str], Observer]
"""Makes an extra observer for a target by name (`tuner demo` prints each window)."""


# --- addresses ---------------------------------------------------------------------------------


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9717` -> ("127.0.0.1", 9717); `[::1]:9717` -> ("::1", 9717).

    Raises UsageError when `listen` is not HOST:PORT.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"listen address must be HOST:PORT (e.g. 127.0.0.1:9717): {listen!r}")
    return host, int(port)


# --- state across restarts ---------------------------------------------------------------------


def learned_to_disk(learned: Learned) -> dict[str, Any]:
    """What is saved for a target: `cliff_until` turned from monotonic stamp into Unix time."""
    data = learned.as_dict()
    if learned.cliff_until:
        data["cliff_until"] = time.time() + (learned.cliff_until - time.monotonic())
    return data


def learned_from_disk(data: dict[str, Any]) -> Learned:
    """The inverse of `learned_to_disk`, for data `load_state` checked with `Learned.from_dict`."""
    learned = Learned.from_dict(data)
    if learned.cliff_until:
        left = learned.cliff_until - time.time()  # may be negative: the cliff then expires
        learned = dataclasses.replace(learned, cliff_until=time.monotonic() + left)
    return learned


# --- one target --------------------------------------------------------------------------------


class _Wiring:
    """The observer of a target's runs: metrics, `pool_resized` logs and any extra observer."""

    def __init__(self, target: Target, metrics: TargetMetrics, extra: Observer | None) -> None:
        self.target = target  # the definition of the run under way (its URL count caps the pool)
        self._metrics = metrics
        self._extra = extra

    def result(self, result: Result) -> None:
        """Count a finished request (worker threads)."""
        self._metrics.result(result)
        if self._extra is not None:
            self._extra.result(result)

    def window(self, window: Window, decision: Decision, in_flight: int) -> None:
        """Record the decision; log a change of pool size with its reason."""
        self._metrics.decision(decision, window)
        self._metrics.in_flight(in_flight)
        # The runner caps the pool at the run's URL count: log the size it really takes.
        count = self.target.url_count()
        new = decision.workers if count is None else max(1, min(decision.workers, count))
        if new != window.workers:
            event(
                log,
                "pool_resized",
                target=self.target.name,
                old=window.workers,
                new=new,
                reason=decision.reason,
                phase=decision.phase.value,
            )
        if self._extra is not None:
            self._extra.window(window, decision, in_flight)


class _Slot:
    """A configured target in the daemon: its runner, metrics, stop event and last run.

    `target` is the definition the next run takes; the run under way keeps the
    one it started with. `lock` guards `target`, `running` and `retired`.
    """

    def __init__(
        self, target: Target, runner: TargetRunner, metrics: TargetMetrics, wiring: _Wiring
    ) -> None:
        self.target = target
        self.runner = runner
        self.metrics = metrics
        self.wiring = wiring
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.running = False
        self.retired = False
        self.last_run: dict[str, Any] | None = None
        self.last_knee: Learned | None = None  # the last learned state that held a knee

    def status(self) -> dict[str, Any]:
        """This target's entry in `/-/status`."""
        c = self.runner.controller
        return {
            "schedule": self.target.schedule.describe(),
            "running": self.running,
            "phase": c.phase.value,
            "workers": c.workers,
            "knee": c.knee,
            "ceiling": c.ceiling,
            "cliff": c.cliff,
            "cliff_reason": c.cliff_reason,
            "last_run": self.last_run,
        }


# --- the daemon --------------------------------------------------------------------------------


class Daemon:
    """Runs the targets of a config on their schedules and serves the HTTP endpoints.

    `serve()` must be called from the main thread (it installs signal handlers).
    """

    def __init__(
        self,
        config: Config,
        *,
        listen: str,
        state_dir: Path,
        watch_config: bool = False,
        observer_for: ObserverFactory | None = None,
    ) -> None:
        self.config = config
        self.listen = listen
        self.state_dir = state_dir
        self._watch = watch_config
        self._observer_for = observer_for
        self._ceiling = client_ceiling().workers
        self.metrics = Metrics(__version__)
        self.metrics.config_loaded(True, time.time())
        self._slots: dict[str, _Slot] = {}
        self._scheduler = Scheduler(on_skip=self._skipped, log=log)
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._signals: deque[int] = deque()
        self._reloads: deque[Future[list[str]]] = deque()
        self._seen_digest = config.digest
        self._wake_w = -1
        self._http = _make_server(self, listen)

    # -- the main loop -------------------------------------------------------------------------

    def serve(self, duration_s: float | None = None) -> int:
        """Run until SIGTERM or SIGINT (or `duration_s`), then stop gracefully; return 0."""
        wake_r, self._wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(self._wake_w, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        old_handlers = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        http_thread = threading.Thread(
            target=self._http.serve_forever, name="tuner-http", daemon=True
        )
        http_thread.start()
        try:
            self._start()
            reason = self._loop(wake_r, duration_s)
            self._stop(reason)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            self._http.shutdown()
            self._http.server_close()
            self._fail_pending_reloads()
            os.close(wake_r)
            os.close(self._wake_w)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Note the signal; the main loop acts on it (the wakeup fd already woke it)."""
        self._signals.append(signum)

    def _wake(self) -> None:
        """Wake the main loop from another thread."""
        with contextlib.suppress(OSError):  # a full pipe wakes the loop all the same
            os.write(self._wake_w, b"\0")

    def _start(self) -> None:
        for target in self.config.targets:
            self._add(target)
        self._scheduler.start()
        self._started.set()
        event(
            log,
            "started",
            version=__version__,
            listen=self.listen,
            config=self.config.path,
            targets=len(self.config.targets),
            state_dir=self.state_dir,
            ceiling=self._ceiling,
            watch_config=self._watch,
        )
        notify.ready(self._status_line())

    def _loop(self, wake_r: int, duration_s: float | None) -> str:
        """Act on signals, reloads, file changes and watchdog times; return why it ended."""
        now = time.monotonic()
        end = None if duration_s is None else now + duration_s
        interval = notify.watchdog_interval()
        ping_every = None if interval is None else interval / 2
        next_ping = now
        next_watch = now + WATCH_INTERVAL_S
        with selectors.DefaultSelector() as selector:
            selector.register(wake_r, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if ping_every is not None and now >= next_ping:
                    # Only a live scheduler earns a ping: a hung daemon gets restarted.
                    if self._scheduler.running:
                        notify.watchdog()
                    next_ping = now + ping_every
                if self._watch and now >= next_watch:
                    self._check_file()
                    next_watch = now + WATCH_INTERVAL_S
                deadlines = [d for d in (end, next_ping if ping_every else None) if d is not None]
                if self._watch:
                    deadlines.append(next_watch)
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                selector.select(timeout)
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                while self._signals:
                    signum = self._signals.popleft()
                    if signum == signal.SIGHUP:
                        self.reload("SIGHUP")
                    else:
                        return signal.Signals(signum).name
                while self._reloads:
                    future = self._reloads.popleft()
                    if future.set_running_or_notify_cancel():
                        future.set_result(self.reload("http"))
                if end is not None and time.monotonic() >= end:
                    return "duration"

    def _stop(self, reason: str) -> None:
        """Stop scheduling, stop every run (each gets the grace), save state."""
        running = sorted(name for name, slot in self._slots.items() if slot.running)
        event(
            log,
            "stopping",
            reason=reason,
            running=",".join(running) or None,
            grace_s=self.config.shutdown_grace_s,
        )
        notify.stopping()
        self._stopping.set()
        self._scheduler.shutdown(wait=False)
        slots = list(self._slots.values())
        for slot in slots:
            slot.stop.set()
        deadline = time.monotonic() + self.config.shutdown_grace_s + STOP_SLACK_S
        for slot in slots:
            slot.idle.wait(max(0.0, deadline - time.monotonic()))
        # Requests the stopped runs gave up on after the grace (they end in the background).
        abandoned = sum(
            s.last_run["abandoned"]
            for s in slots
            if s.last_run is not None and s.last_run["end"] == "stopped"
        )
        saved = sum(1 for slot in slots if self._save(slot))
        still = sorted(slot.target.name for slot in slots if not slot.idle.is_set())
        event(
            log,
            "stopped",
            reason=reason,
            abandoned=abandoned,
            saved=saved,
            still_running=",".join(still) or None,
        )

    # -- targets -------------------------------------------------------------------------------

    def _add(self, target: Target, run_now: bool = True) -> None:
        data = load_state(self.state_dir, target.name, log, check=Learned.from_dict)
        learned = None if data is None else learned_from_disk(data)
        metrics = self.metrics.target(
            target.name,
            timeout_s=target.timeout_s,
            min_workers=target.workers.min,
            max_workers=target.workers.max,
            error_budget=target.error_budget,
        )
        extra = self._observer_for(target.name) if self._observer_for else None
        wiring = _Wiring(target, metrics, extra)
        runner = TargetRunner(target, ceiling=self._ceiling, learned=learned, observer=wiring)
        slot = _Slot(target, runner, metrics, wiring)
        if learned is not None and learned.knee is not None:
            slot.last_knee = learned
        self._slots[target.name] = slot
        if learned is not None:
            event(log, "state_loaded", target=target.name, knee=learned.knee, cliff=learned.cliff)
        self._schedule(slot, run_now)

    def _schedule(self, slot: _Slot, run_now: bool) -> None:
        schedule = slot.target.schedule
        self._scheduler.set_job(
            slot.target.name,
            every_s=schedule.every_s,
            cron=schedule.cron,
            func=lambda: self._run(slot),
            run_now=run_now,
        )

    def _run(self, slot: _Slot) -> None:
        """One run of a target (a scheduler thread). Never raises: a failed run is logged."""
        with slot.lock:
            if slot.retired or self._stopping.is_set():
                return
            target = slot.target
            if slot.runner.target != target:
                slot.runner.update(target)  # a reload since the last run
            slot.wiring.target = target
            slot.running = True
            slot.idle.clear()
        started_at = time.time()
        c = slot.runner.controller
        count = target.url_count()
        workers = c.workers if count is None else max(1, min(c.workers, count))
        slot.metrics.decision(
            Decision(
                workers=workers,
                phase=c.phase,
                reason="start",
                knee=c.knee,
                ceiling=c.ceiling,
                cliff=c.cliff,
            ),
            None,
        )
        event(
            log,
            "run_started",
            target=target.name,
            workers=workers,
            phase=c.phase.value,
            knee=c.knee,
        )
        try:
            summary: RunSummary | None = slot.runner.run(
                slot.stop, grace_s=self.config.shutdown_grace_s
            )
            error = None
        except Exception as err:  # a bug in a run must not take the other targets down
            summary, error = None, f"{type(err).__name__}: {err}"
            log.exception("run of %s raised", target.name)
        finally:
            slot.metrics.in_flight(0)
        self._finish(slot, target, summary, error, started_at)

    def _finish(
        self,
        slot: _Slot,
        target: Target,
        summary: RunSummary | None,
        error: str | None,
        started_at: float,
    ) -> None:
        finished_at = time.time()
        ok = summary is not None and summary.successes > 0
        result = "completed" if ok else "failed"
        duration = summary.duration_s if summary is not None else finished_at - started_at
        slot.metrics.run_finished(result, duration, finished_at)
        knee = slot.runner.controller.knee
        if summary is None:
            slot.last_run = {
                "result": result,
                "end": "error",
                "started_at": started_at,
                "finished_at": finished_at,
                "duration_s": duration,
                "requests": 0,
                "failed": 0,
                "abandoned": 0,
                "goodput_rps": 0.0,
                "workers": 0,
            }
            event(
                log,
                "run_finished",
                logging.ERROR,
                target=target.name,
                result=result,
                error=error,
                duration_s=round(duration, 3),
                knee=knee,
            )
        else:
            failed = summary.requests - summary.successes
            slot.last_run = {
                "result": result,
                "end": summary.end,
                "started_at": started_at,
                "finished_at": finished_at,
                "duration_s": round(summary.duration_s, 3),
                "requests": summary.requests,
                "failed": failed,
                "abandoned": summary.abandoned,
                "goodput_rps": round(summary.goodput, 3),
                "workers": summary.workers,
            }
            event(
                log,
                "run_finished",
                logging.INFO if ok else logging.WARNING,
                target=target.name,
                result=result,
                end=summary.end,
                requests=summary.requests,
                failed=failed,
                abandoned=summary.abandoned,
                duration_s=round(summary.duration_s, 3),
                goodput=round(summary.goodput, 1),
                workers=summary.workers,
                knee=knee,
            )
        self._save(slot)
        with slot.lock:
            slot.running = False
            # Each run's pool has new threads and so new sessions: the connections
            # of this run's sessions would only hold file descriptors until the next.
            slot.runner.close()
            slot.idle.set()

    def _save(self, slot: _Slot) -> bool:
        """Save what a target learned; a failure is logged (the next save may work).

        While the controller searches again (drift), it believes no knee; the
        last knee it held is saved instead, so a restart then still starts near
        the knee (the hold's drift check re-searches if it is stale).
        """
        learned = slot.runner.controller.learned()
        if learned.knee is not None:
            slot.last_knee = learned
        elif slot.last_knee is not None:
            learned = dataclasses.replace(
                learned, knee=slot.last_knee.knee, best_goodput=slot.last_knee.best_goodput
            )
        try:
            save_state(self.state_dir, slot.target.name, learned_to_disk(learned))
        except StateError as err:
            event(log, "state_not_saved", logging.WARNING, target=slot.target.name, reason=str(err))
            return False
        return True

    def _skipped(self, name: str) -> None:
        """A fire came during a run of `name` (the scheduler logged it): count it."""
        slot = self._slots.get(name)
        if slot is not None:
            slot.metrics.run_skipped()

    # -- reload --------------------------------------------------------------------------------

    def request_reload(self) -> Future[list[str]]:
        """Ask the main loop for a reload (any thread); the future holds its problems ([]: ok)."""
        future: Future[list[str]] = Future()
        if self._stopping.is_set():  # the main loop no longer reads requests (or the pipe)
            future.set_result([STOPPING])
            return future
        self._reloads.append(future)
        self._wake()
        return future

    def _fail_pending_reloads(self) -> None:
        while self._reloads:
            future = self._reloads.popleft()
            if future.set_running_or_notify_cancel():
                future.set_result([STOPPING])

    def _check_file(self) -> None:
        """`--watch-config`: reload when the file's bytes changed since last seen."""
        try:
            data = self.config.path.read_bytes()
        except OSError:
            return  # mid-rename, or gone for now: look again next time
        digest = hashlib.sha256(data).hexdigest()
        if digest != self._seen_digest:
            self._seen_digest = digest  # a bad edit is reported once, not every 2 s
            self.reload("file changed")

    def reload(self, trigger: str) -> list[str]:
        """Validate the config file, then swap it in whole (main thread); return its problems."""
        notify.reloading()
        try:
            new = load_config(self.config.path)
        except ConfigError as err:
            with contextlib.suppress(OSError):  # --watch-config: these bytes are judged already
                self._seen_digest = hashlib.sha256(self.config.path.read_bytes()).hexdigest()
            for problem in err.problems:
                event(log, "config_rejected", logging.ERROR, trigger=trigger, problem=problem)
            self.metrics.config_loaded(False, time.time())
            notify.ready(self._status_line() + "; last reload failed")
            return list(err.problems)
        self._seen_digest = new.digest
        added, removed, changed = self._apply(new)
        self.metrics.config_loaded(True, time.time())
        event(
            log,
            "config_loaded",
            trigger=trigger,
            targets=len(new.targets),
            added=",".join(added) or None,
            removed=",".join(removed) or None,
            changed=",".join(changed) or None,
        )
        notify.ready(self._status_line())
        return []

    def _apply(self, new: Config) -> tuple[list[str], list[str], list[str]]:
        """Swap in `new`: start added targets, stop removed ones, hand changed ones their target."""
        old = self.config
        if new.listen != old.listen:
            event(
                log,
                "listen_unchanged",
                logging.WARNING,
                configured=new.listen,
                listening=self.listen,
                reason="the listen address is fixed until restart",
            )
        if new.state_dir != old.state_dir:
            event(
                log,
                "state_dir_unchanged",
                logging.WARNING,
                configured=new.state_dir,
                using=self.state_dir,
                reason="the state directory is fixed until restart",
            )
        self.config = new
        wanted = {t.name: t for t in new.targets}
        removed = sorted(set(self._slots) - set(wanted))
        added = [name for name in wanted if name not in self._slots]
        changed = []
        for name in removed:
            slot = self._slots.pop(name)
            self._scheduler.remove_job(name)
            self.metrics.remove_target(name)
            with slot.lock:
                slot.retired = True
                slot.stop.set()
        for name, target in wanted.items():
            slot_or_none = self._slots.get(name)
            if slot_or_none is None:
                self._add(target)
                continue
            slot = slot_or_none
            if slot.target == target:
                continue
            changed.append(name)
            self.metrics.target(
                name,
                timeout_s=target.timeout_s,
                min_workers=target.workers.min,
                max_workers=target.workers.max,
                error_budget=target.error_budget,
            )
            with slot.lock:
                old_schedule, slot.target = slot.target.schedule, target
            if target.schedule != old_schedule:
                self._schedule(slot, run_now=False)
        return added, removed, changed

    # -- what the endpoints read ---------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while the scheduler runs."""
        return self._scheduler.running

    @property
    def ready(self) -> bool:
        """True once the config is loaded and the scheduler started, until the stop begins."""
        return self._started.is_set() and not self._stopping.is_set()

    def status(self) -> dict[str, Any]:
        """The `/-/status` document (see the module docstring)."""
        config = self.config
        return {
            "version": __version__,
            "config": str(config.path),
            "listen": self.listen,
            "state_dir": str(self.state_dir),
            "config_digest": config.digest,
            "ready": self.ready,
            "targets": {name: slot.status() for name, slot in sorted(self._slots.copy().items())},
        }

    def _status_line(self) -> str:
        return f"{len(self.config.targets)} target(s), listening on {self.listen}"


# --- HTTP --------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper never holds up the stop
    tuner: Daemon


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """`/metrics`, `/-/healthy`, `/-/ready`, `/-/status`."""
        daemon = self.server.tuner
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, daemon.metrics.render(), CONTENT_TYPE)
        elif path == "/-/healthy":
            ok = daemon.healthy
            self._text(200 if ok else 503, "ok" if ok else "scheduler not running")
        elif path == "/-/ready":
            ok = daemon.ready
            self._text(200 if ok else 503, "ok" if ok else "not ready")
        elif path == "/-/status":
            body = json.dumps(daemon.status(), indent=2, default=str) + "\n"
            self._send(200, body.encode(), "application/json")
        else:
            self._text(404, "not found")

    def do_POST(self) -> None:
        """`/-/reload`: 200 `ok`, or 500 with every problem, one a line."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # ignored, but read so the connection stays usable
        if self.path.split("?", 1)[0] != "/-/reload":
            self._text(404, "not found")
            return
        future = self.server.tuner.request_reload()
        try:
            problems = future.result(timeout=RELOAD_TIMEOUT_S)
        except TimeoutError:
            problems = ["reload timed out in the daemon"]
        if problems:
            self._text(500, "\n".join(problems))
        else:
            self._text(200, "ok")

    def _text(self, code: int, text: str) -> None:
        self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: Prometheus scrapes every few seconds."""


def _make_server(daemon: Daemon, listen: str) -> _Server:
    host, port = split_listen(listen)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = server_class((host, port), _Handler)
    except OSError as err:
        raise TunerError(f"cannot listen on {listen}: {err.strerror or err}") from err
    server.tuner = daemon
    return server


# --- the commands ------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner run`."""
    add_config_argument(parser)
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="HTTP address (default: the config's listen:)"
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="learned state (default: the config's state_dir:)"
    )
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="text or json")
    parser.add_argument(
        "--watch-config",
        action="store_true",
        help=f"reload when the config file changes (checked every {WATCH_INTERVAL_S:g}s)",
    )


def main_run(args: argparse.Namespace) -> int:
    """`tuner run`: the daemon in the foreground."""
    setup_logging(args.log_format)
    config = load_config(args.config or default_config_path())
    listen = args.listen or config.listen
    split_listen(listen)
    state_dir = Path(args.state_dir) if args.state_dir else config.state_dir
    daemon = Daemon(config, listen=listen, state_dir=state_dir, watch_config=args.watch_config)
    return daemon.serve()


def add_reload_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner reload`."""
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="the daemon's address (default: listen: of -c FILE, else $TUNER_LISTEN, "
        f"else {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="read the daemon's address from this config file"
    )


def reload_address(args: argparse.Namespace) -> str:
    """Where `tuner reload` finds the daemon: --listen, -c FILE's listen:, $TUNER_LISTEN, default.

    The file is read as plain YAML, not validated: the reload is often asked
    for precisely because the file changed, and the daemon reports its problems.
    """
    if args.listen:
        return str(args.listen)
    if args.config:
        try:
            doc = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
        except OSError as err:
            raise TunerError(f"cannot read {args.config}: {err.strerror or err}") from err
        except yaml.YAMLError:
            doc = None  # the daemon will say what is wrong; find it by the other means
        if isinstance(doc, dict):
            listen = doc.get("listen", DEFAULT_LISTEN)
            if isinstance(listen, str):
                return listen
    return os.environ.get("TUNER_LISTEN") or DEFAULT_LISTEN


def main_reload(args: argparse.Namespace) -> int:
    """`tuner reload`: POST /-/reload; 0 when the daemon took the config, else 1 with its errors."""
    listen = reload_address(args)
    host, port = split_listen(listen)
    conn = http.client.HTTPConnection(host, port, timeout=RELOAD_TIMEOUT_S + 5)
    try:
        conn.request("POST", "/-/reload", body=b"")
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
    except ConnectionRefusedError as err:
        raise TunerError(f"no tuner daemon listens on {listen} (connection refused)") from err
    except OSError as err:
        raise TunerError(f"cannot reach the daemon at {listen}: {err.strerror or err}") from err
    finally:
        conn.close()
    if response.status == 200:
        print(f"{listen}: config reloaded")
        return 0
    print(
        f"tuner reload: the daemon at {listen} kept its config (HTTP {response.status}):",
        file=sys.stderr,
    )
    for line in body.splitlines():
        print(line, file=sys.stderr)
    return 1
