"""The plugin's own tests, run with plain `pytest` after `pip install -e .`.

The fixtures (`soulgate_gateway` and friends) come from soulgate's pytest
plugin, `gateway.testing`: a real gateway on an embedded Postgres with a fake
channel, so these tests need nothing but soulgate installed.
"""

from __future__ import annotations

import pytest

from gateway.cli import main as soulgate
from gateway.testing import GatewayFactory, installed_plugins


def test_discovered_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    info = {p.name: p for p in installed_plugins()}["myplugin"]
    assert (info.source, info.state) == ("entry point", "active")
    assert info.version == "0.1.0"
    assert "soulgate_skills" in info.hooks
    # What an operator sees in `soulgate plugins`:
    assert soulgate(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["myplugin", "entry", "point", "0.1.0", "active", "skills"] in rows


async def test_command_answers(soulgate_gateway: GatewayFactory) -> None:
    # entry_points=True loads installed plugins, as `soulgate run` does.
    async with soulgate_gateway(entry_points=True) as gw:
        assert await gw.ask("/myplugin hello") == "myplugin heard: hello"
        assert "/myplugin TEXT" in await gw.ask("/help")
