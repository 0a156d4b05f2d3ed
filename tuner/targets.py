"""From a configured target to the parts that run it: policy, fetcher, controller, runner.

A `TargetRunner` lives as long as its target: the daemon keeps one per target
between runs, so each run starts where the last one settled; a reload hands
it the new target and it keeps what it learned.

    tr = TargetRunner(target, ceiling=client_ceiling().workers)
    summary = tr.run()
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable

from tuner.config import Target
from tuner.controller import Controller, Learned, Policy
from tuner.fetch import Fetcher, FetchOptions
from tuner.runner import Observer, Runner, RunSummary


def policy_for(target: Target, ceiling: int) -> Policy:
    """The controller's bounds for `target` under a client ceiling of `ceiling` workers."""
    return Policy(
        min_workers=target.workers.min,
        max_workers=target.workers.max,
        ceiling=ceiling,
        error_budget=target.error_budget,
        latency_budget_s=target.latency_budget_s,
        timeout_s=target.timeout_s,
        seed=zlib.crc32(target.name.encode()),  # jitter differs across targets, repeatably
    )


def fetch_options_for(target: Target) -> FetchOptions:
    """How `target`'s requests are made and judged."""
    return FetchOptions(
        method=target.method,
        timeout_s=target.timeout_s,
        connect_timeout_s=target.connect_timeout_s,
        headers=target.headers,
        success_statuses=target.success_statuses,
        max_body_bytes=target.max_body_bytes,
        tls_verify=target.tls_verify,
    )


class TargetRunner:
    """Runs one target, run after run, with one controller that keeps what it learned.

    Not for concurrent runs of the same target: the scheduler never overlaps them.
    """

    def __init__(
        self,
        target: Target,
        *,
        ceiling: int,
        learned: Learned | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._ceiling = ceiling
        self._observer = observer
        self._clock = clock
        self.controller = Controller(policy_for(target, ceiling), learned)
        self._fetcher = Fetcher(fetch_options_for(target), clock=clock)

    def update(self, target: Target) -> None:
        """Take a reloaded definition of the target; what was learned stays."""
        old = self._fetcher
        self.target = target
        self.controller.update_policy(policy_for(target, self._ceiling))
        self._fetcher = Fetcher(fetch_options_for(target), clock=self._clock)
        old.close()

    def run(self, stop: threading.Event | None = None, grace_s: float = 30.0) -> RunSummary:
        """Fetch every URL of the target once (times `repeat`), tuning as it goes."""
        target = self.target
        runner = Runner(
            self.controller,
            self._fetcher,
            observer=self._observer,
            clock=self._clock,
            name=f"tuner-{target.name}",
        )
        return runner.run(
            target.iter_urls(), url_count=target.url_count(), stop=stop, grace_s=grace_s
        )

    def close(self) -> None:
        """Close the target's connections."""
        self._fetcher.close()
