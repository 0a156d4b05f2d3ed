"""The Universal Scalability Law, fitted to measured (pool size, goodput) points. Pure math.

    X(N) = λN / (1 + σ(N−1) + κN(N−1)),  peak at N* = √((1−σ)/κ)

σ is contention (queueing on something shared), κ is coherency (the cost of
workers getting in each other's way, which makes throughput fall past a peak).
The fit linearises `N/(X/λ) − 1 = κ(N−1)² + (σ+κ)(N−1)` and solves it by least
squares; λ is the goodput of one worker, estimated from the smallest pool
measured. It needs at least six points spanning the curve: with κ ≈ 0 there is
no peak, and a fit to points on one side of the peak says little about the other.

    fit = fit_usl([(1, 50.0), (2, 99.0), ...])
    fit.peak_workers if fit else None
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_POINTS = 6


@dataclass(frozen=True, slots=True)
class UslFit:
    """A fitted curve: λ (goodput of one worker), σ, κ, and the peak they predict."""

    lam: float
    sigma: float
    kappa: float
    points: int

    @property
    def peak_workers(self) -> int | None:
        """The pool size of the predicted peak, or None when the fit shows no peak (κ ≈ 0)."""
        if self.kappa <= 1e-9:
            return None
        return max(1, round(math.sqrt((1.0 - self.sigma) / self.kappa)))

    def goodput(self, n: float) -> float:
        """The goodput the fit predicts at pool size n."""
        return self.lam * n / (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0))

    def as_dict(self) -> dict[str, float | int | None]:
        """The `model` field of `tuner probe --json`."""
        peak = self.peak_workers
        return {
            "sigma": round(self.sigma, 6),
            "kappa": round(self.kappa, 8),
            "lambda_rps": round(self.lam, 3),
            "peak_workers": peak,
            "peak_goodput_rps": round(self.goodput(peak), 3) if peak else None,
            "points": self.points,
        }


def fit_usl(points: Sequence[tuple[int, float]]) -> UslFit | None:
    """Fit σ and κ to (pool size, goodput) points; None with fewer than six usable points."""
    usable = sorted((n, x) for n, x in points if n >= 1 and x > 0)
    if len(usable) < MIN_POINTS:
        return None
    n0, x0 = usable[0]
    lam = x0 / n0  # the smallest pool is the closest to linear scaling
    # y = a·u² + b·u with u = N−1, a = κ, b = σ+κ: least squares through the origin.
    s_u2 = s_u3 = s_u4 = s_yu = s_yu2 = 0.0
    for n, x in usable:
        u = n - 1.0
        y = n / (x / lam) - 1.0
        s_u2 += u * u
        s_u3 += u**3
        s_u4 += u**4
        s_yu += y * u
        s_yu2 += y * u * u
    det = s_u4 * s_u2 - s_u3 * s_u3
    if abs(det) < 1e-12:
        return None
    a = (s_yu2 * s_u2 - s_yu * s_u3) / det
    b = (s_u4 * s_yu - s_u3 * s_yu2) / det
    kappa = max(0.0, a)
    sigma = min(1.0, max(0.0, b - kappa))
    return UslFit(lam=lam, sigma=sigma, kappa=kappa, points=len(usable))
