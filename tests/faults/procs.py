"""Gateways as real operating-system processes, for the fault tests.

A :class:`GatewayProcess` writes a TOML config, runs ``python -m gateway.cli
--config <file> run`` from the repository root, waits until the admin
endpoint's ``/readyz`` answers 200, and can be killed with SIGKILL (no
shutdown code runs: the same as a power cut or the OOM killer) and started
again on the same ports and database. Its stderr goes to a log file that a
failing test prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["ADMIN_TOKEN", "REPO", "GatewayProcess", "free_port", "to_toml"]

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "faults-admin-token"


def free_port() -> int:
    """A port nothing listens on now (the OS picks it); kept by the process across restarts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A nested dict as TOML: scalars and lists inline, dicts as ``[tables]`` (lists of
    dicts as ``[[arrays of tables]]``). Enough for a gateway config; no dates."""
    scalars, tables, arrays = [], [], []
    for key, value in data.items():
        name = f"{prefix}.{json.dumps(str(key))}" if prefix else json.dumps(str(key))
        if isinstance(value, Mapping):
            tables.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((name, value))
        else:
            scalars.append(f"{json.dumps(str(key))} = {_toml_value(value)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, name)
    for name, items in arrays:
        for item in items:
            out += f"\n[[{name}]]\n" + to_toml(item, name)
    return out


class GatewayProcess:
    """One ``soulgate run`` process; ``start``/``kill``/``stop`` any number of times."""

    def __init__(self, name: str, workdir: Path, config: dict[str, Any], *,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.admin_port = free_port()
        config = dict(config)
        config["admin"] = {**config.get("admin", {}), "port": self.admin_port, "token": ADMIN_TOKEN}
        config["gateway"] = {"instance_name": name, **config.get("gateway", {})}
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(to_toml(config), encoding="utf-8")
        self.log_path = workdir / f"{name}.log"
        self.env = {
            **os.environ,
            "SOULGATE_CONFIG": "",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, *, ready_within: float = 90.0) -> None:
        """Start the process and wait until ``/readyz`` says ready."""
        assert not self.running(), f"{self.name} is already running"
        self._spawn()
        await self.wait_ready(ready_within)

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "--config", str(self.config_path), "run"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the test's process group does not reach it
            )
        self.starts += 1

    async def wait_ready(self, within: float = 90.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if not self.running():
                    raise AssertionError(f"{self.name} exited during start:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.admin_url}/readyz",
                                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"{self.name} not ready after {within}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, connections cut by the kernel."""
        assert self.proc is not None and self.running(), f"{self.name} is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.kills += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== killed -9 at {time.strftime('%H:%M:%S')} =====\n".encode())

    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109 - a deadline
        """SIGTERM and wait (a clean shutdown); SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def admin(self, path: str) -> Any:
        """GET an admin API path with the bearer token; the JSON answer."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(
            f"{self.admin_url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as r:
            assert r.status == 200, f"{path}: {r.status} {await r.text()}"
            return await r.json()
