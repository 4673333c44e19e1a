"""The test kit for plugin authors (and for soulgate's own tests).

Installed as a pytest plugin (entry point ``pytest11``), it offers fixtures
that run a real gateway on embedded Postgres with a fake channel; see
:mod:`gateway.testing.plugin`.
"""

from .fake_adapter import FakeAdapter, SentMessage, make_envelope
from .harness import GatewayHarness, fresh_database, running_gateway, test_config, test_server_url

__all__ = [
    "FakeAdapter",
    "GatewayHarness",
    "SentMessage",
    "fresh_database",
    "make_envelope",
    "running_gateway",
    "test_config",
    "test_server_url",
]
