"""Test-only plugin a gateway subprocess loads through ``plugins.modules``: the Teams channel
with the fake Bot Framework's loopback credentials factory.

A credentials factory is a Python object, so no config file can name it; MSAL would
otherwise run instance discovery against login.microsoftonline.com (see
tests/fakes/teams.py). The config disables the built-in ``teams`` plugin and loads this
one; the fake's CA file comes in ``$SOULGATE_FAULTS_TEAMS_CA``.
"""

from __future__ import annotations

import os

from adapters.teams import TeamsAdapter, TeamsConfig
from gateway import AdapterSpec, hookimpl
from tests.fakes.teams import LoopbackCredentialFactory

__all__ = ["CA_ENV", "soulgate_adapters"]

CA_ENV = "SOULGATE_FAULTS_TEAMS_CA"


def _build(account: str, cfg: TeamsConfig) -> TeamsAdapter:
    ca_file = os.environ.get(CA_ENV)
    if not ca_file:
        raise ValueError(f"${CA_ENV} must name the fake Bot Framework's CA file")
    factory = LoopbackCredentialFactory(cfg.app_id, cfg.app_password.get_secret_value(), ca_file=ca_file)
    return TeamsAdapter(account, cfg, credentials_factory=factory)


@hookimpl
def soulgate_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(channel="teams", factory=_build, config_model=TeamsConfig,
                        description="Teams with the fake Bot Framework's loopback credentials (tests)")]
