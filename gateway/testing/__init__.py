"""The test kit for plugin authors (and for soulgate's own tests).

Installed as a pytest plugin (entry point ``pytest11``), it offers fixtures
that run a real gateway on embedded Postgres with a fake channel; see
:mod:`gateway.testing.plugin`. Envelope factories per channel are in
:mod:`gateway.testing.factories`.
"""

from .discovery import PluginInfo, installed_plugins
from .factories import (
    console_envelope,
    email_envelope,
    fake_channel,
    slack_envelope,
    teams_envelope,
    telegram_envelope,
)
from .fake_adapter import FakeAdapter, SentMessage, make_envelope
from .fake_llm import FakeLLM, Fault, Text, ToolCall, ToolCalls, start_fake_llm
from .harness import GatewayHarness, fresh_database, running_gateway, test_config, test_server_url
from .plugin import GatewayFactory

__all__ = [
    "FakeAdapter",
    "FakeLLM",
    "Fault",
    "GatewayFactory",
    "GatewayHarness",
    "PluginInfo",
    "SentMessage",
    "Text",
    "ToolCall",
    "ToolCalls",
    "console_envelope",
    "email_envelope",
    "fake_channel",
    "fresh_database",
    "installed_plugins",
    "make_envelope",
    "running_gateway",
    "slack_envelope",
    "start_fake_llm",
    "teams_envelope",
    "telegram_envelope",
    "test_config",
    "test_server_url",
]
