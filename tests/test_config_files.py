"""The shipped config files: both load, the example documents every option, bad configs are named.

The documentation test reads the config models themselves, so adding an
option to ``gateway/config.py`` (or to a channel adapter's config model)
without describing it in ``config/soulgate.example.toml`` fails here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel

from gateway.cli import main
from gateway.config import Config, load_config
from gateway.runtime import Gateway

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "config" / "soulgate.toml"
EXAMPLE = REPO / "config" / "soulgate.example.toml"
CHANNELS = ("telegram", "slack", "teams", "email", "http")
#: fields the loader fills in itself; a config file may not set them
INTERNAL = {"source", "base_dir"}
#: variables the shipped files read; cleared so the tests see the files' own defaults
OPTIONAL_ENV = ("SOULGATE_CONFIG", "SOULGATE_DATABASE_URL", "SOULGATE_ADMIN_TOKEN", "COMPAT_API_KEY")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_HEADER = re.compile(r"^#?\s?\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*$")
# A setting, live or commented out: lowercase key, then something that starts a TOML value
# (so prose such as "# Unset = any" is not mistaken for one).
_SETTING = re.compile(r"""^#?\s?([a-z_][a-z0-9_]*)\s*=\s*(?:["'\[{]|true\b|false\b|-?\d)""")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OPTIONAL_ENV:
        monkeypatch.delenv(name, raising=False)


#: stand-ins for secrets whose shape the channel's config model checks
SHAPED_DUMMIES = {"SLACK_BOT_TOKEN": "xoxb-0-dummy", "SLACK_APP_TOKEN": "xapp-0-dummy",
                  "TELEGRAM_TOKEN": "123456:dummy-telegram-token"}


def dummy_env(text: str) -> dict[str, str]:
    """A value for every ``${VAR}`` without a fallback (the example's secrets)."""
    return {
        m.group(1): SHAPED_DUMMIES.get(m.group(1), f"dummy-{m.group(1).lower()}")
        for m in _ENV_REF.finditer(text) if not m.group(2)
    }


# -- what the example documents ------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    table: tuple[str, ...]
    key: str
    line: int
    documented: bool  # a prose comment line directly above it


def scan(text: str) -> tuple[list[Setting], list[tuple[str, ...]]]:
    """Settings (live and commented out) with their table, and every table header."""
    settings: list[Setting] = []
    headers: list[tuple[str, ...]] = []
    table: tuple[str, ...] = ()
    prose_above = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if header := _HEADER.match(line):
            table = tuple(header.group(1).split("."))
            headers.append(table)
            prose_above = False
        elif setting := _SETTING.match(line):
            settings.append(Setting(table, setting.group(1), number, prose_above))
            prose_above = False
        else:
            prose_above = line.startswith("#") and line.strip("#").strip() != ""
    return settings, headers


def _matches(pattern: tuple[str, ...], table: tuple[str, ...]) -> bool:
    return len(pattern) == len(table) and all(p in ("*", t) for p, t in zip(pattern, table, strict=True))


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def option_paths(model: type[BaseModel], table: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every (table pattern, key) a config file may set, walking nested models; ``*`` = any name."""
    for name, field in model.model_fields.items():
        if not table and name in INTERNAL:
            continue
        tp = _unwrap(field.annotation)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if _is_model(tp):
            yield from option_paths(tp, (*table, name))
        elif origin is dict and len(args) == 2 and _is_model(_unwrap(args[1])):
            yield from option_paths(_unwrap(args[1]), (*table, name, "*"))
        elif origin is list and args and _is_model(_unwrap(args[0])):
            yield from option_paths(_unwrap(args[0]), (*table, name))
        else:
            yield table, name


def undocumented(
    model: type[BaseModel], text: str, root: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(options missing from ``text``, options whose first appearance has no comment above it)."""
    settings, headers = scan(text)
    missing, bare = [], []
    for pattern, key in option_paths(model, root):
        dotted = ".".join((*pattern, key))
        found = [s for s in settings if s.key == key and _matches(pattern, s.table)]
        if found:
            if not found[0].documented:
                bare.append(f"{dotted} (line {found[0].line})")
            continue
        # a free-form table (channels, plugins.config) is documented by example headers under it
        prefix = (*pattern, key)
        if not any(len(h) > len(prefix) and _matches(prefix, h[: len(prefix)]) for h in headers):
            missing.append(dotted)
    return missing, bare


def test_every_option_of_every_config_model_is_in_the_example_with_a_comment() -> None:
    missing, bare = undocumented(Config, EXAMPLE.read_text(encoding="utf-8"))
    assert not missing, f"options missing from {EXAMPLE.name}: {missing}"
    assert not bare, f"options in {EXAMPLE.name} without a comment line above them: {bare}"


def test_the_documentation_check_notices_a_new_option() -> None:
    class Extra(BaseModel):
        brand_new_knob: int = 3

    class Grown(Config):
        workers2: Extra = Extra()

    missing, _ = undocumented(Grown, EXAMPLE.read_text(encoding="utf-8"))
    assert missing == ["workers2.brand_new_knob"]
    missing, bare = undocumented(Extra, "[x]\nbrand_new_knob = 1\n", ("x",))
    assert missing == [] and bare == ["x.brand_new_knob (line 2)"]


# -- both files load and pass `soulgate check` ----------------------------------------------


def test_default_config_is_what_check_uses_from_the_repo_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["check"]) == 0, capsys.readouterr().err
    assert "config/soulgate.toml is valid" in capsys.readouterr().out
    cfg = load_config(DEFAULT, env={})
    assert cfg.database.url.get_secret_value() == ""  # embedded Postgres
    assert cfg.admin.enabled and cfg.admin.host == "127.0.0.1"
    assert cfg.channels == {}
    assert cfg.resolve(cfg.agents.soul_dir) == REPO / "soul"
    assert "[channels." in DEFAULT.read_text(encoding="utf-8")  # the hint how to enable one


