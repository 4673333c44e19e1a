"""fetch_url: size cap, timeout, redirects, and the SSRF block on resolved addresses.

A local aiohttp server on 127.0.0.1 plays the web. Loopback is blocked by
default, so tests that need to reach it allow ``127.0.0.1/32`` explicitly
(as an operator would allow an intranet range).
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from gateway import ToolContext
from gateway.testing import GatewayFactory, make_envelope, test_config
from plugins.fetch_url import BlockedAddress, FetchConfig, FetchError, blocked, fetch, html_to_text

LOOPBACK = FetchConfig(allow_networks=["127.0.0.1/32"])  # type: ignore[list-item]


@pytest_asyncio.fixture
async def site() -> AsyncIterator[str]:
    async def text(_: web.Request) -> web.Response:
        return web.Response(text="hello from the web")

    async def page(_: web.Request) -> web.Response:
        html = ("<html><head><title>T</title><style>p{}</style></head><body><h1>Title</h1>"
                "<script>alert(1)</script><p>First &amp; second</p><p>third</p></body></html>")
        return web.Response(text=html, content_type="text/html")

    async def big(_: web.Request) -> web.Response:
        return web.Response(text="x" * 50_000)

    async def bomb(_: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"0" * 5_000_000), headers={
            "Content-Encoding": "gzip", "Content-Type": "text/plain"})

    release = asyncio.Event()  # set at teardown, so the server does not wait for the slow handler

    async def slow(_: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 30)
        return web.Response(text="late")

    async def binary(_: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG...", content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    for path, handler in {"/text": text, "/page": page, "/big": big, "/bomb": bomb, "/slow": slow,
                          "/binary": binary, "/redirect": redirect, "/loop": loop}.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


def test_address_classification() -> None:
    allow = [ipaddress.ip_network("10.1.0.0/16")]
    for ip in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
               "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1", "ff02::1"):
        assert blocked(ipaddress.ip_address(ip), []), ip
    for ip in ("93.184.216.34", "2606:4700::1111", "10.1.2.3"):
        assert not blocked(ipaddress.ip_address(ip), allow), ip


async def test_fetches_text_and_html_as_text(site: str) -> None:
    got = await fetch(f"{site}/text", LOOPBACK)
    assert (got["status"], got["text"], got["truncated"]) == (200, "hello from the web", False)
    page = await fetch(f"{site}/page", LOOPBACK)
    assert page["text"] == "Title\nFirst & second\nthird"
    assert html_to_text("<p>a<br>b</p>") == "a\nb"
    png = await fetch(f"{site}/binary", LOOPBACK)
    assert png["text"] is None and png["content_type"] == "image/png"


async def test_size_cap_cuts_the_body_even_when_compressed(site: str) -> None:
    cfg = FetchConfig(allow_networks=["127.0.0.1/32"], max_bytes=1000)  # type: ignore[list-item]
    got = await fetch(f"{site}/big", cfg)
    assert (got["bytes"], got["truncated"], got["text"]) == (1000, True, "x" * 1000)
    bomb = await fetch(f"{site}/bomb", cfg)
    assert (bomb["bytes"], bomb["truncated"]) == (1000, True)


async def test_timeout(site: str) -> None:
    cfg = FetchConfig(allow_networks=["127.0.0.1/32"], timeout_seconds=0.3)  # type: ignore[list-item]
    with pytest.raises(FetchError, match=r"timed out after 0.3s"):
        await fetch(f"{site}/slow", cfg)


async def test_loopback_and_private_addresses_are_refused_by_default(site: str) -> None:
    port = site.rsplit(":", 1)[1]
    cfg = FetchConfig()
    for url in (f"{site}/text", f"http://[::1]:{port}/text", f"http://[::ffff:127.0.0.1]:{port}/",
                "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"):
        with pytest.raises(BlockedAddress, match="private/loopback/link-local"):
            await fetch(url, cfg)
    # a name is checked on what it resolves to
    with pytest.raises(BlockedAddress, match=r"refused: localhost is (127\.0\.0\.1|::1)"):
        await fetch(f"http://localhost:{port}/text", cfg)
    # legacy numeric forms never reach a socket
    with pytest.raises(FetchError):
        await fetch(f"http://2130706433:{port}/text", cfg)


async def test_redirects_are_checked_hop_by_hop(site: str) -> None:
    port = site.rsplit(":", 1)[1]
    ok = await fetch(f"{site}/redirect?to=/text", LOOPBACK)
    assert ok["text"] == "hello from the web" and ok["url"] == f"{site}/text"
    for target in (f"http://127.0.0.2:{port}/text", f"http://[::1]:{port}/text", "http://192.168.0.1/"):
        with pytest.raises(BlockedAddress):
            await fetch(f"{site}/redirect?to={target}", LOOPBACK)
    with pytest.raises(FetchError, match="only http and https"):
        await fetch(f"{site}/redirect?to=file:///etc/passwd", LOOPBACK)
    with pytest.raises(FetchError, match="too many redirects"):
        await fetch(f"{site}/loop", LOOPBACK)


async def test_bad_urls(site: str) -> None:
    for url in ("ftp://example.org/", "not a url", "http://", "javascript:alert(1)"):
        with pytest.raises(FetchError):
            await fetch(url, FetchConfig())
    with pytest.raises(FetchError, match="credentials"):
        await fetch(site.replace("http://", "http://user:pw@") + "/text", LOOPBACK)


async def test_as_a_tool_with_its_config_table(site: str, soulgate_gateway: GatewayFactory) -> None:
    config = test_config({"plugins": {"config": {"fetch_url": {
        "allow_networks": ["127.0.0.1/32"], "max_bytes": 5}}}})
    async with soulgate_gateway(config=config) as gw:
        plugin, tool = gw.services.tools()["fetch_url"]
        assert plugin == "fetch_url" and tool.parameters["required"] == ["url"]
        ctx = ToolContext(envelope=make_envelope("x"), services=gw.services, plugin=plugin, agent="a")
        got = await tool.handler(ctx, {"url": f"{site}/text"})
        assert (got["text"], got["truncated"]) == ("hello", True)
        refused = await tool.handler(ctx, {"url": "http://[::1]/"})
        assert refused["error"] == "refused: ::1, a private/loopback/link-local address, is not fetched"
        assert (await tool.handler(ctx, {"url": 3}))["error"] == "url must be a non-empty string"


async def test_without_config_loopback_stays_blocked(site: str, soulgate_gateway: GatewayFactory) -> None:
    async with soulgate_gateway() as gw:
        plugin, tool = gw.services.tools()["fetch_url"]
        ctx = ToolContext(envelope=make_envelope("x"), services=gw.services, plugin=plugin, agent="a")
        assert "refused" in (await tool.handler(ctx, {"url": f"{site}/text"}))["error"]


def test_config_is_validated() -> None:
    from pydantic import ValidationError

    for bad in ({"allow_networks": ["not-a-net"]}, {"max_bytes": 0}, {"timeout_seconds": -1},
                {"max_redirect": 2}):
        with pytest.raises(ValidationError):
            FetchConfig.model_validate(bad)
