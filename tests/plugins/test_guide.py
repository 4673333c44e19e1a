"""docs/plugins.md works: its files, put into the package `soulgate new-plugin` makes, build a plugin
that installs, is listed, passes the guide's own tests and validates the guide's config.

Every Python block in the guide is a file of the plugin (a line `` `path`: `` before the block
names it); the test fails if one is not, so no sample escapes being run.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as soulgate
from gateway.scaffold import render_template

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "plugins.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
_FILE = re.compile(r"^`([\w./-]+)`:\n\n```(\w+)\n(.*?)^```", re.M | re.S)


def _files() -> dict[str, str]:
    text = GUIDE.read_text(encoding="utf-8")
    files: dict[str, str] = {}
    for path, _lang, body in _FILE.findall(text):
        assert path not in files, f"{path} appears twice in the guide"
        files[path] = body
    return files


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOULGATE_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


def test_every_python_sample_is_a_file_of_the_plugin() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    python_blocks = [body for lang, body in _BLOCK.findall(text) if lang == "python"]
    file_blocks = [body for path, lang, body in _FILE.findall(text) if lang == "python"]
    assert python_blocks and python_blocks == file_blocks
    assert set(_files()) == {
        "src/soulgate_greeter/__init__.py", "src/soulgate_greeter/config.py",
        "src/soulgate_greeter/skills.py", "src/soulgate_greeter/filters.py",
        "src/soulgate_greeter/webhook.py", "tests/test_greeter.py", "soulgate.toml",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(package dir, site dir): the template rendered as `greeter`, the guide's files on top, installed."""
    root = tmp_path_factory.mktemp("guide")
    package = render_template("greeter", root / "soulgate-greeter")
    # the entry point the guide shows is the one the template has
    text = GUIDE.read_text(encoding="utf-8")
    toml_excerpts = [b for lang, b in _BLOCK.findall(text) if lang == "toml" and "[project.entry-points" in b]
    assert toml_excerpts and toml_excerpts[0].strip() in (package / "pyproject.toml").read_text()
    for rel, body in _files().items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(body, encoding="utf-8")
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(package)],
        check=True, capture_output=True, text=True,
    )
    return package, site


@pytest.fixture
def on_path(built: tuple[Path, Path]) -> Iterator[Path]:
    package, site = built
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield package
    finally:
        sys.path.remove(str(site))
        for mod in [m for m in sys.modules if m.startswith("soulgate_greeter")]:
            del sys.modules[mod]
        importlib.invalidate_caches()


def test_the_guides_tests_pass(built: tuple[Path, Path], soulgate_server_url: str) -> None:
    package, site = built
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={package.parent / 'bt'}"],
        cwd=package, env=_env(site, SOULGATE_TEST_SERVER_URL=soulgate_server_url),
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert "6 passed" in run.stdout


def test_the_guides_config_checks_and_lists_the_plugin(
    on_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The guide's tables go into a gateway's config; this one's SOUL files are soulgate's own.
    config = on_path / "gateway.toml"
    config.write_text((on_path / "soulgate.toml").read_text() + f'\n[agents]\nsoul_dir = "{REPO / "soul"}"\n')
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    assert soulgate(["--config", str(config), "check"]) == 1
    assert "channels.webhook.main.secret: environment variable ${WEBHOOK_SECRET} is not set" in \
        capsys.readouterr().err
    monkeypatch.setenv("WEBHOOK_SECRET", "short")
    assert soulgate(["--config", str(config), "check"]) == 1
    assert "channels.webhook.main.secret: Value should have at least 16" in capsys.readouterr().err
    monkeypatch.setenv("WEBHOOK_SECRET", "0123456789abcdef0123")
    assert soulgate(["--config", str(config), "check"]) == 0, capsys.readouterr().err
    assert "1 channel accounts" in capsys.readouterr().out
    assert soulgate(["--config", str(config), "plugins"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["greeter"] == ["greeter", "entry", "point", "0.1.0", "active",
                               "adapters,", "config_model,", "inbound,", "reply,", "skills"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_the_guides_curl_signature_recipe(on_path: Path) -> None:
    from soulgate_greeter.webhook import sign  # type: ignore[import-not-found]

    text = GUIDE.read_text(encoding="utf-8")
    recipe = next(b for lang, b in _BLOCK.findall(text) if lang == "sh" and "openssl" in b)
    body_line, sig_line = (line for line in recipe.splitlines() if line.startswith(("body=", "sig=")))
    out = subprocess.run(["bash", "-c", f"{body_line}\n{sig_line}\nprintf '%s\\n%s' \"$body\" \"$sig\""],
                         env={**os.environ, "WEBHOOK_SECRET": "0123456789abcdef0123"},
                         capture_output=True, text=True, check=True).stdout
    body, sig = out.split("\n", 1)
    assert sig == sign(b"0123456789abcdef0123", body.encode())
