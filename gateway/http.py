"""The two HTTP listeners: the public one (adapter webhooks) and the admin one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["bound_port", "start_admin", "start_public"]

log = logging.getLogger("soulgate.http")


def bound_port(runner: web.AppRunner) -> int:
    """The port a site actually bound (port 0 in config means any free port)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("listener has no socket")


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def start_public(gw: Gateway) -> web.AppRunner:
    cfg = gw.config.http
    app = web.Application(client_max_size=cfg.max_body_bytes)
    for method, path, handler in gw.public_routes:
        app.router.add_route(method, path, handler)
    runner = await _serve(app, cfg.host, cfg.port)
    gw.public_port = bound_port(runner)
    log.info("public HTTP listener on http://%s:%d", cfg.host, gw.public_port)
    return runner


async def start_admin(gw: Gateway) -> web.AppRunner:
    from .admin import admin_app

    cfg = gw.config.admin
    runner = await _serve(admin_app(gw), cfg.host, cfg.port)
    gw.admin_port = bound_port(runner)
    log.info("admin endpoint on http://%s:%d", cfg.host, gw.admin_port)
    return runner
