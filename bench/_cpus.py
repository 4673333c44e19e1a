"""``--pin``: one CPU for the measured server, the others for everything else.

On a 2-core machine the measured event loop shares both cores with Postgres, the
load generator, the fakes and (in the split deployment) the worker process, so a
busy worker process delays acknowledgements through the CPU even when it shares
nothing else with the ingress. Pinning separates the two the way two machines (or
a machine with a core to spare) would: the benchmark's own process and the Postgres
backends that serve it run on the first CPU; the postmaster and every other backend,
the worker process, the fakes and the load generator run on the rest.

A backend is recognised by its ``application_name``: the measured server's database
URL carries :data:`MEASURED_APP`, and a watcher moves each backend that names it to
the measured CPU as soon as it appears (backends are forked by the postmaster, so a
new one starts on the other CPUs). Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

__all__ = ["MEASURED_APP", "CpuSplit"]

MEASURED_APP = "soulgate-bench-measured"


def _tasks(pid: int) -> list[int]:
    """The thread ids of ``pid`` (affinity is per thread; a thread inherits its creator's)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _set(pid: int, cpus: set[int]) -> None:
    for tid in _tasks(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            os.sched_setaffinity(tid, cpus)


def _parent(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _parent(int(entry.name)) == parent:
                    out.append(int(entry.name))
    return out


class CpuSplit:
    """The measured CPU and the others; ``None`` from :meth:`of_this_machine` below 2 CPUs."""

    def __init__(self, measured: set[int], rest: set[int]) -> None:
        self.measured = measured
        self.rest = rest

    @classmethod
    def of_this_machine(cls) -> CpuSplit:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
            raise SystemExit("--pin needs Linux and at least 2 CPUs")
        return cls({cpus[0]}, set(cpus[1:]))

    def describe(self) -> str:
        return (
            f"pinned: this process and its Postgres backends on CPU {sorted(self.measured)}, everything "
            f"else on CPU {sorted(self.rest)}"
        )

    @staticmethod
    def tag(url: str, app: str = MEASURED_APP) -> str:
        """``url`` with an ``application_name`` (asyncpg passes it on as a server setting)."""
        return f"{url}{'&' if '?' in url else '?'}application_name={app}"

    def measure_here(self) -> None:
        _set(os.getpid(), self.measured)

    def elsewhere(self, pid: int) -> None:
        _set(pid, self.rest)

    @contextlib.asynccontextmanager
    async def postgres(self, server: str, every: float = 0.1) -> AsyncIterator[None]:
        """While open: the postmaster and its children on the other CPUs, the backends whose
        ``application_name`` is :data:`MEASURED_APP` on the measured one."""
        conn = await asyncpg.connect(server)
        postmaster = _parent(conn.get_server_pid())
        self.elsewhere(postmaster)
        placed: dict[int, bool] = {}

        async def watch() -> None:
            while True:
                measured = {
                    r["pid"]
                    for r in await conn.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", MEASURED_APP
                    )
                }
                alive = _children(postmaster)
                for pid in set(placed) - set(alive):
                    del placed[pid]  # gone: its pid may come back as another backend
                for pid in alive:
                    here = pid in measured
                    if placed.get(pid) is not here:
                        _set(pid, self.measured if here else self.rest)
                        placed[pid] = here
                await asyncio.sleep(every)

        task = asyncio.create_task(watch(), name="bench-cpu-split")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await conn.close()
