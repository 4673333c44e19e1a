"""A plugin package made from the template, built and pip-installed, is found and works.

``soulgate new-plugin acme`` renders ``plugins/_template``; pip builds and
installs it (``--target`` a temporary directory put on the path, so helpers
running tests beside us never see it); then the operator's view (``soulgate
plugins``), the gateway (its command answers; an agent, talking to the
fake LLM server through litellm, is offered its tool and calls it) and the
package's own two tests all see the installed plugin.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as soulgate
from gateway.scaffold import render_template, template_dir
from gateway.testing import GatewayFactory, test_config
from tests.fakes import llm as llm_fakes
from tests.fakes.llm import FakeLLM, ToolCall, ToolCalls

fake_llm = llm_fakes.fake_llm

RENDERED: list[str] = []  # the files new-plugin wrote, before pip builds beside them


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULGATE_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(package dir, site dir) of the acme plugin, built from the template and installed."""
    root = tmp_path_factory.mktemp("template")
    package = root / "soulgate-acme"
    assert soulgate(["new-plugin", "acme", "--dir", str(package)]) == 0
    RENDERED.extend(sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()))
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(package)],
        check=True, capture_output=True, text=True,
    )
    yield package, site


@pytest.fixture
def on_path(installed: tuple[Path, Path]) -> Iterator[Path]:
    """The installed plugin importable (and its entry point visible) in this process."""
    _package, site = installed
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for mod in [m for m in sys.modules if m.startswith("soulgate_acme")]:
            del sys.modules[mod]
        importlib.invalidate_caches()


def test_rendered_package_has_the_name_everywhere(installed: tuple[Path, Path]) -> None:
    package, _site = installed
    files = RENDERED
    assert files == ["README.md", "pyproject.toml", "src/soulgate_acme/__init__.py", "tests/test_acme.py"]
    for f in files:
        assert "myplugin" not in (package / f).read_text(), f
    assert 'acme = "soulgate_acme"' in (package / "pyproject.toml").read_text()


def test_soulgate_plugins_lists_it_from_its_entry_point(
    on_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(on_path.parent)  # no config/soulgate.toml here: built-in defaults
    monkeypatch.delenv("SOULGATE_CONFIG", raising=False)
    assert soulgate(["plugins"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert ["acme", "entry", "point", "0.1.0", "active", "skills"] in rows, out
    assert ["core", "built-in", "-", "active", "skills"] in rows


async def test_its_command_answers_and_an_agent_calls_its_tool(
    on_path: Path, soulgate_gateway: GatewayFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    from agents.llm import load_litellm

    await load_litellm()  # seconds on a busy machine: not inside the turn's time budget
    souls = tmp_path / "soul"
    souls.mkdir()
    (souls / "assistant.md").write_text("---\nname: assistant\nskills: [acme_echo]\n---\nYou test tools.\n")
    config = test_config({
        "agents": {"soul_dir": str(souls)},
        "models": {"default": {"model": "openai/m-acme", "api_base": fake_llm.api_base,
                               "api_key": "sk-test", "timeout": 5.0}},
    })
    fake_llm.enqueue("m-acme", ToolCalls([ToolCall("acme_echo", {"text": "ping"}, id="c1")]), "The tool said pong.")
    async with soulgate_gateway(config=config, entry_points=True) as gw:
        info = gw.gateway.plugins.infos["acme"]
        assert (info.source, info.version, info.state) == ("entry point", "0.1.0", "active")
        assert await gw.ask("/acme hello there") == "acme heard: hello there"
        assert "`/acme TEXT` — echo a text back" in await gw.ask("/help")
        # An agent whose SOUL lists the tool is offered it and its call reaches the plugin.
        assert await gw.ask("please use the tool", timeout=60) == "The tool said pong."
        first, second = fake_llm.requests_for("m-acme")
        assert first.tool_names == ["acme_echo"]
        offered = next(t for t in first.tools or [] if t["function"]["name"] == "acme_echo")
        assert offered["function"]["parameters"]["required"] == ["text"]
        tool_msg = second.messages[-1]
        assert tool_msg["role"] == "tool" and json.loads(tool_msg["content"]) == {"reply": "acme heard: ping"}
        await gw.idle()
        calls = await gw.gateway.store.audit.recent(kind="tool_call")
        assert [(c["plugin"], c["detail"]["tool"]) for c in calls] == [("acme", "acme_echo")]


def test_the_packages_own_tests_pass(installed: tuple[Path, Path], soulgate_server_url: str) -> None:
    package, site = installed
    run = subprocess.run(
        # its own --basetemp: a nested pytest must not prune the numbered temp dirs of ours
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={package.parent / 'bt'}"],
        cwd=package,
        env=_env(site, SOULGATE_TEST_SERVER_URL=soulgate_server_url), capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 passed" in run.stdout


def test_new_plugin_refuses_bad_names_and_existing_dirs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("Acme", "1acme", "ac-me", "class", "core", "a" * 33):
        assert soulgate(["new-plugin", bad, "--dir", str(tmp_path / "x")]) == 1, bad
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert soulgate(["new-plugin", "acme", "--dir", str(taken)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".soulgate-new-")] == []
    # an empty directory is fine; default target is ./soulgate-NAME
    (tmp_path / "empty").mkdir()
    assert render_template("beta", tmp_path / "empty") == tmp_path / "empty"
    assert template_dir().joinpath("pyproject.toml").is_file()
