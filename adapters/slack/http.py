"""The Events API endpoint: verify the raw body, admit, and only then answer 200.

We verify and admit ourselves instead of handing the request to bolt: bolt
acknowledges before its listeners run (a crash afterwards loses the event) and
lets ``SignatureVerifier``'s ``ValueError`` on a non-numeric timestamp escape as
a 500, which Slack retries. Here every authentication failure is a 401 with
nothing stored, and a 200 means the event is committed to the inbox (or was
deliberately ignored).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from gateway import jsontext

__all__ = ["EventsEndpoint"]

log = logging.getLogger("soulgate.adapters.slack")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

#: what the endpoint hands a verified ``event_callback`` to; raises ValueError if malformed
Receiver = Callable[[dict[str, Any]], Awaitable[object]]


class EventsEndpoint:
    def __init__(self, signing_secret: str, receive: Receiver, account: str) -> None:
        self._verifier = SignatureVerifier(signing_secret)
        self._receive = receive
        self._account = account

    def _authentic(self, request: web.Request, body: bytes) -> bool:
        timestamp = request.headers.get("X-Slack-Request-Timestamp")
        signature = request.headers.get("X-Slack-Signature")
        if not timestamp or not signature or not _TIMESTAMP.fullmatch(timestamp):
            return False
        try:  # is_valid checks the 5-minute window, then compares HMACs in constant time
            return self._verifier.is_valid(body, timestamp, signature)
        except (ValueError, TypeError):
            return False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # the raw bytes: the signature covers exactly these
        if not self._authentic(request, body):
            log.warning("slack/%s: rejected a request with a missing or invalid signature", self._account)
            return _error(401, "invalid signature")
        try:
            payload = jsontext.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested ~1000 deep
            return _error(400, "body is not JSON")
        if not isinstance(payload, dict):
            return _error(400, "body is not a JSON object")
        kind = payload.get("type")
        if kind == "url_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                return _error(400, "url_verification without a challenge")
            return web.json_response({"challenge": challenge})
        if kind != "event_callback":
            return web.Response(status=200)  # app_rate_limited and other notices: nothing to store
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.info("slack/%s: Slack retry #%s of %s (%s)", self._account, retry,
                     payload.get("event_id"), request.headers.get("X-Slack-Retry-Reason"))
        try:
            await self._receive(payload)
        except ValueError as exc:
            return _error(400, str(exc))
        except Exception:
            # Not stored: a non-2xx makes Slack deliver it again later.
            log.exception("slack/%s: could not admit event %s", self._account, payload.get("event_id"))
            return _error(503, "temporarily unable to accept events")
        return web.Response(status=200)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)
