"""Webhook mode: Telegram POSTs each update to our public listener.

The request is checked before anything else: Telegram echoes the
``secret_token`` we gave ``setWebhook`` in ``X-Telegram-Bot-Api-Secret-Token``
and we compare it in constant time (aiogram's SimpleRequestHandler accepts
everything when no secret is configured; we always have one). A request
without the right secret gets 401 and leaves no trace in the database: a
stranger must not be able to fill our audit log.

The 200 is sent only after the update is in the inbox. Telegram retries any
other answer, in order, so a 5xx while the database is away loses nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram.exceptions import TelegramAPIError
from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError

from gateway import jsontext

__all__ = ["SECRET_HEADER", "WebhookReceiver", "derive_secret"]

log = logging.getLogger("soulgate.adapters.telegram")
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def derive_secret(token: str) -> str:
    """A webhook secret every instance computes alike, and nobody without the token can."""
    return hmac.new(token.encode(), b"soulgate telegram webhook secret", hashlib.sha256).hexdigest()


class WebhookReceiver:
    def __init__(
        self, *, secret: str, ingest: Callable[[Update, dict[str, Any]], Awaitable[None]],
        prepare: Callable[[], Awaitable[Any]],
    ) -> None:
        self._secret = secret.encode()
        self._ingest = ingest
        self._prepare = prepare
        self.received = 0
        self.rejected = 0

    async def handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            self.rejected += 1
            log.warning("telegram webhook: request from %s with a %s secret token; refused",
                        request.remote, "wrong" if given else "missing")
            return web.json_response({"ok": False, "error": "unauthorized"}, status=401)
        try:
            body = jsontext.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested ~1000 deep
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("update_id"), int):
            return web.json_response({"ok": False, "error": "not a Telegram update"}, status=400)
        try:
            update = Update.model_validate(body)
        except ValidationError as exc:
            return web.json_response(
                {"ok": False, "error": f"malformed update: {exc.error_count()} problems"}, status=400)
        try:
            await self._prepare()  # who we are (getMe), needed to see mentions of us
        except TelegramAPIError as exc:
            log.warning("telegram webhook: getMe failed (%s); asking Telegram to retry", exc.message)
            return web.json_response({"ok": False, "error": "not ready"}, status=503)
        try:
            await self._ingest(update, body)
        except Exception as exc:  # the database: Telegram will retry the update
            log.warning("telegram webhook: could not store update %s: %s", body["update_id"], exc)
            return web.json_response({"ok": False, "error": "try again later"}, status=503)
        self.received += 1
        return web.json_response({"ok": True})
