"""The controller, with plain numbers: each test is a timeline of windows in and decisions out."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

from tuner.controller import Controller, Learned, Phase, Policy
from tuner.measure import Window
from tuner.usl import fit_usl

SERVICE = 0.02  # seconds a request takes on an idle server


def window(
    workers: int,
    ok: int,
    *,
    duration: float = 1.0,
    p50: float = SERVICE,
    overload: int = 0,
    throttled: int = 0,
    retry_after: float | None = None,
    suspects: int = 0,
    client_limit: int = 0,
    demand_limited: bool = False,
    ended: float = 0.0,
) -> Window:
    """A window with `ok` successes in `duration` seconds at `workers`."""
    return Window(
        workers=workers,
        duration_s=duration,
        successes=ok,
        overload=overload,
        throttled=throttled,
        client_limit=client_limit,
        p50_s=p50,
        p95_s=p50 * 1.2,
        latency_cv=0.1,
        in_flight=float(workers),
        suspects=suspects,
        retry_after_s=retry_after,
        demand_limited=demand_limited,
        ended=ended,
    )


Server = Callable[[int, float], Window]


def queue(capacity: int) -> Server:
    """A server with `capacity` parallel slots: goodput flat past it, latency rising."""

    def serve(n: int, t: float) -> Window:
        goodput = min(n, capacity) / SERVICE
        p50 = SERVICE * max(1.0, n / capacity)
        return window(n, round(goodput), p50=p50, ended=t)

    return serve


def run(c: Controller, server: Server, windows: int, t0: float = 0.0) -> list[int]:
    """Feed `windows` windows from `server` at the controller's pool sizes; the sizes in force."""
    sizes = []
    for i in range(windows):
        n = c.workers
        sizes.append(n)
        c.observe(server(n, t0 + i))
    return sizes


def test_ramp_doubles_while_goodput_scales():
    """Perfect scaling doubles the pool each window: 512 workers in nine windows, not minutes."""
    c = Controller(Policy(max_workers=1024))
    sizes = run(c, queue(100_000), 10)
    assert sizes == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert c.phase is Phase.RAMP


def test_finds_knee_of_fixed_capacity():
    """Past capacity goodput is flat and latency rises: it settles near the capacity, no errors."""
    c = Controller(Policy(max_workers=256))
    run(c, queue(24), 20)
    assert c.settled
    assert c.knee is not None and 22 <= c.knee <= 26
    assert c.bound == "flattened"
    assert max(p.workers for p in c.points()) <= 48, "never needs to go far past the knee"


def test_settled_pool_moves_less_than_ten_percent():
    """Once settled on a steady server, each window's pool is within 10% of the previous one."""
    c = Controller(Policy(max_workers=256))
    run(c, queue(40), 15)
    assert c.settled
    sizes = run(c, queue(40), 60, t0=100)
    for a, b in itertools.pairwise(sizes):
        assert abs(b - a) / a < 0.10
    assert any(s != sizes[0] for s in sizes), "the hold keeps checking with gentle probes"


def test_retrograde_server_settles_near_peak():
    """Goodput that falls past a peak (USL κ > 0): the knee lands between 75% of the peak and it."""
    sigma, kappa = 0.02, 0.0008  # peak at √(0.98/0.0008) ≈ 35

    def serve(n: int, t: float) -> Window:
        slow = 1 + sigma * (n - 1) + kappa * n * (n - 1)
        return window(n, round(n / (SERVICE * slow)), p50=SERVICE * slow, ended=t)

    c = Controller(Policy(max_workers=256))
    run(c, serve, 25)
    assert c.settled and c.knee is not None
    best = max(n / (SERVICE * (1 + sigma * (n - 1) + kappa * n * (n - 1))) for n in range(1, 200))
    knee = c.knee
    assert serve(knee, 0).goodput >= 0.95 * best
    assert 20 <= knee <= 40