def test_example_passes_check_with_its_secrets_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in dummy_env(EXAMPLE.read_text(encoding="utf-8")).items():
        monkeypatch.setenv(name, value)
    assert main(["--config", str(EXAMPLE), "check"]) == 0, capsys.readouterr().err
    assert "is valid" in capsys.readouterr().out


def test_example_shows_the_defaults_and_keeps_secrets_in_the_environment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    env = dummy_env(text)
    cfg = load_config(EXAMPLE, env=env)
    defaults = Config()
    for name, field in Config.model_fields.items():
        if _is_model(_unwrap(field.annotation)):
            assert getattr(cfg, name) == getattr(defaults, name), f"[{name}] differs from the defaults"
    for alias, model in cfg.models.items():
        if model.api_key is not None:  # Ollama needs none
            key = model.api_key.get_secret_value()
            assert key in env.values() or key == "unused", f"models.{alias}.api_key is not from ${{ENV}}"
    # every secret-looking live value is an ${ENV} reference
    for line in text.splitlines():
        if re.match(r"^(token|api_key|url|password|secret)\s*=", line):
            assert "${" in line, line


def test_example_models_cover_the_documented_providers() -> None:
    cfg = load_config(EXAMPLE, env=dummy_env(EXAMPLE.read_text(encoding="utf-8")))
    providers = {m.model.split("/", 1)[0] for m in cfg.models.values()}
    assert {"openai", "anthropic", "groq", "gemini", "ollama_chat"} <= providers
    assert any(m.model.startswith("openai/") and m.api_base for m in cfg.models.values())
    assert cfg.routes and all(r.agent for r in cfg.routes)


# -- the channel sections ---------------------------------------------------------------------


