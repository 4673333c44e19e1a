"""What a start imports: nothing a configured channel or a turn would need, until it does.

Issue 9 wants ``soulgate run`` ready within 2x a minimal aiohttp + asyncpg app when
no SDK-backed channel is enabled (bench/startup.py measures it). That rests on the
built-in plugins registering channels and the agent without importing their
implementations: platform SDKs, adapter modules and channel config models load
when a channel of that kind is configured, jsonschema and the turn loop on the
first turn, YAML on the first SOUL file. Each case runs in a fresh interpreter,
since this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: never imported by a start without channels, without a model and without SOUL files
NOT_AT_START = [
    "aiogram", "slack_sdk", "slack_bolt", "botbuilder", "aioimaplib", "aiosmtplib",  # platform SDKs
    "litellm", "openai",  # the LLM seam imports these in a thread, and only when a model is configured
    "jsonschema", "agents.agent",  # the turn: tool arguments are validated on the first tool call
    "yaml",  # SOUL front matter: only when there are SOUL files
    "html.parser",  # fetch_url: the first HTML page
    *(f"adapters.{c}.{m}" for c in ("telegram", "slack", "teams", "http", "email") for m in ("adapter", "config")),
]

START = """
import asyncio, json, sys
from gateway.config import load_config
from gateway.runtime import Gateway

async def main() -> None:
    gw = Gateway(load_config(sys.argv[1]), entry_points=False)
    await gw.start()
    try:
        loaded = sorted(sys.modules)
        ready = gw.ready
    finally:
        await gw.stop()
    print(json.dumps({"ready": ready, "modules": loaded}))

asyncio.run(main())
"""

PLAN = """
import json, sys
from gateway.config import load_config
from gateway.runtime import Gateway

gw = Gateway(load_config(sys.argv[1]), entry_points=False)
problems = gw.load_plugins(build=False)  # what `run` does before touching the database
print(json.dumps({"problems": problems, "planned": sorted(f"{s.channel}/{a}" for s, a, _c in gw._plans),
                  "configs": sorted(type(c).__name__ for _s, _a, c in gw._plans), "modules": sorted(sys.modules)}))
"""


def _python(code: str, config: Path) -> dict[str, object]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _config(tmp_path: Path, body: str) -> Path:
    souls = tmp_path / "soul"
    souls.mkdir(exist_ok=True)
    path = tmp_path / "soulgate.toml"
    path.write_text(f'[agents]\nsoul_dir = "{souls}"\n\n' + textwrap.dedent(body), encoding="utf-8")
    return path


def test_a_start_without_channels_imports_no_adapter_sdk_or_turn_module(
    soulgate_database_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, f"""
        [database]
        url = "{soulgate_database_url}"
        [admin]
        port = 0
        token = "startup-imports-token"
        [http]
        port = 0
    """)
    result = _python(START, config)
    assert result["ready"] is True
    modules = set(result["modules"])  # type: ignore[arg-type]
    assert "gateway.runtime" in modules and "adapters.telegram" in modules, "the probe saw the start"
    loaded = [m for m in NOT_AT_START if m in modules]
    assert not loaded, f"imported by a start that does not need them: {loaded}"


def test_with_a_model_configured_the_turn_modules_are_preloaded_after_litellm(
    soulgate_database_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, f"""
        [database]
        url = "{soulgate_database_url}"
        [admin]
        enabled = false
        [models.default]
        model = "openai/startup-model"
        api_base = "http://127.0.0.1:9/v1"
        api_key = "sk-startup"
    """)
    code = """
        import asyncio, json, sys, threading
        from agents.llm import load_litellm
        from gateway.config import load_config
        from gateway.runtime import Gateway

        async def main() -> None:
            gw = Gateway(load_config(sys.argv[1]), entry_points=False)
            await gw.start()
            try:
                await load_litellm()  # the turn modules come after it
            finally:
                await gw.stop()

        asyncio.run(main())
        preload = [t for t in threading.enumerate() if t.name == "soulgate-agents-import"]
        for thread in preload:
            thread.join(120)
        print(json.dumps({"later": sorted(m for m in ("jsonschema", "agents.agent") if m in sys.modules)}))
    """
    result = _python(code, config)
    assert result == {"later": ["agents.agent", "jsonschema"]}


def test_configured_channels_load_their_config_models_only_and_report_bad_keys(tmp_path: Path) -> None:
    config = _config(tmp_path, """
        [channels.telegram.main]
        token = "123456:ABCdefGhIJKlmNoPQRstuVWXyz0123456789"
        [channels.slack.ws]
        bot_token = "xoxb-1"
        signing_secret = "s"
        colour = "blue"
        [channels.teams.bot]
        enabled = false
        app_id = "nonsense"
    """)
    result = _python(PLAN, config)
    problems = result["problems"]
    assert problems == ["channels.slack.ws.colour: unknown key"], problems
    assert result["planned"] == ["telegram/main"]
    assert result["configs"] == ["TelegramConfig"]
    modules = set(result["modules"])  # type: ignore[arg-type]
    assert {"adapters.telegram.config", "adapters.slack.config"} <= modules
    # validating a table needs its model, not its adapter or SDK; a disabled table needs neither
    assert not modules & {"aiogram", "slack_sdk", "adapters.telegram.adapter", "adapters.slack.adapter",
                          "adapters.teams.config", "adapters.email.config"}, sorted(modules & {
                              "aiogram", "slack_sdk", "adapters.telegram.adapter", "adapters.slack.adapter",
                              "adapters.teams.config", "adapters.email.config"})


def test_the_public_names_of_the_lazy_packages_still_import() -> None:
    code = """
        import json
        from adapters.email import EmailConfig
        from adapters.http import HttpChannelConfig
        from adapters.slack import SlackConfig
        from adapters.teams import STYLE_META, TeamsConfig, TeamsEndpoints
        from adapters.telegram import TelegramConfig, markdown_to_html
        from agents import NO_MODEL_TEXT, MemorySettings, Soul, check_config, run_turn
        import adapters.telegram, agents
        for mod in (adapters.telegram, agents):
            try:
                getattr(mod, "no_such_name")
            except AttributeError as exc:
                assert "no_such_name" in str(exc)
            else:
                raise AssertionError("a missing name must raise AttributeError")
        print(json.dumps({"style": STYLE_META, "html": markdown_to_html("**b**")}))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["style"] == "teams_reply_style" and "<b>b</b>" in out["html"]