def test_backs_off_below_a_5xx_cliff_and_remembers_it():
    """5xx past 28 workers: one back-off, the cliff remembered, the knee found below it."""

    def serve(n: int, t: float) -> Window:
        w = queue(24)(n, t)
        if n > 28:  # each excess worker gets a fast 503 every 10 ms
            return window(n, w.successes, p50=w.p50_s, overload=(n - 28) * 100, ended=t)
        return w

    c = Controller(Policy(max_workers=256, seed=1))
    decisions = []
    for i in range(30):
        decisions.append(c.observe(serve(c.workers, float(i))))
    errors = [d for d in decisions if d.reason == "errors"]
    assert len(errors) == 1, "one excursion past the cliff, not one a minute"
    assert c.cliff is not None and 29 <= c.cliff <= 32
    assert c.knee is not None and 22 <= c.knee <= 28
    assert all(d.workers < c.cliff for d in decisions[decisions.index(errors[0]) :])


def test_one_decrease_per_window():
    """A burst of fifty failures in one window lowers the pool once, by a bounded step."""
    c = Controller(Policy(max_workers=256), Learned(knee=64, best_goodput=3200.0))
    d = c.observe(window(64, 100, overload=50))
    assert d.reason == "errors" and d.phase is Phase.BACKOFF
    assert d.workers == 48  # ×0.75, not ×0.9⁵⁰


def test_cliff_expires_then_is_remembered_longer():
    """A cliff is not re-probed while remembered; when hit again after it lapses, memory doubles."""
    policy = Policy(max_workers=256, cliff_memory_s=60.0)
    c = Controller(policy, Learned(knee=32, best_goodput=1600.0))
    c.observe(window(32, 100, overload=20, ended=0.0))
    assert c.cliff == 32 and c.ceiling == 31
    c.observe(window(c.workers, 1200, ended=30.0))
    assert c.cliff == 32, "still remembered after 30 s"
    c.observe(window(c.workers, 1200, ended=61.0))
    assert c.cliff is None, "forgotten after its 60 s"
    c.observe(window(c.workers, 100, overload=20, ended=62.0))
    assert c.learned().cliff_memory_s == 120.0


def test_retry_after_pauses_and_caps():
    """429 with Retry-After: pause that long, back off below the pool that was throttled."""
    c = Controller(Policy(max_workers=256), Learned(knee=40, best_goodput=1000.0))
    d = c.observe(window(40, 50, overload=10, throttled=10, retry_after=3.0))
    assert d.phase is Phase.PAUSED and d.reason == "throttled"
    assert d.pause_s == 3.0
    assert d.workers < 40 and c.ceiling < 40


def test_hanging_requests_back_off_before_any_timeout():
    """Requests stuck far past usual latency count as overload: back off with no timeout yet."""
    c = Controller(Policy(max_workers=256), Learned(knee=32, best_goodput=1200.0))
    d = c.observe(window(32, 200, suspects=8))
    assert d.reason == "hang"
    assert d.workers <= 24 and c.cliff == 32


def test_fast_errors_do_not_pass_for_good_latency():
    """A window of instant 503s with a few fast successes is overload, never a reason to grow."""
    c = Controller(Policy(max_workers=256))
    run(c, queue(100_000), 4)  # ramping: 8 workers next
    d = c.observe(window(8, 40, p50=0.001, overload=400))
    assert d.workers < 8 and d.reason == "errors"


def test_no_growth_when_urls_run_short():
    """Fewer URLs waiting than workers: the pool does not grow, whatever goodput says."""
    c = Controller(Policy(max_workers=256))
    run(c, queue(100_000), 3)
    n = c.workers
    d = c.observe(window(n, 5000, demand_limited=True))
    assert d.workers == n and d.reason == "demand"


def test_client_failures_set_a_hard_ceiling():
    """EMFILE or no thread at 512 workers: a hard ceiling below what the pool could hold."""
    c = Controller(Policy(max_workers=1000))
    run(c, queue(100_000), 9)
    assert c.workers == 512
    d = c.observe(window(512, 100, client_limit=3, ended=10.0))
    w = d.workers
    assert d.reason == "client_limit"
    assert w < 512 and c.ceiling == w
    run(c, queue(100_000), 10, t0=11.0)
    assert c.workers <= w, "never grows past the client's ceiling again"
    assert c.bound == "ceiling"