def channel_section(channel: str) -> str:
    """The example's section for ``channel``, uncommented (``##`` lines stay comments)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    block = re.search(rf"^# >>> channel: {channel}\n(.*?)^# <<< channel: {channel}$", text, re.S | re.M)
    assert block, f"{EXAMPLE.name} has no marked section for channel {channel!r}"
    return "\n".join(line[2:] if line.startswith("# ") else line for line in block.group(1).splitlines())


@pytest.mark.parametrize("channel", CHANNELS)
def test_channel_section_is_valid_toml_for_its_channel(channel: str) -> None:
    data = tomllib.loads(channel_section(channel))
    assert set(data) == {"channels"} and set(data["channels"]) == {channel}
    assert data["channels"][channel], "the section names at least one account"


@pytest.mark.parametrize("channel", CHANNELS)
def test_channel_section_passes_check_when_the_adapter_is_installed(
    channel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = Gateway(Config())
    gw.load_plugins()
    if channel not in gw.adapter_specs:
        pytest.skip(f"no plugin provides channel {channel!r} yet")
    section = channel_section(channel)
    model = gw.adapter_specs[channel][1].load_config_model()
    if model is not None:
        missing, bare = undocumented(model, section, ("channels", channel, "*"))
        assert not missing, f"[channels.{channel}.*] options missing from the example: {missing}"
        assert not bare, f"[channels.{channel}.*] options without a comment: {bare}"
    text = EXAMPLE.read_text(encoding="utf-8")
    assert 'soul_dir = "soul"' in text
    enabled = tmp_path / "enabled.toml"
    enabled.write_text(
        text.replace('soul_dir = "soul"', f"soul_dir = {str(REPO / 'soul')!r}") + "\n" + section,
        encoding="utf-8",
    )
    for name, value in dummy_env(text + section).items():
        monkeypatch.setenv(name, value)
    assert main(["--config", str(enabled), "check"]) == 0, capsys.readouterr().err
    assert "0 channel accounts" not in capsys.readouterr().out


# -- bad configs: named by `check`, refused by `run` with the same words --------------------------

BAD = """\
[admin]
prot = 8765
[workers]
dispatch = "many"
[database]
url = "${SOULGATE_TEST_NEVER_SET}"
[models.fast]
api_base = "http://127.0.0.1:1"
[[routes]]
agent = "a"
[[routes]]
agnet = "b"
"""
BAD_PROBLEMS = [
    "admin.prot: unknown key",
    "workers.dispatch: Input should be a valid integer",
    "database.url: environment variable ${SOULGATE_TEST_NEVER_SET} is not set",
    "models.fast.model: Field required",
    "routes[1].agent: Field required",
    "routes[1].agnet: unknown key",
]


def _errors(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if line.startswith("error: "))


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*OPTIONAL_ENV, "SOULGATE_TEST_NEVER_SET")}
    # If validation ever let a bad config through, the embedded Postgres would land here.
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


async def _run_refused(config: Path, tmp_path: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--config", str(config), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_subprocess_env(tmp_path), cwd=tmp_path,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("soulgate run did not refuse a bad config; it kept running") from None
    stderr = err.decode()
    assert proc.returncode != 0, stderr
    assert "soulgate is running" not in stderr + out.decode()
    assert not (tmp_path / "data").exists(), "run touched the database before refusing"
    return stderr


async def test_bad_config_every_problem_named_by_check_and_run_refuses_with_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD, encoding="utf-8")
    assert main(["--config", str(bad), "check"]) == 1
    checked = _errors(capsys.readouterr().err)
    for problem in BAD_PROBLEMS:
        assert any(line.startswith(f"error: {problem}") for line in checked), (problem, checked)
    assert len(checked) == len(BAD_PROBLEMS), checked
    assert _errors(await _run_refused(bad, tmp_path)) == checked


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[admin]\nport = 8765\nhots = '0.0.0.0'\n", "admin.hots: unknown key"),
        ("[gateway]\nlog_level = 'LOUD'\n", "gateway.log_level: Input should be 'DEBUG'"),
        ("[workers]\nlease_seconds = -1\n", "workers.lease_seconds: Input should be greater than 0"),
        ("[admin]\ntoken = 'x-${SOULGATE_TEST_NEVER_SET}'\n",
         "admin.token: environment variable ${SOULGATE_TEST_NEVER_SET} is not set"),
        ("[plugins]\nmodules = 'one'\n", "plugins.modules: Input should be a valid list"),
        ("[channels.telegramm.main]\ntoken = 'x'\n", "channels.telegramm: no plugin provides this channel"),
        ("[admin\nport = 1\n", "invalid TOML"),
        ("source = 'elsewhere'\n", "source: unknown key"),
    ],
)
def test_check_names_each_kind_of_problem(
    text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text, encoding="utf-8")
    assert main(["--config", str(bad), "check"]) == 1
    err = capsys.readouterr().err
    assert problem in err, err
    if problem == "invalid TOML":
        assert str(bad) in err  # names the file


async def test_run_refuses_an_unknown_channel_with_checks_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A different path from BAD: the file is valid, the gateway finds no plugin for the channel.
    # (The shipped SOULs keep `check` from also reporting a missing SOUL folder, which `run`
    # by design does not refuse to start over.)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f"[agents]\nsoul_dir = {str(REPO / 'soul')!r}\n[channels.telegramm.main]\ntoken = 'x'\n",
        encoding="utf-8",
    )
    assert main(["--config", str(bad), "check"]) == 1
    checked = _errors(capsys.readouterr().err)
    assert len(checked) == 1 and "channels.telegramm: no plugin provides this channel" in checked[0], checked
    assert _errors(await _run_refused(bad, tmp_path)) == checked


# -- the default config runs ---------------------------------------------------------------------


async def test_default_config_runs_and_stops_cleanly(tmp_path: Path, soulgate_database_url: str) -> None:
    """`soulgate run` on the shipped defaults (admin port 0 so parallel runs do not collide)."""
    text = DEFAULT.read_text(encoding="utf-8")
    assert "port = 8765" in text
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    shutil.copytree(REPO / "soul", tmp_path / "soul")  # the repository's layout, in a scratch dir
    (config_dir / "soulgate.toml").write_text(text.replace("port = 8765", "port = 0"), encoding="utf-8")
    env = _subprocess_env(tmp_path)
    # The file's own ${SOULGATE_DATABASE_URL:-} hook points it at this test's database.
    env["SOULGATE_DATABASE_URL"] = soulgate_database_url
    env["SOULGATE_ADMIN_TOKEN"] = "t0ken-for-the-test"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("soulgate is running" in line for line in seen):
                line = (await proc.stderr.readline()).decode()
                assert line, f"soulgate run exited early: {''.join(seen)}"
                seen.append(line)
        port = re.search(r"admin: http://127\.0\.0\.1:(\d+)", seen[-1])
        assert port, seen[-1]
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port.group(1)}"
            async with http.get(f"{url}/api/status") as resp:
                assert resp.status == 401
            headers = {"Authorization": "Bearer t0ken-for-the-test"}
            async with http.get(f"{url}/api/status", headers=headers) as resp:
                status = await resp.json()
        assert status["adapters"] == [] and status["ready"] is True
        assert not [line for line in seen if " ERROR " in line or line.startswith("error:")], seen
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "".join(seen) + rest.decode()
