"""Shared pieces of the benchmarks: embedded Postgres, child processes, percentiles, tables.

Every benchmark measures a baseline in the same run and reports ratios, because
absolute numbers on a shared 2-core machine say little. What is shared here:

- ``embedded_server()``: one embedded Postgres (pgserver) in a temp directory,
  removed at exit; ``fresh_database()`` gives each measured system its own database.
- ``run_load()``: the open/closed-loop HTTP load generator (``bench/_loadgen.py``)
  in its own process, so its CPU is not the measured server's event loop.
- ``FakesProcess``: the fake LLM and fake Slack (``bench/_fakes.py``) in their own
  process, recording when each request arrived.
- percentiles, machine description and plain-text tables.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# litellm must never fetch its cost map from the internet (it would try at import).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncpg  # noqa: E402

from storage import create_database, drop_database, start_embedded  # noqa: E402

__all__ = [
    "BENCH",
    "ROOT",
    "FakesProcess",
    "embedded_server",
    "fmt",
    "free_port",
    "fresh_database",
    "loadavg",
    "machine",
    "no_reset",
    "pct",
    "quiet_logging",
    "run_load",
    "scratch_dir",
    "table",
]


def quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)


# -- Postgres --------------------------------------------------------------------------------


def embedded_server(data_dir: str | None = None) -> str:
    """Start (or join) an embedded Postgres; a fresh temp directory unless ``data_dir`` is given."""
    if data_dir:
        path = Path(data_dir)
    else:
        root = Path(tempfile.mkdtemp(prefix="soulgate-bench-"))
        root.chmod(0o755)  # pgserver may run Postgres as its own user when we are root
        atexit.register(shutil.rmtree, root, True)  # registered first, so it runs after pgserver's stop
        path = root / "pgdata"
    return start_embedded(path)


@contextlib.asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    url = await create_database(server, name)
    try:
        yield url
    finally:
        await drop_database(server, name)


async def server_version(server: str) -> str:
    conn = await asyncpg.connect(server)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


async def no_reset(_conn: asyncpg.Connection) -> None:
    """``reset=`` for the baselines' pools: no reset query on release, like the gateway's own pool
    (storage/database.py), so a baseline never pays a round trip the gateway does not."""


# -- numbers and tables ----------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN → "-"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))

    out = [title, "", line(cells[0]), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r) for r in cells[1:]]
    out += ["", *notes] if notes else []
    return "\n".join(out)


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory, removed when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- child processes ---------------------------------------------------------------------------


async def run_load(spec: dict[str, Any], *, on_spawn: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``bench/_loadgen.py`` with ``spec`` in its own process; its JSON result.

    Spec keys: url, mode ("open" with rate, or "closed" with concurrency), count,
    duration, tag, channels, secret. The result holds per-request ``send`` (wall
    clock), ``latency`` (seconds), ``status`` and the generator's ``lag`` behind
    its schedule (open loop), plus ``elapsed``. ``on_spawn`` gets the generator's pid
    as soon as it exists (``--pin`` moves it off the measured CPU).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "_loadgen.py"), json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    if on_spawn is not None:
        on_spawn(proc.pid)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


class FakesProcess:
    """``bench/_fakes.py``: a fake LLM and a fake Slack in their own process.

    ``info`` holds ``llm`` (api_base), ``slack`` (Web API base URL), ``token`` and
    ``secret``. ``dump()`` returns what they recorded since the last dump: for
    the LLM ``[text, received, answered]`` (wall clock), for Slack
    ``[method, text, received]``.
    """

    def __init__(self, llm_latency: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "_fakes.py"), str(llm_latency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench/_fakes.py did not start")
        self.info: dict[str, Any] = json.loads(line)

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    async def dump(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._ask, "dump")

    async def cpu_seconds(self) -> float:
        return float((await asyncio.to_thread(self._ask, "cpu"))["cpu"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