def test_latency_budget_caps_growth():
    """A p95 budget of 30 ms on a queue with capacity 24: the pool stays where p95 fits."""
    c = Controller(Policy(max_workers=256, latency_budget_s=0.03))

    def serve(n: int, t: float) -> Window:
        return queue(16)(n, t)

    run(c, serve, 25)
    assert c.knee is not None and c.knee <= 20
    assert serve(c.knee, 0).p95_s <= 0.03


def test_capacity_drop_is_followed_down():
    """Capacity falls from 32 to 12 while holding: it searches again and settles near 12."""
    c = Controller(Policy(max_workers=256))
    run(c, queue(32), 15)
    assert c.knee is not None and c.knee >= 28
    run(c, queue(12), 15, t0=100)
    assert c.settled and c.knee is not None and 10 <= c.knee <= 15


def test_capacity_rise_is_found_by_probing_up():
    """Capacity grows from 12 to 40 while holding: an up-probe sees it and the pool follows."""
    c = Controller(Policy(max_workers=256))
    run(c, queue(12), 15)
    assert c.knee is not None and c.knee <= 14
    run(c, queue(40), 30, t0=100)
    assert c.knee is not None and 34 <= c.knee <= 48


def test_warm_start_holds_at_the_learned_knee():
    """What was learned before a restart puts the pool at the knee from the first window."""
    learned = Learned(knee=24, best_goodput=1200.0, baseline_p50_s=0.02)
    c = Controller(Policy(max_workers=256), learned)
    assert c.workers == 24 and c.phase is Phase.HOLD
    d = c.observe(queue(24)(24, 0.0))
    assert d.workers == 24 and d.settled


def test_learned_round_trips_through_a_dict():
    """The saved form of what was learned reads back as the same value."""
    learned = Learned(knee=24, best_goodput=1200.0, cliff=40, cliff_reason="errors",
                      cliff_until=99.0, cliff_memory_s=900.0, client_cap=200, baseline_p50_s=0.02)
    assert Learned.from_dict(learned.as_dict()) == learned


def test_window_goal_grows_with_noise():
    """Noisier latency asks for longer windows, so a 5% step still stands out."""
    calm, noisy = Controller(Policy()), Controller(Policy())
    for i in range(5):
        calm.observe(window(1, 50, ended=float(i)))
        noisy.observe(dataclasses.replace(window(1, 50, ended=float(i)), latency_cv=1.5))
    assert noisy.goal().requests > 4 * calm.goal().requests


def test_usl_fit_recovers_its_parameters():
    """Points drawn from a USL curve give back σ, κ and the peak."""
    sigma, kappa, lam = 0.05, 0.001, 100.0
    sizes = (1, 2, 4, 8, 16, 32, 64)
    points = [(n, lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))) for n in sizes]
    fit = fit_usl(points)
    assert fit is not None
    assert abs(fit.sigma - sigma) < 0.005 and abs(fit.kappa - kappa) < 0.0001
    assert fit.peak_workers == round((0.95 / 0.001) ** 0.5)
    assert fit_usl(points[:5]) is None, "five points are not enough"


def test_one_stalled_window_does_not_end_the_climb():
    """A window that stalls (half its goodput lost to a hiccup) is measured again, not believed."""
    stalled = {2}

    def serve(n: int, t: float) -> Window:
        w = queue(24)(n, t)
        if n in stalled:
            stalled.discard(n)
            return window(n, w.successes // 3, p50=w.p50_s, ended=t)
        return w

    c = Controller(Policy(max_workers=256))
    run(c, serve, 25)
    assert c.knee is not None and 22 <= c.knee <= 26


def test_one_lucky_window_does_not_pin_the_knee_high():
    """A window 10% above the plateau at a large pool is confirmed before the knee is set by it."""
    lucky = {48}

    def serve(n: int, t: float) -> Window:
        w = queue(24)(n, t)
        if n in lucky:
            lucky.discard(n)
            return window(n, round(w.successes * 1.1), p50=w.p50_s, ended=t)
        return w

    c = Controller(Policy(max_workers=256))
    run(c, serve, 25)
    assert c.knee is not None and 22 <= c.knee <= 26
