"""A ``--role worker`` gateway sends through a Telegram adapter it never starts, then closes it.

aiogram's ``AiohttpSession`` opens one ``aiohttp.ClientSession`` at the first
call and reuses it; before ``Adapter.close`` a worker gateway left it open at
exit (``stop()`` only runs for started adapters).
"""

from __future__ import annotations

import asyncio

from adapters.telegram.adapter import TelegramAdapter
from gateway import ReplyAddress
from gateway.runtime import Gateway
from gateway.testing import test_config
from gateway.testing.recorder import RecordingResponder
from tests.fakes.telegram import FakeTelegram, fake_telegram_fixture  # noqa: F401 - the fixture

CHAT = 4242


async def test_worker_gateway_sends_and_closes_the_bot_session(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    table = {"token": fake_telegram.token, "api_base": fake_telegram.base_url, "poll_timeout": 1}
    gw = Gateway(test_config({"channels": {"telegram": {"main": table}}}), role="worker",
                 extra_plugins=[("recorder", RecordingResponder().plugin())], entry_points=False,
                 database_url=soulgate_database_url)
    await gw.start()
    try:
        adapter = gw.adapters[("telegram", "main")]
        assert isinstance(adapter, TelegramAdapter) and adapter not in gw._started_adapters
        address = ReplyAddress(channel="telegram", account="main", data={"chat_id": CHAT, "chat_type": "private"})
        for i in range(2):
            await gw.send_proactive(address, f"notice {i}")
        await fake_telegram.wait_for_messages(CHAT, count=2)
        # aiogram's one ClientSession, opened at the first send (a private attribute: no public one)
        session = adapter.bot.session._session  # type: ignore[attr-defined]
        assert session is not None and not session.closed
    finally:
        await asyncio.shield(gw.stop())
    assert session.closed
