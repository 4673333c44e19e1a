"""Downloading an inbound file (``url_private``) on demand, with the bot token.

The bot token opens every file the bot can see, so it is sent only to hosts
listed in ``file_hosts`` (default ``files.slack.com``), over HTTPS (plain HTTP
only when ``api_base_url`` is itself HTTP: a local test server), and redirects
are not followed: Slack answers a token without ``files:read`` with a redirect
to its login page, which must not become a "file".
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from gateway import Attachment

from .config import SlackConfig

__all__ = ["download_attachment"]

_CHUNK = 64 * 1024


async def download_attachment(cfg: SlackConfig, attachment: Attachment, max_bytes: int | None) -> bytes:
    """The file's bytes; ValueError if it is not a Slack file URL, too large, or refused."""
    cap = min(max_bytes or cfg.max_download_bytes, cfg.max_download_bytes)
    if attachment.data is not None:
        data = attachment.data
    else:
        if attachment.size is not None and attachment.size > cap:
            raise ValueError(f"attachment {attachment.name!r} is {attachment.size} bytes; the cap is {cap}")
        data = await _get(cfg, attachment.ref or "", cap)
    if len(data) > cap:
        raise ValueError(f"attachment {attachment.name!r} is larger than {cap} bytes")
    return data


def _check_url(cfg: SlackConfig, url: str) -> None:
    parts = urlsplit(url)
    schemes = ("https", "http") if cfg.api_base_url.startswith("http://") else ("https",)
    if parts.scheme not in schemes or parts.hostname not in cfg.file_hosts:
        # Never send the token elsewhere; say which host so an operator can allow it.
        raise ValueError(f"not a Slack file URL (host {parts.hostname!r} is not in file_hosts)")


async def _get(cfg: SlackConfig, url: str, cap: int) -> bytes:
    _check_url(cfg, url)
    headers = {"Authorization": f"Bearer {cfg.bot_token.get_secret_value()}"}
    timeout = aiohttp.ClientTimeout(total=max(30.0, cfg.timeout_seconds))
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            url, headers=headers, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                hint = " (does the app have the files:read scope?)" if 300 <= resp.status < 400 else ""
                raise ValueError(f"Slack refused the download: HTTP {resp.status}{hint}")
            if resp.content_length is not None and resp.content_length > cap:
                raise ValueError(f"the file is {resp.content_length} bytes; the cap is {cap}")
            buf = bytearray()
            async for piece in resp.content.iter_chunked(_CHUNK):
                buf += piece
                if len(buf) > cap:  # Content-Length may be missing or wrong
                    raise ValueError(f"the file is larger than the cap of {cap} bytes")
            return bytes(buf)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ValueError(f"cannot download the file: {type(exc).__name__}: {exc}") from exc
