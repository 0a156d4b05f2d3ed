"""Scheduling of target runs: the only module that imports APScheduler.

    scheduler = Scheduler(on_skip=lambda name: metrics_of[name].run_skipped(), log=log)
    scheduler.set_job("api", every_s=300, cron=None, func=run_api)
    scheduler.start()

Each target has one job, named after it, firing in UTC. Runs of different
targets go side by side; runs of one target never overlap: a fire that comes
while the previous run is still going is skipped, logged as `run_skipped` and
handed to `on_skip`, never dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from tuner.log import event

MAX_PARALLEL_RUNS = 64
"""How many targets can run at once. Threads start only when needed, so the
bound costs nothing below it; above it a due run waits for a free thread, and
while it waits further fires of that target count as skipped."""


class Scheduler:
    """One job per target on its every/cron schedule, in UTC, first run at start.

    A run never overlaps the previous run of the same target: if it is still
    running when the next fire time comes, that fire is skipped and reported
    (never silently dropped). Fires are never piled up to catch up: a fire
    that comes late (the host was suspended, or all threads were busy) runs
    once, however late, and the fires it stood for are folded into it.
    """

    def __init__(self, on_skip: Callable[[str], None], log: logging.Logger) -> None:
        self._on_skip = on_skip
        self._log = log
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=MAX_PARALLEL_RUNS)},
            job_defaults={
                # One run of a target at a time; a fire during a run is skipped
                # and APScheduler emits EVENT_JOB_MAX_INSTANCES for it.
                "max_instances": 1,
                # Fires missed while the scheduler could not act run once, not
                # once each.
                "coalesce": True,
                # A run that could not start on time still runs: lateness alone
                # never drops a run (and never raises EVENT_JOB_MISSED).
                "misfire_grace_time": None,
            },
        )
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        """Start firing; jobs set with `run_now` run at once."""
        self._scheduler.start()

    def shutdown(self, wait: bool = False) -> None:
        """Stop firing; with `wait`, also wait for the runs under way to end. Idempotent."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        """True between `start()` and `shutdown()`: what /-/healthy reports."""
        return bool(self._scheduler.running)

    def set_job(
        self,
        name: str,
        *,
        every_s: float | None,
        cron: str | None,
        func: Callable[[], None],
        run_now: bool = True,
    ) -> None:
        """Add the job of target `name`, or replace (reschedule) it: give `every_s` or `cron`.

        `cron` is a 5-field crontab expression in UTC (see `check_cron`). With
        `run_now` the first run is now (or at `start()`), else at the first
        fire time. Replacing a job whose run is under way never overlaps it:
        a new fire during that run is skipped.
        """
        trigger: IntervalTrigger | CronTrigger
        if (every_s is None) == (cron is None):
            raise ValueError(f"job {name}: give exactly one of every_s and cron")
        if every_s is not None:
            if every_s <= 0:
                raise ValueError(f"job {name}: every_s must be > 0: {every_s}")
            trigger = IntervalTrigger(seconds=every_s, timezone=UTC)
        else:
            trigger = CronTrigger.from_crontab(cron, timezone=UTC)
        when: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if run_now else {}
        self._scheduler.add_job(func, trigger, id=name, name=name, replace_existing=True, **when)

    def remove_job(self, name: str) -> None:
        """Stop scheduling target `name`; a run under way ends on its own. No-op when absent."""
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(name)

    def job_names(self) -> set[str]:
        """The names of the scheduled targets."""
        return {job.id for job in self._scheduler.get_jobs()}

    def _skipped(self, ev: JobSubmissionEvent) -> None:
        """A fire came while the previous run of the job was still going."""
        event(self._log, "run_skipped", logging.WARNING, target=ev.job_id,
              reason="previous run still going")  # fmt: skip
        self._on_skip(ev.job_id)


def check_cron(expr: str) -> str | None:
    """None when `expr` is a valid 5-field crontab expression (UTC), else why not."""
    try:
        CronTrigger.from_crontab(expr, timezone="UTC")
    except ValueError as err:
        return str(err)
    return None
