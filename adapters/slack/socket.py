"""Socket Mode: events over a WebSocket the gateway opens (no public URL needed).

slack-sdk's aiohttp ``SocketModeClient`` keeps the connection (hello,
ping/pong, ``disconnect`` → reconnect through ``apps.connections.open``). Our
listener acknowledges an envelope only after ``admit`` committed it; if the
admit fails there is no ack and Slack redelivers. Several gateway instances may
each hold a connection: Slack gives each a share of the events, and a
redelivery that lands on another instance is a duplicate the inbox absorbs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

__all__ = ["SocketModeRunner"]

log = logging.getLogger("soulgate.adapters.slack")

Receiver = Callable[[dict[str, Any]], Awaitable[object]]


class SocketModeRunner:
    def __init__(self, app_token: str, api_base_url: str, receive: Receiver, account: str) -> None:
        self._app_token = app_token
        self._base_url = api_base_url
        self._receive = receive
        self._account = account
        self._client: SocketModeClient | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.acked = 0

    @property
    def connected(self) -> bool:
        client = self._client
        session = client.current_session if client is not None else None
        return session is not None and not session.closed

    async def start(self) -> None:
        # The client's own web client defaults to slack.com; ours follows api_base_url.
        web = AsyncWebClient(base_url=self._base_url)
        self._client = SocketModeClient(
            app_token=self._app_token, web_client=web,
            logger=logging.getLogger(f"soulgate.adapters.slack.{self._account}.socket"),
        )
        self._client.socket_mode_request_listeners.append(self._on_request)
        # connect() retries until it succeeds: run it aside so a Slack outage does not block start.
        self._connecting = asyncio.create_task(self._client.connect(), name=f"slack-socket-{self._account}")

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with suppress(BaseException):
                await self._connecting
        if self._client is not None:
            with suppress(Exception):
                await self._client.close()
            self._client = None

    async def _on_request(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        if request.type == "events_api" and request.payload.get("type") == "event_callback":
            try:
                await self._receive(request.payload)
            except ValueError as exc:  # malformed: a redelivery would be just as bad
                log.warning("slack/%s: malformed Socket Mode event: %s", self._account, exc)
            except Exception:
                # No ack: Slack redelivers the envelope (to this or another connection).
                log.exception("slack/%s: could not admit event %s; not acknowledged",
                              self._account, request.payload.get("event_id"))
                return
        # Slash commands and interactivity are not handled; ack them so Slack stops retrying.
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        self.acked += 1
