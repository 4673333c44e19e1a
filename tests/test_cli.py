"""The ``soulgate`` command end to end, in subprocesses, on embedded Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], *, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 120,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd or REPO,
    )


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    """An empty user data dir: the embedded Postgres is created from scratch there."""
    return {"XDG_DATA_HOME": str(tmp_path / "data"), "SOULGATE_CONFIG": ""}


def test_chat_piped_end_to_end(data_env: dict[str, str], tmp_path: Path) -> None:
    proc = _run(["chat"], stdin="/help\nhello there\n\n   \n/nope\n/reset\n", env=data_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "/help" in out and "/status" in out and "/reset" in out
    assert "would be answered by the agent" in out or out.count("\n") > 6  # an agent may answer instead
    assert "Unknown command `/nope`" in out
    assert "Forgot this conversation's history" in out
    # replies come in the order of the lines
    assert out.index("Commands") < out.index("Unknown command") < out.index("Forgot")
    assert (tmp_path / "data" / "soulgate" / "pgdata").is_dir()


def test_run_refuses_when_the_database_is_unreachable(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[database]\nurl = "postgresql://bob:hunter2@127.0.0.1:1/soul"\nconnect_timeout = 3\n')
    proc = _run(["--config", str(cfg), "run"], timeout=60)
    assert proc.returncode != 0
    assert "postgresql://bob:***@127.0.0.1:1/soul" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_check_reports_every_problem_with_its_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[workers]\ndispatch = "many"\nspeed = 3\n'
        '[database]\nurl = "${SOULGATE_TEST_MISSING_VAR}"\n'
        '[channels.nosuch.main]\ntoken = "x"\n'
    )
    proc = _run(["--config", str(cfg), "check"])
    assert proc.returncode == 1
    err = proc.stderr
    assert "database.url: environment variable ${SOULGATE_TEST_MISSING_VAR} is not set" in err
    assert "workers.dispatch" in err and "workers.speed: unknown key" in err
    ok = tmp_path / "ok.toml"
    ok.write_text('[channels.nosuch.main]\ntoken = "x"\n')
    proc = _run(["--config", str(ok), "check"])
    assert proc.returncode == 1 and "channels.nosuch: no plugin provides this channel" in proc.stderr
    run = _run(["--config", str(cfg), "run"], timeout=60)
    assert run.returncode != 0 and "workers.speed: unknown key" in run.stderr


def test_check_and_plugins_on_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    proc = _run(["--config", str(empty), "check"])
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout
    listing = _run(["--config", str(empty), "plugins"])
    assert listing.returncode == 0
    assert "core" in listing.stdout and "built-in" in listing.stdout and "skills" in listing.stdout
