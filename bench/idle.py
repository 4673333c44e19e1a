"""Idle cost: CPU an idle gateway uses (target: under 1% of one core).

Starts ``soulgate run`` in a subprocess on an embedded Postgres (no channel), waits
until ``/readyz`` answers, then samples the process's CPU time (utime + stime from
/proc) over a window. The baseline is a minimal aiohttp + asyncpg app, idle for the
same window in the same run. Postgres' own CPU is measured too (all backends of
that server), since LISTEN wake-ups and safety-net polls cost there as well.

    python bench/idle.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_cpu(data_dir: Path) -> float:
    """CPU seconds of every process of the Postgres serving ``data_dir``."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return 0.0
    master = int(pid_file.read_text().split()[0])
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if int(proc.name) == master or ppid == master:
            total += cpu_seconds(int(proc.name))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Authorization": "Bearer bench"})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def measure(proc: subprocess.Popen[bytes], data_dir: Path, seconds: float, settle: float) -> tuple[float, float]:
    time.sleep(settle)  # let start-up work (e.g. importing litellm in the background) settle
    c0, p0, t0 = cpu_seconds(proc.pid), postgres_cpu(data_dir), time.monotonic()
    time.sleep(seconds)
    c1, p1, t1 = cpu_seconds(proc.pid), postgres_cpu(data_dir), time.monotonic()
    wall = t1 - t0
    return (c1 - c0) / wall * 100, (p1 - p0) / wall * 100


BASELINE = textwrap.dedent("""
    import asyncio, sys
    import asyncpg
    from aiohttp import web

    async def main():
        pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
        async def ok(_):
            await pool.fetchval("SELECT 1")
            return web.Response(text="ok")
        app = web.Application()
        app.router.add_get("/readyz", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(sys.argv[2])).start()
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait after ready")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from storage import start_embedded

    with tempfile.TemporaryDirectory(prefix="soulgate-idle-") as tmp:
        data_dir = Path(tmp) / "pg"
        url = start_embedded(data_dir)
        rows = []
        port = free_port()
        cfg = Path(tmp) / "idle.toml"
        cfg.write_text(f'[database]\nurl = "{url}"\n[admin]\nport = {port}\ntoken = "bench"\n')
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(cfg), "run"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            rows.append(("soulgate run (idle, no channels)", *measure(gw, data_dir, args.seconds, args.settle)))
        finally:
            gw.terminate()
            gw.wait(30)
        port = free_port()
        base = subprocess.Popen([sys.executable, "-c", BASELINE, url, str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            rows.append(("baseline: aiohttp + asyncpg app", *measure(base, data_dir, args.seconds, args.settle)))
        finally:
            base.terminate()
            base.wait(30)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"idle CPU over {args.seconds:g} s · {os.cpu_count()} CPUs · load average {' '.join(load)}")
    print(f"{'process':36} {'own CPU %':>10} {'postgres CPU %':>15}")
    for name, own, pg in rows:
        print(f"{name:36} {own:10.2f} {pg:15.2f}")
    gw_total = rows[0][1] + rows[0][2]
    print(f"target: gateway + its postgres share under 1% of a core -> {gw_total:.2f}% "
          f"({'met' if gw_total < 1 else 'MISSED'})")


if __name__ == "__main__":
    main()
