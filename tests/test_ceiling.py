"""The client's own ceiling: known before it is reached, and met without a crash."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tuner.ceiling import Ceiling, cgroup_dirs, client_ceiling, is_client_limit
from tuner.lab import LabServer, profile


@pytest.fixture(scope="module")
def lab() -> Iterator[LabServer]:
    with LabServer(profile("queue", capacity=100_000, service_ms=300.0)) as server:
        yield server


def limited(code: str, nofile: tuple[int, int]) -> str:
    """Run `code` in a new interpreter under an open-files limit (`ulimit -n`); its stdout."""

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        preexec_fn=set_limit,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_ceiling_of_this_process_is_sane() -> None:
    """Here the ceiling is a positive pool size, named by the limit that sets it."""
    c = client_ceiling()
    assert isinstance(c, Ceiling)
    assert c.workers >= 1
    assert c.reason in {"open_files", "threads", "memory"}
    assert c.open_files_soft <= c.open_files_hard


def test_open_files_limit_sets_the_ceiling() -> None:
    """Under `ulimit -n 256` the ceiling is open files, well below 256."""
    out = limited(
        "from tuner.ceiling import client_ceiling; c = client_ceiling(); "
        "print(c.workers, c.reason, c.open_files_soft)",
        (256, 256),
    )
    workers, reason, soft = out.split()
    assert reason == "open_files" and soft == "256"
    assert 0 < int(workers) < 128


def test_soft_limit_is_raised_to_the_hard_one() -> None:
    """raise_open_files_limit lifts a soft 256 to the hard 1024, and the ceiling follows."""
    out = limited(
        "from tuner.ceiling import client_ceiling, raise_open_files_limit; "
        "print(*raise_open_files_limit(), client_ceiling().workers)",
        (256, 1024),
    )
    soft, hard, workers = map(int, out.split())
    assert (soft, hard) == (1024, 1024)
    assert 256 < workers < 1024


def test_a_pool_past_the_open_files_limit_never_dies(lab: LabServer) -> None:
    """1000 workers under `ulimit -n 256`: sockets past the limit are counted client limits."""
    code = f"""
import itertools, threading
from collections import Counter
from tuner.ceiling import client_ceiling
from tuner.fetch import Fetcher
from tuner.pool import Pool
counts = Counter()
lock = threading.Lock()
def on_result(r):
    with lock:
        counts["limit" if r.client_limit else r.outcome.value] += 1
fetcher = Fetcher()
pool = Pool(fetcher, itertools.repeat({lab.url!r}, 3000), 1000, on_result)
pool.start()
done = pool.wait(60)
print(client_ceiling().workers, done, pool.threads, counts["success"], counts["limit"],
      sum(counts.values()))
"""
    ceiling, done, _, successes, limits, total = limited(code, (256, 256)).split()
    assert int(ceiling) < 256
    assert done == "True" and int(total) == 3000
    assert int(successes) > 0 and int(limits) > 0


def test_emfile_is_recognised_however_deeply_wrapped() -> None:
    """EMFILE inside requests' ConnectionError is a client limit; a refusal is not."""
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as inner:
            raise requests.ConnectionError("wrapped") from inner
    except requests.ConnectionError as outer:
        assert is_client_limit(outer)
    assert is_client_limit(RuntimeError("can't start new thread"))
    assert not is_client_limit(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))


def test_cgroup_limits_are_read_from_the_service_own_cgroup():
    """Under systemd, TasksMax= and MemoryMax= sit on the service's cgroup, not the root."""
    v2 = cgroup_dirs("0::/system.slice/tuner.service\n")
    assert v2[""] == Path("/sys/fs/cgroup/system.slice/tuner.service")
    v1 = cgroup_dirs("12:pids:/system.slice/tuner.service\n4:memory,foo:/x\n0::/\n")
    assert v1["pids"] == Path("/sys/fs/cgroup/pids/system.slice/tuner.service")
    assert v1["memory"] == Path("/sys/fs/cgroup/memory/x")
    assert v1[""] == Path("/sys/fs/cgroup")
