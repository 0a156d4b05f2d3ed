"""Scheduling of target runs: the only module that imports APScheduler."""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger


def check_cron(expr: str) -> str | None:
    """None when `expr` is a valid 5-field crontab expression (UTC), else why not."""
    try:
        CronTrigger.from_crontab(expr, timezone="UTC")
    except ValueError as err:
        return str(err)
    return None
