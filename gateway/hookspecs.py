"""The whole plugin contract: every hook a soulgate plugin may implement.

Plugins implement hooks with ``@gateway.hookimpl`` on module-level functions
(or methods of an object they register). Any hook may be implemented as an
``async def``: the gateway awaits it. The gateway calls each implementation on
its own, with a timeout, so one plugin that raises or hangs is logged and
audited under its name while the others still run.

Every hook is documented in ``docs/hooks.md``; a test fails when the two
disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .adapter import AdapterSpec
    from .envelope import Envelope, Reply
    from .services import Services
    from .skills import Skill
    from .turn import Responder

PROJECT = "soulgate"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["HOOK_NAMES", "PROJECT", "hookimpl", "hookspec"]


@hookspec
def soulgate_adapters() -> list[AdapterSpec]:
    """Channels this plugin provides.

    Sync. Return a list of :class:`gateway.AdapterSpec`. The gateway builds one
    adapter per ``[channels.<channel>.<account>]`` config table, validated with
    the spec's ``config_model`` (or ``config_loader``). Called once at start.
    """
    raise NotImplementedError


@hookspec
def soulgate_skills() -> list[Skill]:
    """Slash commands and LLM tools this plugin provides.

    Sync. Return a list of :class:`gateway.Command` and :class:`gateway.Tool`.
    Called once at start (and by ``soulgate check`` / ``soulgate plugins``).
    Two plugins offering the same name is reported by ``soulgate check``; the
    one called first wins (plugins are called last-loaded first, so a
    third-party plugin's ``/help`` replaces the built-in one).
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def soulgate_responder(services: Services) -> Responder | None:
    """The responder that answers messages that are not commands.

    Sync, first non-None result wins. The built-in default route (``trylast``)
    answers with a placeholder; the SOUL agents plugin overrides it, and a
    third-party responder overrides both. Called once at start.
    """
    raise NotImplementedError


@hookspec
def soulgate_inbound(envelope: Envelope, services: Services) -> Envelope | bool | None:
    """Filter or enrich an inbound message before it is routed.

    Sync or async. Called in plugin order for each claimed inbox row; each
    implementation sees the previous one's result. Return ``None`` to leave it
    unchanged, an :class:`gateway.Envelope` to replace it (use
    ``envelope.evolve(...)``), or ``False`` to drop it (the row is marked done
    with no reply and an audit row names the plugin).
    """
    raise NotImplementedError


@hookspec
def soulgate_reply(reply: Reply, envelope: Envelope | None, services: Services) -> Reply | None:
    """Transform a reply before it is stored for delivery.

    Sync or async. Called in plugin order for every reply of a turn (and for
    proactive sends, with ``envelope`` None); each implementation sees the
    previous result. Return ``None`` to leave it unchanged or a new
    :class:`gateway.Reply`.
    """
    raise NotImplementedError


@hookspec
def soulgate_config_model() -> type[BaseModel] | None:
    """The pydantic model of this plugin's config table ``[plugins.config.<name>]``.

    Sync. The gateway validates the table with it at start and in ``soulgate
    check`` (a missing table validates as ``{}``); the validated object is
    available as ``services.plugin_config(<name>)``. A table that does not
    validate is reported with its key path and the plugin is not loaded.
    """
    raise NotImplementedError


@hookspec
def soulgate_startup(services: Services) -> None:
    """The gateway has started (storage ready, before adapters receive).

    Sync or async. A plugin that fails here is logged, audited and disabled;
    the gateway goes on.
    """
    raise NotImplementedError


@hookspec
def soulgate_shutdown(services: Services) -> None:
    """The gateway is stopping (after workers drained). Sync or async."""
    raise NotImplementedError


@hookspec
def soulgate_error(plugin: str, hook: str, error: BaseException, envelope: Envelope | None) -> None:
    """Another plugin failed in a hook (or timed out).

    Sync or async. For error reporting plugins (Sentry, paging). Failures in
    this hook are only logged, never re-reported.
    """
    raise NotImplementedError


def _hook_names() -> tuple[str, ...]:
    return tuple(sorted(n for n in globals() if n.startswith("soulgate_")))


#: every hook name, for docs tests and ``soulgate plugins``
HOOK_NAMES: tuple[str, ...] = _hook_names()

