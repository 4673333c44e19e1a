"""pytest fixtures for soulgate plugins (registered through the ``pytest11`` entry point).

- ``soulgate_server_url`` (session): an embedded Postgres with pgvector, or the server named by
  ``$SOULGATE_TEST_SERVER_URL`` (a role that may create databases, e.g. a CI service).
- ``soulgate_database_url``: a fresh, empty database for one test.
- ``soulgate_fake_llm``: a fake OpenAI-compatible model server (:mod:`gateway.testing.fake_llm`);
  ``soulgate_model_config(fake)`` is the ``[models.default]`` table that points agents at it.
- ``soulgate_gateway``: a factory; ``async with soulgate_gateway(plugins=[("name", module)]) as h``
  gives a :class:`~gateway.testing.GatewayHarness` (``h.send``, ``h.expect_reply``, ``h.ask``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import pytest_asyncio

from .fake_llm import FakeLLM, start_fake_llm
from .harness import GatewayHarness, fresh_database, running_gateway, test_server_url

__all__ = [
    "GatewayFactory",
    "soulgate_database_url",
    "soulgate_fake_llm",
    "soulgate_gateway",
    "soulgate_model_config",
    "soulgate_server_url",
]

#: the type of the ``soulgate_gateway`` fixture, for annotating tests
GatewayFactory = Callable[..., AbstractAsyncContextManager[GatewayHarness]]


@pytest.fixture(scope="session")
def soulgate_server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    external = os.environ.get("SOULGATE_TEST_SERVER_URL")
    if external:
        return external
    return test_server_url(tmp_path_factory.mktemp("soulgate-pg"))


@pytest_asyncio.fixture
async def soulgate_database_url(soulgate_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(soulgate_server_url) as url:
        yield url


@pytest.fixture
def soulgate_gateway(soulgate_database_url: str) -> GatewayFactory:
    def factory(**kwargs: Any) -> AbstractAsyncContextManager[GatewayHarness]:
        return running_gateway(soulgate_database_url, **kwargs)

    return factory


@pytest_asyncio.fixture
async def soulgate_fake_llm() -> AsyncIterator[FakeLLM]:
    """A fake OpenAI-compatible server; script answers with ``enqueue``, see what was sent in ``requests``."""
    async with start_fake_llm() as fake:
        yield fake


def soulgate_model_config(fake: FakeLLM, model: str = "fake-model") -> dict[str, Any]:
    """``{"models": {"default": ...}}`` for ``test_config``: agents answer through ``fake``."""
    return {"models": {"default": {"model": f"openai/{model}", "api_base": fake.api_base,
                                   "api_key": "sk-test", "timeout": 10.0}}}
