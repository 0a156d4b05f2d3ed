"""The tuning logic: measurement windows in, pool-size decisions out. Pure.

(Work in progress: the types below are the contract the rest of tuner uses.)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """Which phase the tuner is in: the `tuner_phase` label of the `tuner_phase` enum metric."""

    RAMP = "ramp"
    SEARCH = "search"
    HOLD = "hold"
    BACKOFF = "backoff"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the controller wants after a window: a pool size, a phase and why.

    `reason` is one of a small fixed set (the `reason` label of
    `tuner_decisions_total`). `pause_s` > 0 asks the caller to admit no new
    request for that long (Retry-After).
    """

    workers: int
    phase: Phase
    reason: str
    knee: int | None = None
    ceiling: int = 0
    cliff: int | None = None
    pause_s: float = 0.0
    settled: bool = False
