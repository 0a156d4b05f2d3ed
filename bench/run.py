"""Every benchmark, one after another: `make bench` (about 45 minutes on two cores).

Each prints its own table; they run in turn so none disturbs another's figures.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("lab_speed", "engine", "tuner", "daemon", "scrape")


def main() -> int:
    """Run each benchmark in its own process; the exit code is the worst of theirs."""
    worst = 0
    for name in BENCHMARKS:
        print(f"\n== python -m bench.{name}", flush=True)
        worst = max(worst, subprocess.run([sys.executable, "-m", f"bench.{name}"]).returncode)
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
