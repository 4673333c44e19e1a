"""The admin HTTP endpoint: health, metrics, status, audit, dead letters, proactive sends.

Bound to 127.0.0.1 by default; every route but ``/healthz`` needs the bearer
token, compared in constant time. Secrets never appear in any answer.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .envelope import ReplyAddress

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["admin_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN = frozenset({"/healthz"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _int_param(request: web.Request, name: str, default: int, maximum: int = 1000) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be an integer"}),
                                 content_type="application/json") from None
    return max(1, min(value, maximum))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_loads(text: str) -> Any:
    """JSON as the RFC has it: Python's NaN and Infinity extensions could not be stored anyway."""
    return json.loads(text, parse_constant=_no_constant)


def admin_app(gw: Gateway) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(
            token.encode(), gw.admin_token.encode()
        ):
            return _error(401, "missing or wrong bearer token")
        return await handler(request)

    app = web.Application(middlewares=[auth], client_max_size=gw.config.admin.max_body_bytes)

    async def healthz(_: web.Request) -> web.Response:
        return _json({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        ok = gw.ready and await gw.store.db.ping()
        if ok:
            gw.note_db_ok()
        return _json({"ready": ok, "database": ok}, 200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        try:
            await gw.status()  # refreshes the queue-depth gauges
        except Exception:
            pass  # metrics must answer even when the database does not
        return web.Response(body=gw.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(_: web.Request) -> web.Response:
        return _json(await gw.status())

    async def plugins(_: web.Request) -> web.Response:
        return _json({"plugins": [p.to_json() for p in gw.plugins.plugins()]})

    async def audit(request: web.Request) -> web.Response:
        before = request.query.get("before")
        rows = await gw.store.audit.recent(
            limit=_int_param(request, "limit", 100),
            kind=request.query.get("kind"),
            before=int(before) if before and before.isdigit() else None,
        )
        return _json({"audit": rows})

    async def dead(request: web.Request) -> web.Response:
        return _json({"dead": await gw.store.outbox.dead(_int_param(request, "limit", 100))})

    async def conversations(request: web.Request) -> web.Response:
        rows = await gw.store.conversations.recent(
            _int_param(request, "limit", 100), request.query.get("channel")
        )
        return _json({"conversations": rows})

    async def runs(request: web.Request) -> web.Response:
        """Agent run records, newest first, with totals overall, per agent and per model."""
        filters = {k: request.query.get(q) for k, q in
                   (("agent", "agent"), ("model", "model"), ("conversation_key", "conversation"))}
        before = request.query.get("before")
        if before is not None and not before.isdigit():
            return _error(400, "before must be a run id")
        rows = await gw.store.runs.recent(limit=_int_param(request, "limit", 100),
                                          before=int(before) if before else None, **filters)
        return _json({"runs": rows, "totals": await gw.store.runs.totals(**filters)})

    async def reload(request: web.Request) -> web.Response:
        """This instance reloads; with ``everywhere=true``, and only if that went well, every
        other instance is then asked to (each re-reads its own files; see its audit row)."""
        raw = request.query.get("everywhere", "false").lower()
        if raw not in _BOOLEANS:
            return _error(400, "everywhere must be true or false")
        result = await gw.reload()
        result["broadcast"] = False
        if _BOOLEANS[raw] and result["ok"]:
            try:
                await gw.ask_others_to_reload()
                result["broadcast"] = True
            except Exception as exc:  # reloaded here; the others were not reached
                result["problems"] = [*result["problems"], f"could not ask the other instances: {exc}"]
                return _json(result, 503)
        return _json(result, 200 if result["ok"] else 422)

    async def send(request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=_strict_loads)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested ~1000 deep
            return _error(400, "body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
            return _error(400, "body must be an object with a non-empty 'text'")
        target: ReplyAddress | str
        if isinstance(body.get("conversation"), str):
            target = body["conversation"]
        elif isinstance(body.get("address"), dict):
            try:
                target = ReplyAddress.from_json(body["address"])
            except (KeyError, ValueError, TypeError) as exc:
                return _error(400, f"invalid address: {exc}")
        else:
            return _error(400, "name a stored 'conversation' key or an 'address'")
        try:
            ids = await gw.send_proactive(target, body["text"])
        except KeyError as exc:
            return _error(404, str(exc.args[0]))
        return _json({"queued": ids}, 202)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/plugins", plugins)
    app.router.add_get("/api/audit", audit)
    app.router.add_get("/api/outbox/dead", dead)
    app.router.add_get("/api/conversations", conversations)
    app.router.add_post("/api/send", send)
    app.router.add_get("/api/runs", runs)
    app.router.add_post("/api/reload", reload)
    return app
