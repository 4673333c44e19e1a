"""Helpers for the agent tests: SOUL directories and gateway configs pointing at the fake LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from gateway.config import Config
from gateway.testing import GatewayHarness, test_config
from tests.fakes import llm as llm_fakes
from tests.fakes.llm import FakeLLM

fake_llm = llm_fakes.fake_llm


@pytest_asyncio.fixture(scope="session", autouse=True)
async def _litellm_imported() -> None:
    """Import litellm once, up front: the import takes seconds, which would otherwise eat
    the reply timeout of whichever test happens to run first."""
    from agents.llm import load_litellm

    await load_litellm()

ADMIN_TOKEN = "test-admin-token"  # set by gateway.testing's fast test config


def write_soul(soul_dir: Path, name: str, front: str = "", body: str | None = None) -> Path:
    """``soul_dir/<name>.md`` with ``front`` as its front matter (YAML lines)."""
    soul_dir.mkdir(parents=True, exist_ok=True)
    path = soul_dir / f"{name}.md"
    text = f"---\nname: {name}\n{front.strip()}\n---\n" if front.strip() else f"---\nname: {name}\n---\n"
    path.write_text(text + (body or f"You are {name}, a test agent.") + "\n", encoding="utf-8")
    return path


def model(fake: FakeLLM, name: str, **extra: Any) -> dict[str, Any]:
    """A ``[models.<alias>]`` table for model ``name`` on the fake server."""
    return {"model": f"openai/{name}", "api_base": fake.api_base, "api_key": "sk-test", "timeout": 5.0, **extra}


def agent_config(fake: FakeLLM | None, soul_dir: Path, models: dict[str, Any] | None = None,
                 **extra: Any) -> Config:
    if models is None:
        assert fake is not None
        models = {"default": model(fake, "m-default")}
    data: dict[str, Any] = {"agents": {"soul_dir": str(soul_dir)}, "models": models}
    for key, value in extra.items():
        data[key] = value
    return test_config(data)


async def admin(h: GatewayHarness, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{h.gateway.admin_port}{path}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.request(
        method, url, headers=headers, data=json.dumps(body) if body is not None else None
    ) as resp:
        return resp.status, await resp.json()


async def runs(h: GatewayHarness) -> list[dict[str, Any]]:
    """agent_runs rows, oldest first."""
    rows = await h.gateway.store.runs.recent(limit=1000)
    return list(reversed(rows))


async def audit(h: GatewayHarness, kind: str) -> list[dict[str, Any]]:
    return list(reversed(await h.gateway.store.audit.recent(limit=1000, kind=kind)))
