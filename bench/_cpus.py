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


class CpuSplit:
    """The measured CPU and the others."""

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
            # pg_stat_activity lists every backend and background process (not the postmaster):
            # cheaper, from the measured process, than scanning /proc
            while True:
                rows = await conn.fetch("SELECT pid, application_name = $1 AS here FROM pg_stat_activity",
                                        MEASURED_APP)
                live = {r["pid"]: bool(r["here"]) for r in rows}
                for pid in set(placed) - set(live):
                    del placed[pid]  # gone: its pid may come back as another backend
                for pid, here in live.items():
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
