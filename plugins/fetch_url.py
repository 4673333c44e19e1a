"""Bundled plugin ``fetch_url``: an LLM tool that reads a web page, safely.

An agent that can fetch any URL can be talked into fetching internal ones
(SSRF: the cloud metadata service, the admin endpoint on 127.0.0.1, the
database's HTTP console). So every address the request would connect to is
checked, after DNS resolution and on every redirect, and refused unless it is
a public unicast address (or inside ``allow_networks``). Checking the
resolved addresses inside the connector, not the host name beforehand, also
defeats DNS rebinding: the address checked is the address connected to.

The body is read up to ``max_bytes`` (decompressed) and the whole fetch,
redirects included, has one ``timeout_seconds``. Config:
``[plugins.config.fetch_url]``, see :class:`FetchConfig`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from gateway import Skill, Tool, ToolContext, hookimpl

__all__ = ["BlockedAddress", "FetchConfig", "FetchError", "fetch"]

SOULGATE_PLUGIN_API = "1.0"
PLUGIN = "fetch_url"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_REDIRECTS = {301, 302, 303, 307, 308}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml",
               "application/javascript", "application/ld+json")


class FetchConfig(BaseModel):
    """``[plugins.config.fetch_url]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: body bytes read at most (after decompression); the rest is cut off
    max_bytes: int = Field(default=200_000, gt=0, le=20_000_000)
    #: seconds for the whole fetch, redirects and body included
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_redirects: int = Field(default=3, ge=0, le=10)
    #: networks exempt from the private-address block, e.g. ``["10.1.2.0/24"]`` for an intranet
    #: wiki (or ``["127.0.0.1/32"]`` in tests). Empty: only public addresses.
    allow_networks: list[IPNetwork] = Field(default_factory=list)
    user_agent: str = "soulgate-fetch_url/1.0"


class FetchError(Exception):
    """The fetch was refused or failed; the message is for the model (and the user)."""


class BlockedAddress(FetchError):
    """The URL leads to a private, loopback, link-local or otherwise non-public address."""


def blocked(ip: IPAddress, allow: list[IPNetwork]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip.version == net.version and ip in net for net in allow):
        return False
    # is_global is False for private, loopback, link-local, shared (100.64/10),
    # documentation, reserved and unspecified ranges; multicast is "global" but
    # never a web server.
    return not ip.is_global or ip.is_multicast


def _check_ip(host: str, ip_text: str, allow: list[IPNetwork]) -> None:
    ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
    if blocked(ip, allow):
        what = f"{host} is {ip}" if host != str(ip) else str(ip)
        raise BlockedAddress(f"refused: {what}, a private/loopback/link-local address, is not fetched")


class _GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses if any address is not allowed."""

    def __init__(self, allow: list[IPNetwork]) -> None:
        self._inner = DefaultResolver()
        self._allow = allow

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:  # all of them: the connector may try any
            _check_ip(host, r["host"], self._allow)
        return results

    async def close(self) -> None:
        await self._inner.close()


def _check_url(url: URL, allow: list[IPNetwork]) -> None:
    if url.scheme not in ("http", "https") or not url.host:
        raise FetchError(f"refused: only http and https URLs can be fetched, not {str(url)[:200]!r}")
    if url.user or url.password:
        raise FetchError("refused: URLs with credentials are not fetched")
    try:
        # aiohttp connects to IP literals without asking the resolver
        _check_ip(url.host, url.host, allow)
    except ValueError:
        pass  # a name: the resolver checks what it resolves to


def html_to_text(html: str) -> str:
    """Readable text of an HTML page (script/style dropped, blocks on their own lines)."""
    from ._html_text import html_to_text as convert  # html.parser: on the first HTML page, not at start

    return convert(html)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65_536):
        body.extend(chunk)
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


async def fetch(url: str, config: FetchConfig) -> dict[str, Any]:
    """GET ``url`` under ``config``'s limits; raises :class:`FetchError` when refused or failed."""
    try:
        current = URL(url.strip())
    except (ValueError, TypeError) as exc:
        raise FetchError(f"not a URL: {exc}") from None
    allow = list(config.allow_networks)
    connector = aiohttp.TCPConnector(resolver=_GuardedResolver(allow), use_dns_cache=False)
    headers = {"User-Agent": config.user_agent, "Accept": "text/html, text/plain, application/json, */*;q=0.5"}
    try:
        async with asyncio.timeout(config.timeout_seconds), aiohttp.ClientSession(
            connector=connector, headers=headers, trust_env=False,  # a proxy would bypass the check
        ) as session:
            for _hop in range(config.max_redirects + 1):
                _check_url(current, allow)
                async with session.get(current, allow_redirects=False) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        current = current.join(URL(location))
                        continue
                    body, truncated = await _read_capped(resp, config.max_bytes)
                    return _result(current, resp, body, truncated)
            raise FetchError(f"too many redirects (more than {config.max_redirects})")
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"timed out after {config.timeout_seconds:g}s") from None
    except aiohttp.InvalidURL as exc:
        raise FetchError(f"not a valid URL: {exc}") from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"fetch failed: {type(exc).__name__}: {exc}") from None


def _result(url: URL, resp: aiohttp.ClientResponse, body: bytes, truncated: bool) -> dict[str, Any]:
    ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    out: dict[str, Any] = {
        "url": str(url), "status": resp.status, "content_type": ctype or None,
        "bytes": len(body), "truncated": truncated, "text": None,
    }
    if not ctype or ctype.startswith(_TEXT_TYPES):
        try:
            text = body.decode(resp.charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            text = body.decode("utf-8", errors="replace")
        out["text"] = html_to_text(text) if ctype in ("text/html", "application/xhtml+xml") else text
    else:
        out["note"] = "binary content is not shown"
    return out


def _config(services: Any) -> FetchConfig:
    cfg = services.plugin_config(PLUGIN)
    return cfg if isinstance(cfg, FetchConfig) else FetchConfig()


async def _tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    url = args.get("url")
    if not isinstance(url, str) or not url.strip():
        return {"error": "url must be a non-empty string"}
    try:
        return await fetch(url, _config(ctx.services))
    except FetchError as exc:
        return {"error": str(exc), "url": url}


@hookimpl
def soulgate_config_model() -> type[BaseModel]:
    return FetchConfig


@hookimpl
def soulgate_skills() -> list[Skill]:
    return [
        Tool(
            "fetch_url",
            "Fetch a public web page or text/JSON document by URL and return its text "
            "(HTML is turned into plain text; long bodies are cut off). Private and local "
            "addresses are refused.",
            _tool,
            parameters={
                "type": "object",
                "properties": {"url": {"type": "string", "description": "an http(s) URL"}},
                "required": ["url"],
            },
        )
    ]
