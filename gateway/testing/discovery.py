"""Plugin discovery as the gateway does it, for a plugin author's "is it found?" test."""

from __future__ import annotations

from ..config import Config
from ..plugins import PluginInfo
from ..runtime import Gateway
from .harness import test_config

__all__ = ["PluginInfo", "installed_plugins"]


def installed_plugins(config: Config | None = None) -> list[PluginInfo]:
    """What ``soulgate plugins`` lists: built-ins, installed entry points, config modules.

    Nothing is started and no database is needed. Each :class:`PluginInfo` has
    ``name``, ``source`` ("built-in", "entry point", "config"), ``version``,
    ``state`` ("active", "disabled", "failed"), ``error`` and ``hooks``.
    """
    gw = Gateway(config or test_config())
    gw.load_plugins()
    return gw.plugins.plugins()
