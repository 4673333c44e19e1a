"""aiogram's real Bot against the fake Telegram Bot API server."""

from __future__ import annotations

import asyncio

import pytest
from aiogram import Dispatcher
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile, Message, ReplyParameters

from tests.fakes.telegram import (
    FakeTelegram,
    RateLimits,
    fake_telegram_fixture,  # noqa: F401  (provides the fake_telegram fixture)
    start_fake_telegram,
)


async def test_get_me(fake_telegram: FakeTelegram) -> None:
    me = await fake_telegram.make_bot().get_me()
    assert (me.id, me.username, me.is_bot) == (123456, "soulgate_bot", True)
    assert me.can_read_all_group_messages is False  # privacy mode on, as by default


async def test_long_poll_wakes_when_an_update_is_pushed(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake_telegram.wait_until_polling()
    started = asyncio.get_running_loop().time()
    fake_telegram.push_private_text("hello")
    updates = await asyncio.wait_for(poll, 2)
    assert asyncio.get_running_loop().time() - started < 1
    assert updates[0].message is not None and updates[0].message.text == "hello"


async def test_long_poll_times_out_empty(fake_telegram: FakeTelegram) -> None:
    assert await fake_telegram.make_bot().get_updates(timeout=1) == []


async def test_offset_confirms_and_update_ids_may_jump(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    for text in ("a", "b", "c"):
        fake_telegram.push_private_text(text)
    first = await bot.get_updates(limit=2)
    assert [u.update_id for u in first] == [1, 2]
    # Without a new offset nothing is confirmed: the same updates come again.
    assert [u.update_id for u in await bot.get_updates()] == [1, 2, 3]
    assert [u.update_id for u in await bot.get_updates(offset=3)] == [3]
    assert len(fake_telegram.updates) == 1
    fake_telegram.next_update_id = 918_273_645  # after a long idle the next id is random
    fake_telegram.push_private_text("d")
    got = await bot.get_updates(offset=4)
    assert [u.update_id for u in got] == [918_273_645]
    assert await bot.get_updates(offset=918_273_646) == []
    assert fake_telegram.updates == [] and fake_telegram.last_offset == 918_273_646


async def test_second_poller_terminates_the_first_with_409(fake_telegram: FakeTelegram) -> None:
    first, second = fake_telegram.make_bot(), fake_telegram.make_bot()
    poll = asyncio.create_task(first.get_updates(timeout=30))
    await fake_telegram.wait_until_polling()
    other = asyncio.create_task(second.get_updates(timeout=30))
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await asyncio.wait_for(poll, 2)
    fake_telegram.push_private_text("for the survivor")
    assert len(await asyncio.wait_for(other, 2)) == 1


async def test_get_updates_conflicts_with_a_webhook(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    assert await bot.set_webhook("https://example.invalid/hook", secret_token="s3cret")
    assert fake_telegram.webhook is not None
    assert fake_telegram.webhook["secret_token"] == "s3cret"
    info = await bot.get_webhook_info()
    assert info.url == "https://example.invalid/hook"
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates()
    assert await bot.delete_webhook()
    assert await bot.get_updates() == []


async def test_send_message_is_recorded_with_reply_parameters(
    fake_telegram: FakeTelegram,
) -> None:
    bot = fake_telegram.make_bot()
    incoming = fake_telegram.push_private_text("question", user_id=42)["message"]
    sent = await bot.send_message(
        42, "<b>answer</b> &lt;3", parse_mode="HTML",
        reply_parameters=ReplyParameters(message_id=incoming["message_id"],
                                         allow_sending_without_reply=True))
    [record] = await fake_telegram.wait_for_messages(42)
    assert record.text == "<b>answer</b> &lt;3" and record.parse_mode == "HTML"
    assert record.reply_parameters == {"message_id": incoming["message_id"],
                                       "allow_sending_without_reply": True}
    # What the bot sees back is the parsed text with entities, like Telegram answers.
    assert sent.text == "answer <3" and sent.message_id == record.message_id
    assert sent.entities is not None and sent.entities[0].type == "bold"
    assert sent.reply_to_message is not None
    assert sent.reply_to_message.message_id == incoming["message_id"]
    # aiogram posts url-encoded forms; reply_parameters travels as a JSON string.
    call = fake_telegram.calls["sendMessage"][-1]
    assert call.content_type == "application/x-www-form-urlencoded"
    second = await bot.send_message(42, "more", message_thread_id=7)
    assert second.message_id > sent.message_id
    assert fake_telegram.sent[-1].message_thread_id == 7


async def test_reply_to_an_unknown_message_needs_allow_sending_without_reply(
    fake_telegram: FakeTelegram,
) -> None:
    bot = fake_telegram.make_bot()
    with pytest.raises(TelegramBadRequest, match="message to be replied not found"):
        await bot.send_message(42, "x", reply_parameters=ReplyParameters(message_id=999))
    await bot.send_message(42, "x", reply_parameters=ReplyParameters(
        message_id=999, allow_sending_without_reply=True))


@pytest.mark.parametrize("text", ["a <b> c", "<b>x</i>", "<br>", "AT&T", "<b>open"])
async def test_html_parse_errors_raise_bad_request(fake_telegram: FakeTelegram,
                                                   text: str) -> None:
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await fake_telegram.make_bot().send_message(1, text, parse_mode="HTML")
    assert fake_telegram.sent == []


async def test_flood_429_raises_retry_after(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    fake_telegram.flood_next("sendMessage", retry_after=7)
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(1, "x")
    assert caught.value.retry_after == 7
    await bot.send_message(1, "x")  # only the next call was scripted
    assert fake_telegram.count_429 == 1 and len(fake_telegram.sent) == 1


async def test_scripted_500_and_lost_response(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    fake_telegram.fail_next("sendMessage")
    with pytest.raises(TelegramServerError):
        await bot.send_message(1, "x")
    assert fake_telegram.sent == []
    fake_telegram.fail_next("sendMessage", after_effect=True, error_code=502,
                            description="Bad Gateway")
    with pytest.raises(TelegramServerError):
        await bot.send_message(1, "y")
    assert [s.text for s in fake_telegram.sent] == ["y"]  # sent although the bot saw an error


async def test_too_long_messages_are_rejected_in_utf16_units(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "a" * 4097)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "😀" * 2049)  # 2049 characters, 4098 UTF-16 units
    await bot.send_message(1, "<b>" + "a" * 4094 + "</b> &amp;", parse_mode="HTML")
    assert len(fake_telegram.sent) == 1


async def test_get_file_and_download(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    update = fake_telegram.push_media("photo", content=b"\x89PNG-bytes", caption="look")
    file_id = update["message"]["photo"][-1]["file_id"]
    file = await bot.get_file(file_id)
    assert file.file_path is not None
    data = await bot.download_file(file.file_path)
    assert data is not None and data.read() == b"\x89PNG-bytes"
    with pytest.raises(TelegramBadRequest, match="invalid file_id"):
        await bot.get_file("nope")


async def test_upload_is_multipart_and_recorded(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    msg = await bot.send_document(5, BufferedInputFile(b"report", "r.txt"), caption="<i>r</i>",
                                  parse_mode="HTML")
    assert msg.document is not None and msg.caption == "r"
    assert fake_telegram.calls["sendDocument"][-1].content_type == "multipart/form-data"
    assert fake_telegram.sent[-1].upload == b"report"
    assert fake_telegram.files[msg.document.file_id].content == b"report"


async def test_rate_limits_when_enabled() -> None:
    now = [100.0]
    async with start_fake_telegram(rate_limits=RateLimits(), clock=lambda: now[0]) as fake:
        bot = fake.make_bot()
        await bot.send_message(1, "first")
        with pytest.raises(TelegramRetryAfter) as caught:
            await bot.send_message(1, "too soon")
        assert caught.value.retry_after == 1
        await bot.send_message(2, "another chat is fine")
        now[0] += 1.0
        await bot.send_message(1, "later")
        for i in range(19):  # a group allows 20 a minute
            now[0] += 1.0
            await bot.send_message(-100555, f"g{i}")
        now[0] += 1.0
        await bot.send_message(-100555, "g20")
        now[0] += 1.0
        with pytest.raises(TelegramRetryAfter) as caught:
            await bot.send_message(-100555, "g21")
        assert caught.value.retry_after == 40
        assert (fake.rate_limited, fake.count_429) == (2, 2)


async def test_edit_and_not_modified(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    sent = await bot.send_message(1, "draft")
    edited = await bot.edit_message_text("final", chat_id=1, message_id=sent.message_id)
    assert isinstance(edited, Message) and edited.text == "final"
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("final", chat_id=1, message_id=sent.message_id)
    assert [e.text for e in fake_telegram.edits] == ["final"]


async def test_builders_produce_updates_aiogram_accepts(fake_telegram: FakeTelegram) -> None:
    bot = fake_telegram.make_bot()
    bot_msg = (await bot.send_message(-1001234567890, "hi all")).model_dump(exclude_none=True)
    fake_telegram.push_group_text("/ask@soulgate_bot what? @soulgate_bot")
    fake_telegram.push_group_text("thanks", reply_to=bot_msg)
    fake_telegram.push_topic_text("in a topic", thread_id=77)
    for kind in ("photo", "document", "voice", "sticker"):
        fake_telegram.push_media(kind)
    edited = fake_telegram.push_private_text("typo")["message"]
    fake_telegram.push_edited(edited, "fixed")
    fake_telegram.push_migration(-4242, -1004242)
    updates = await bot.get_updates()
    msgs = [u.message or u.edited_message for u in updates]
    assert all(m is not None for m in msgs)
    cmd = msgs[0]
    assert cmd is not None and cmd.entities is not None
    assert [(e.type, e.offset, e.length) for e in cmd.entities] == [
        ("bot_command", 0, 17), ("mention", 24, 13)]
    assert msgs[1] and msgs[1].reply_to_message and msgs[1].reply_to_message.from_user
    assert msgs[1].reply_to_message.from_user.id == 123456
    assert msgs[2] and msgs[2].is_topic_message and msgs[2].message_thread_id == 77
    assert updates[8].edited_message is not None and updates[8].edited_message.text == "fixed"
    assert msgs[9] and msgs[9].migrate_to_chat_id == -1004242
    with pytest.raises(TelegramMigrateToChat) as caught:
        await bot.send_message(-4242, "old group")
    assert caught.value.migrate_to_chat_id == -1004242


async def test_dispatcher_polling_end_to_end(fake_telegram: FakeTelegram) -> None:
    bot, dp = fake_telegram.make_bot(), Dispatcher()

    @dp.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text}")

    polling = asyncio.create_task(dp.start_polling(bot, polling_timeout=1, handle_signals=False,
                                                   close_bot_session=False))
    fake_telegram.push_private_text("ping", user_id=9)
    [reply] = await fake_telegram.wait_for_messages(9)
    assert reply.text == "echo: ping"
    await dp.stop_polling()
    await asyncio.wait_for(polling, 5)
