"""The public listener on which adapters mount webhooks: routes, size limits, unknown paths."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway import AdapterContext
from gateway.testing import FakeAdapter, make_envelope, running_gateway, test_config


class WebhookAdapter(FakeAdapter):
    """A fake channel that receives messages by webhook, admitting before it answers 200."""

    async def start(self, ctx: AdapterContext) -> None:
        await super().start(ctx)
        ctx.add_route("POST", "/hook/fake", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        result = await self.admit(make_envelope(body["text"], external_id=body["id"]))
        return web.json_response({"created": result.created})


async def test_webhook_routes_limits_and_404(soulgate_database_url: str) -> None:
    config = test_config({"http": {"max_body_bytes": 10_000}})
    async with running_gateway(soulgate_database_url, config=config, adapter=WebhookAdapter()) as h, \
            aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{h.gateway.public_port}"
        async with http.post(f"{base}/hook/fake", json={"id": "e1", "text": "/help"}) as r:
            assert r.status == 200 and (await r.json())["created"] is True
        async with http.post(f"{base}/hook/fake", json={"id": "e1", "text": "/help"}) as r:
            assert (await r.json())["created"] is False  # a platform retry: acknowledged, not stored again
        await h.expect_reply("Commands")
        async with http.post(f"{base}/hook/fake", data=b"{" + b" " * 20_000 + b"}") as r:
            assert r.status == 413
        async with http.post(f"{base}/elsewhere", json={}) as r:
            assert r.status == 404
        await h.idle()
        assert len(h.adapter.sent) == 1
