"""The client's own limit: the largest pool this process can hold, known before it is reached.

The original experiment died at about 720 threads. Here the limits that kill
a thread pool — open files, threads, memory — are read up front, so the
tuner can treat the smallest of them as a hard ceiling instead of finding it
by crashing:

    raise_open_files_limit()            # soft -> hard, once, at start-up
    ceiling = client_ceiling()
    pool.resize(min(wanted, ceiling.workers))

`is_client_limit(exc)` tells whether an exception came from one of those
limits (EMFILE, no thread, no memory), however deeply it is wrapped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Sockets a worker can hold open at once. The fetcher gives each worker
# thread its own session that keeps idle connections to at most two hosts
# (one target host, plus one redirect host such as http -> https).
FDS_PER_WORKER = 2

# Resident memory one more worker costs: its thread (the part of the stack it
# touches, interpreter thread state), its requests.Session with an adapter
# and one open keep-alive connection, and its read buffer. Measured with 1000
# workers fetching from the lab server on CPython 3.11 / requests 2.32 /
# urllib3 2.x: about 45 KiB each (growth of VmRSS / workers). Rounded up to
# 256 KiB so that a TLS connection (its SSL context and buffers) still fits.
MEMORY_PER_WORKER = 256 * 1024

CGROUP_ROOT = Path("/sys/fs/cgroup")

# errno values that mean "this machine ran out", not "the far side failed".
_LIMIT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The largest pool this process can hold, and which limit sets it.

    `reason` is `open_files`, `threads` or `memory`. `threads_max` and
    `memory_available_bytes` are None when this system does not say.
    """

    workers: int
    reason: str
    open_files_soft: int
    open_files_hard: int
    threads_max: int | None
    memory_available_bytes: int | None


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one when allowed; return (soft, hard) in force.

    An unlimited hard limit is not a number the kernel accepts as a soft one,
    so it is capped at the kernel's own per-process maximum (fs.nr_open).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _read_int(Path("/proc/sys/fs/nr_open")) or soft
    if soft != resource.RLIM_INFINITY and soft < target:
        # Not allowed everywhere (macOS caps at OPEN_MAX): then the soft limit stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def client_ceiling(reserve_fds: int = 64) -> Ceiling:
    """The largest pool this process can hold now, and which limit sets it.

    - open files: (soft RLIMIT_NOFILE - descriptors open now - `reserve_fds`)
      / `FDS_PER_WORKER`. The reserve keeps room for logs, the metrics server
      and config reloads.
    - threads: the smallest of RLIMIT_NPROC, /proc/sys/kernel/threads-max and
      the cgroup's pids.max, minus the threads alive in this process (the
      other processes of the same user also count against RLIMIT_NPROC, and
      are not subtracted: the tuner meets that as client-limit results).
    - memory: the smaller of MemAvailable and the cgroup's memory headroom,
      over `MEMORY_PER_WORKER`.

    Call `raise_open_files_limit()` first to count the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft_n = soft if soft != resource.RLIM_INFINITY else 1 << 20
    hard_n = hard if hard != resource.RLIM_INFINITY else 1 << 20
    fds_open = _count_entries(Path("/proc/self/fd"))
    by_files = max(0, (soft_n - fds_open - reserve_fds) // FDS_PER_WORKER)

    threads_max = _threads_max()
    by_threads = None
    if threads_max is not None:
        by_threads = max(0, threads_max - threading.active_count())

    memory = _memory_available()
    by_memory = None if memory is None else max(0, memory // MEMORY_PER_WORKER)

    bounds = [("open_files", by_files)]
    if by_threads is not None:
        bounds.append(("threads", by_threads))
    if by_memory is not None:
        bounds.append(("memory", by_memory))
    reason, workers = min(bounds, key=lambda b: b[1])
    return Ceiling(
        workers=max(1, workers),
        reason=reason,
        open_files_soft=soft_n,
        open_files_hard=hard_n,
        threads_max=threads_max,
        memory_available_bytes=memory,
    )


def is_client_limit(exc: BaseException) -> bool:
    """True when `exc`, or anything it wraps, says this machine ran out of files, threads or memory.

    requests wraps EMFILE three layers deep (ConnectionError -> MaxRetryError
    -> NewConnectionError -> OSError), so the whole cause chain is searched.
    """
    for e in causes(exc):
        if isinstance(e, MemoryError):
            return True
        if isinstance(e, OSError) and e.errno in _LIMIT_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and "can't start new thread" in str(e):
            return True
    return False


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and all it wraps: `__cause__`, `__context__`, a `reason`, exception args.

    Each is yielded once, outermost first; the walk is bounded so a cycle or
    a very deep chain cannot stall a worker.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _threads_max() -> int | None:
    """The smallest thread limit this process is under, or None when none is known."""
    limits: list[int] = []
    nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if nproc != resource.RLIM_INFINITY:
        limits.append(nproc)
    paths = [Path("/proc/sys/kernel/threads-max")]
    paths += [d / "pids.max" for d in _cgroup_chain("pids")]
    for path in paths:
        value = _read_int(path)
        if value is not None:
            limits.append(value)
    return min(limits) if limits else None


def cgroup_dirs(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """This process's own cgroup directory for each controller, from /proc/self/cgroup's text.

    The key "" is the cgroup v2 (unified) directory. A service under systemd
    has its limits (TasksMax=, MemoryMax=) on its own directory, not the root.

        cgroup_dirs("0::/system.slice/tuner.service\n")[""]
        # PosixPath('/sys/fs/cgroup/system.slice/tuner.service')
    """
    dirs: dict[str, Path] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.strip().lstrip("/")
        if not controllers:
            dirs[""] = root / rel
        for name in controllers.split(","):
            if name:
                dirs[name] = root / name / rel
    return dirs


def _cgroup_chain(controller: str) -> list[Path]:
    """This process's cgroup directories holding `controller`'s limits, own first, then ancestors.

    A limit set on a parent (a slice) binds as much as one set on the service.
    """
    try:
        dirs = cgroup_dirs(Path("/proc/self/cgroup").read_text())
    except OSError:
        dirs = {}
    chain: list[Path] = []
    tops = ((dirs.get(""), CGROUP_ROOT), (dirs.get(controller), CGROUP_ROOT / controller))
    for start, top in tops:
        if start is None:
            continue
        d = start
        while True:
            chain.append(d)
            if d == top or top not in d.parents:
                break
            d = d.parent
    return chain


def _memory_available() -> int | None:
    """Bytes this process can still take: MemAvailable, lowered by a cgroup limit if one is set."""
    available: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError):
        pass
    pairs = []
    for d in _cgroup_chain("memory"):
        pairs.append((d / "memory.max", d / "memory.current"))  # cgroup v2
        pairs.append((d / "memory.limit_in_bytes", d / "memory.usage_in_bytes"))  # cgroup v1
    for limit_path, usage_path in pairs:
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        # cgroup v1 says "no limit" with a number near 2**63.
        if limit is not None and usage is not None and limit < 1 << 60:
            available.append(max(0, limit - usage))
    return min(available) if available else None


def _read_int(path: Path) -> int | None:
    """An integer file such as /proc/sys/kernel/threads-max; None when absent or "max"."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _count_entries(path: Path) -> int:
    """Entries in a directory such as /proc/self/fd; 0 where there is no /proc."""
    try:
        return len(os.listdir(path))
    except OSError:
        return 0
