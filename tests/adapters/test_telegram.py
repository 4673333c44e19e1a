"""The Telegram adapter end to end: a real gateway on real Postgres, aiogram's real
client, and the fake Bot API server in ``tests/fakes/telegram.py``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp
import pytest
from aiogram.exceptions import TelegramConflictError

from adapters.telegram import TelegramAdapter
from adapters.telegram.webhook import SECRET_HEADER, derive_secret
from gateway import ConfigError, Envelope, Reply, Turn, TurnResult, utf16_len
from gateway.config import Config
from gateway.runtime import Gateway
from gateway.testing import GatewayHarness, running_gateway, test_config
from gateway.testing.recorder import RecordingResponder
from tests.fakes.telegram import (
    POLL_CONFLICT,
    FakeTelegram,
    fake_telegram_fixture,  # noqa: F401  (provides the fake_telegram fixture)
    start_fake_telegram,
)

Respond = Callable[[Turn], Awaitable[TurnResult]]
GROUP = -1001234567890


Recorder = RecordingResponder

def config_for(fake: FakeTelegram, *, extra: dict[str, Any] | None = None, **account: Any) -> Config:
    table = {"token": fake.token, "api_base": fake.base_url, "poll_timeout": 1, **account}
    return test_config({"channels": {"telegram": {"main": table}}, **(extra or {})})


@asynccontextmanager
async def telegram_gateway(
    db: str, fake: FakeTelegram, recorder: Recorder | None = None, *,
    extra: dict[str, Any] | None = None, **account: Any,
) -> AsyncIterator[GatewayHarness]:
    recorder = recorder or Recorder()
    async with running_gateway(db, config=config_for(fake, extra=extra, **account),
                               plugins=[("recorder", recorder.plugin())]) as h:
        yield h


def adapter_of(h: GatewayHarness, account: str = "main") -> TelegramAdapter:
    adapter = h.gateway.adapters[("telegram", account)]
    assert isinstance(adapter, TelegramAdapter)
    return adapter


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the condition lives in another component
            await asyncio.sleep(0.05)


async def count(h: GatewayHarness, table: str, where: str = "TRUE") -> int:
    rows = await h.gateway.store.db.fetch(f"SELECT count(*) AS n FROM {table} WHERE {where}")
    return int(rows[0]["n"])


async def inbox_envelopes(h: GatewayHarness) -> list[Envelope]:
    rows = await h.gateway.store.db.fetch("SELECT envelope FROM inbox ORDER BY seq")
    return [Envelope.from_json(r["envelope"]) for r in rows]


# -- conversations -----------------------------------------------------------------------


async def test_private_message_answered_with_typing(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async def slow(turn: Turn) -> TurnResult:
        await asyncio.sleep(0.8)  # long enough for the "typing…" hint
        return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])

    recorder = Recorder(slow)
    async with telegram_gateway(soulgate_database_url, fake_telegram, recorder) as h:
        update = fake_telegram.push_private_text("hello there")
        [sent] = await fake_telegram.wait_for_messages(1001, 1)
        assert sent.text == "echo: hello there" and sent.parse_mode == "HTML"
        assert sent.reply_parameters is None  # a DM needs no quote
        action = fake_telegram.calls["sendChatAction"][0].params
        assert (action["chat_id"], action["action"]) == (1001, "typing")
        env = recorder.turns[0].envelope
        assert env.external_id == f"update:{update['update_id']}"
        assert env.alt_ids == (f"msg:1001:{update['message']['message_id']}",)
        assert (env.conversation.id, env.conversation.kind, env.thread) == ("1001", "direct", None)
        assert env.addressed and env.sender.handle == "alice"
        assert env.raw["message"]["text"] == "hello there"
        status = adapter_of(h).status()
        assert status["polling"] and status["bot"] == "@soulgate_bot"
        assert fake_telegram.token not in str(status)


async def test_group_answered_only_when_addressed_as_a_reply(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    recorder = Recorder()
    async with telegram_gateway(soulgate_database_url, fake_telegram, recorder) as h:
        fake_telegram.push_group_text("just chatting among humans")
        fake_telegram.push_group_text("@someone_else look at this")
        fake_telegram.push_group_text("/help@other_bot")  # another bot's command: not ours
        other_bot = fake_telegram.user(999, "Spam_bot", is_bot=True)
        fake_telegram.push_group_text("@soulgate_bot hello fellow bot", from_user=other_bot)  # no loops
        asked = fake_telegram.push_group_text("@soulgate_bot what time is it?")
        [first] = await fake_telegram.wait_for_messages(GROUP, 1)
        assert first.text == "echo: what time is it?"  # our mention is gone from the text
        assert first.reply_parameters == {
            "message_id": asked["message"]["message_id"], "allow_sending_without_reply": True}
        # a reply to the bot's message is addressed to it, without a mention
        fake_telegram.push_group_text("and tomorrow?", reply_to=first.message)
        second = (await fake_telegram.wait_for_messages(GROUP, 2))[1]
        assert second.text == "echo: and tomorrow?"
        # a command with our name goes to the command, not the agent
        fake_telegram.push_group_text("/help@soulgate_bot")
        third = (await fake_telegram.wait_for_messages(GROUP, 3))[2]
        assert "/help" in (third.message.get("text") or "")
        # an anonymous admin speaks through a bot account, on behalf of the group: a person
        anonymous = fake_telegram.user(1087968824, "GroupAnonymousBot", is_bot=True)
        fake_telegram.push_group_text("@soulgate_bot from the admins", from_user=anonymous,
                                      sender_chat=fake_telegram.chat(GROUP))
        await fake_telegram.wait_for_messages(GROUP, 4)
        await h.idle()
        assert len(fake_telegram.sent) == 4
        assert [t.envelope.text for t in recorder.turns] == [
            "what time is it?", "and tomorrow?", "from the admins"]
        assert recorder.turns[2].envelope.sender.id == str(GROUP)
        assert recorder.turns[1].envelope.segments[0].kind == "quote"  # what was replied to
        stored = {e.text: e for e in await inbox_envelopes(h)}  # the group chatter is kept
        assert set(stored) == {"just chatting among humans", "@someone_else look at this",
                               "what time is it?", "and tomorrow?", "/help", "from the admins"}
        assert not stored["just chatting among humans"].addressed
        mention = stored["@someone_else look at this"]
        assert not mention.addressed and mention.segments[0].value == "someone_else"


async def test_topic_message_answered_in_its_topic(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    recorder = Recorder()
    async with telegram_gateway(soulgate_database_url, fake_telegram, recorder) as h:
        # The topic's root message was created by the bot: Telegram makes every message
        # in the topic "reply" to it, which must not count as talking to the bot.
        forum = fake_telegram.chat(GROUP, is_forum=True)
        root = {"message_id": 77, "date": 0, "chat": forum, "from": fake_telegram.bot_user,
                "message_thread_id": 77, "forum_topic_created": {"name": "Bot", "icon_color": 1}}
        fake_telegram.push_topic_text("chatter in the topic", 77, reply_to_message=root)
        fake_telegram.push_topic_text("@soulgate_bot hi in topic", 77)
        [sent] = await fake_telegram.wait_for_messages(GROUP, 1)
        assert sent.text == "echo: hi in topic" and sent.message_thread_id == 77
        await h.idle()
        assert len(fake_telegram.sent) == 1
        chatter, asked = await inbox_envelopes(h)
        assert not chatter.addressed and asked.addressed
        assert chatter.thread == asked.thread == "77"
        assert asked.conversation_key == f"telegram:main:{GROUP}:77"


async def test_media_as_attachments_downloaded_on_demand(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async def describe(turn: Turn) -> TurnResult:
        env = turn.envelope
        parts = []
        for seg in env.segments:
            att = seg.attachment
            if att is None:
                continue
            try:
                data = await turn.services.fetch_attachment(env, att)
                got = f"{len(data)} bytes"
            except ValueError as exc:
                got = f"refused: {exc}"
            parts.append(f"{seg.value} {att.mime} {att.size} {got}")
        return TurnResult(replies=[Reply(text=f"{env.text} | {'; '.join(parts)}")])

    async with telegram_gateway(soulgate_database_url, fake_telegram, Recorder(describe),
                                max_download_bytes=64) as h:
        fake_telegram.push_media("photo", b"x" * 10, caption="look at this", chat_id=1001)
        fake_telegram.push_media("voice", b"v" * 20, chat_id=1002)
        fake_telegram.push_media("document", b"d" * 100, chat_id=1003)  # over the 64-byte cap
        [photo] = await fake_telegram.wait_for_messages(1001, 1)
        assert photo.message["text"] == "look at this | photo image/jpeg 10 10 bytes"
        [voice] = await fake_telegram.wait_for_messages(1002, 1)
        assert voice.message["text"].endswith("voice audio/ogg 20 20 bytes")
        [document] = await fake_telegram.wait_for_messages(1003, 1)
        assert "document application/octet-stream 100 refused" in document.message["text"]
        await h.idle()


async def test_edited_messages_ignored_by_default(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        original = fake_telegram.push_private_text("frist")
        await fake_telegram.wait_for_messages(1001, 1)
        fake_telegram.push_edited(original["message"], "first")
        fake_telegram.push_private_text("next")
        await fake_telegram.wait_for_messages(1001, 2)
        await h.idle()
        assert [s.text for s in fake_telegram.sent] == ["echo: frist", "echo: next"]


async def test_edited_messages_answered_when_configured(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async with telegram_gateway(soulgate_database_url, fake_telegram, edited_messages="answer"):
        original = fake_telegram.push_private_text("frist")
        await fake_telegram.wait_for_messages(1001, 1)
        fake_telegram.push_edited(original["message"], "first")
        sent = await fake_telegram.wait_for_messages(1001, 2)
        assert sent[1].text == "echo: first"  # not a duplicate of the original message


async def test_allow_lists_and_a_group_migrated_to_a_supergroup(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    old, new = -4001, -1004001
    async with telegram_gateway(soulgate_database_url, fake_telegram,
                                allowed_user_ids=[1001], allowed_chat_ids=[old]) as h:
        fake_telegram.push_private_text("let me in", user_id=2002)  # neither user nor chat allowed
        fake_telegram.push_private_text("I am allowed")
        await fake_telegram.wait_for_messages(1001, 1)
        stranger = fake_telegram.user(2002, "Mallory")
        fake_telegram.push_message(fake_telegram.message(fake_telegram.chat(old), "@soulgate_bot hi",
                                                         from_user=stranger))  # allowed chat
        fake_telegram.push_migration(old, new)
        # The answer goes to the supergroup, whichever comes first: the service message
        # or Telegram refusing the old id with migrate_to_chat_id.
        [moved] = await fake_telegram.wait_for_messages(new, 1)
        assert moved.text == "echo: hi"
        # the supergroup is still the allowed chat; the stored conversation answers there too
        fake_telegram.push_message(fake_telegram.message(fake_telegram.chat(new), "@soulgate_bot again",
                                                         from_user=stranger))
        await fake_telegram.wait_for_messages(new, 2)
        await h.services.send(f"telegram:main:{old}:", "a proactive note")
        later = (await fake_telegram.wait_for_messages(new, 3))[2]
        assert later.text == "a proactive note" and later.reply_parameters is None
        await h.idle()
        assert fake_telegram.sent_to(2002) == [] and fake_telegram.sent_to(old) == []
        ignored = await h.gateway.store.audit.recent(kind="telegram_ignored")
        assert [a["detail"]["user_id"] for a in ignored] == [2002]
        migrated = await h.gateway.store.audit.recent(kind="telegram_chat_migrated")
        assert migrated[0]["detail"]["from_chat_id"] == old
        assert migrated[0]["detail"]["to_chat_id"] == new


async def test_migration_learned_from_a_send_error(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        fake_telegram.fail_next("sendMessage", error_code=400, migrate_to_chat_id=-1005002,
                                description="Bad Request: group chat was upgraded to a supergroup chat")
        fake_telegram.push_message(fake_telegram.message(fake_telegram.chat(-5002), "@soulgate_bot yo"))
        [sent] = await fake_telegram.wait_for_messages(-1005002, 1)
        assert sent.text == "echo: yo"
        await h.idle()
        [audit] = await h.gateway.store.audit.recent(kind="telegram_chat_migrated")
        assert audit["detail"]["learned_from"] == "send error"


async def test_several_bots_at_once(soulgate_database_url: str, fake_telegram: FakeTelegram) -> None:
    async with start_fake_telegram("654321:OTHER", bot_username="other_bot") as other:
        bots = {
            "main": {"token": fake_telegram.token, "api_base": fake_telegram.base_url, "poll_timeout": 1},
            "second": {"token": other.token, "api_base": other.base_url, "poll_timeout": 1},
        }
        recorder = Recorder()
        async with running_gateway(soulgate_database_url,
                                   config=test_config({"channels": {"telegram": bots}}),
                                   plugins=[("recorder", recorder.plugin())]):
            fake_telegram.push_private_text("to the first bot")
            other.push_private_text("to the second bot")
            assert (await fake_telegram.wait_for_messages(1001, 1))[0].text == "echo: to the first bot"
            assert (await other.wait_for_messages(1001, 1))[0].text == "echo: to the second bot"
            assert {t.envelope.account for t in recorder.turns} == {"main", "second"}


# -- formatting and limits ---------------------------------------------------------------


def long_answer() -> str:
    """About 10 000 characters: emoji paragraphs, and a code block across the first cut."""
    prose = "Ünïcode and emoji 😀🎉 count twice in UTF-16, so the cut must know it. " * 3
    paragraphs = [f"**{i}.** {prose}" for i in range(17)]
    code = "```python\n" + "\n".join(f"print('line {i} <&>')" for i in range(60)) + "\n```"
    text = "\n\n".join(paragraphs[:15] + [code] + paragraphs[15:] * 14)
    assert 9_000 < len(text) < 12_000
    return text


async def test_long_answer_split_html_fallback_and_429(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    answer = long_answer()

    async def respond(turn: Turn) -> TurnResult:
        if turn.envelope.text == "long":
            return TurnResult(replies=[Reply(text=answer)])
        return TurnResult(replies=[Reply(text=f"**{turn.envelope.text}** & <more>")])

    async with telegram_gateway(soulgate_database_url, fake_telegram, Recorder(respond)) as h:
        fake_telegram.push_private_text("long")
        chunks = await fake_telegram.wait_for_messages(1001, 3, within=15)
        await h.idle()
        chunks = fake_telegram.sent_to(1001)
        plains = [c.message["text"] for c in chunks]
        assert len(chunks) >= 3
        assert all(utf16_len(p) <= 4096 for p in plains)
        joined = "".join(plains)
        assert joined.count("😀") == answer.count("😀")  # no emoji lost or cut in half
        assert all(f"print('line {i} <&>')" in joined for i in range(60))
        for c in chunks:  # wherever the code went, it is a code entity
            if "print(" in c.message["text"]:
                assert any(e["type"] == "pre" for e in c.message["entities"])
        assert all(c.parse_mode == "HTML" for c in chunks)

        # Telegram refuses our HTML: the same chunk goes again as plain text
        fake_telegram.fail_next("sendMessage", error_code=400,
                                description='Bad Request: can\'t parse entities: Unsupported start '
                                            'tag "x" at byte offset 0')
        fake_telegram.push_private_text("fallback")
        plain = (await fake_telegram.wait_for_messages(1001, len(chunks) + 1))[-1]
        assert plain.parse_mode is None and plain.text == "**fallback** & <more>"
        first_try = fake_telegram.calls["sendMessage"][-2].params
        assert first_try["parse_mode"] == "HTML"
        assert first_try["text"] == "<b>fallback</b> &amp; &lt;more&gt;"

        # 429: the send waits retry_after and goes once
        fake_telegram.flood_next("sendMessage", retry_after=1)
        fake_telegram.push_private_text("flooded")
        done = (await fake_telegram.wait_for_messages(1001, len(chunks) + 2))[-1]
        assert done.text == "<b>flooded</b> &amp; &lt;more&gt;"
        await h.idle()
        assert fake_telegram.count_429 == 1
        assert len(fake_telegram.sent_to(1001)) == len(chunks) + 2


# -- exactly once ------------------------------------------------------------------------


async def test_killed_after_get_updates_before_admit_is_redelivered_and_answered_once(
    soulgate_database_url: str, fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = asyncio.Event()

    async def dies_here(envelope: Any) -> Any:
        fetched.set()  # the update came back from getUpdates; nothing is stored yet
        await asyncio.Event().wait()

    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        monkeypatch.setattr(h.gateway, "admit", dies_here)
        fake_telegram.push_private_text("do not lose me")
        await asyncio.wait_for(fetched.wait(), 10)
    # the gateway is gone; Telegram still holds the update (no offset confirmed it)
    assert len(fake_telegram.updates) == 1 and fake_telegram.sent == []
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        await fake_telegram.wait_for_messages(1001, 1)
        await eventually(lambda: not fake_telegram.updates)  # now it is confirmed
        await h.idle()
        assert [s.text for s in fake_telegram.sent] == ["echo: do not lose me"]
        assert await count(h, "inbox") == 1


async def test_killed_after_admit_and_repeated_updates_are_answered_once(
    soulgate_database_url: str, fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = asyncio.Event()
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        real_admit = h.gateway.admit

        async def dies_after_commit(envelope: Any) -> Any:
            await real_admit(envelope)
            stored.set()  # in the inbox, but the offset was never confirmed
            await asyncio.Event().wait()

        monkeypatch.setattr(h.gateway, "admit", dies_after_commit)
        update = fake_telegram.push_private_text("only once please")
        await asyncio.wait_for(stored.wait(), 10)
    assert len(fake_telegram.updates) == 1  # Telegram will send it again
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        await eventually(lambda: not fake_telegram.updates)
        # the same update twice in one batch, and the same message under a new update id
        # (as after switching between webhook and polling)
        fake_telegram.push_update(dict(update, update_id=50))
        fake_telegram.push_update(dict(update, update_id=50))
        fake_telegram.push_update(dict(update, update_id=51))
        await eventually(lambda: not fake_telegram.updates)
        await h.idle()
        assert [s.text for s in fake_telegram.sent] == ["echo: only once please"]
        assert await count(h, "inbox") == 1


async def test_two_instances_one_poller_and_takeover(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    config = config_for(fake_telegram)
    gateways = [Gateway(config, extra_plugins=[("recorder", Recorder().plugin())], entry_points=False,
                        database_url=soulgate_database_url) for _ in range(2)]
    try:
        for gw in gateways:
            await gw.start()
        adapters = [gw.adapters[("telegram", "main")] for gw in gateways]
        await eventually(lambda: any(a.status()["polling"] for a in adapters))
        leader = next(i for i, a in enumerate(adapters) if a.status()["polling"])
        follower = 1 - leader
        fake_telegram.push_private_text("who answers?")
        await fake_telegram.wait_for_messages(1001, 1)
        await gateways[leader].wait_idle()
        assert [a.status()["polling"] for a in adapters].count(True) == 1
        assert adapters[follower].status()["polls"] == 0
        assert all(a.status()["conflicts"] == 0 for a in adapters)

        await gateways[leader].stop()  # the leader dies; the other instance takes over
        await eventually(lambda: adapters[follower].status()["polling"], within=15)
        fake_telegram.push_private_text("still there?")
        sent = await fake_telegram.wait_for_messages(1001, 2)
        assert [s.text for s in sent] == ["echo: who answers?", "echo: still there?"]
    finally:
        for gw in gateways:
            await gw.stop()


async def test_conflict_409_means_someone_else_polls(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        adapter = adapter_of(h)
        await fake_telegram.wait_until_polling()
        # another program long-polls the same token: Telegram ends our poll with 409
        intruder = fake_telegram.make_bot()
        with suppress(TelegramConflictError):  # when we poll again, the intruder gets the 409
            await intruder.get_updates(timeout=1)
        await eventually(lambda: adapter.status()["conflicts"] >= 1)
        assert POLL_CONFLICT in str(adapter.status()["last_error"])
        fake_telegram.push_private_text("after the fight")
        await fake_telegram.wait_for_messages(1001, 1, within=15)
        [audit] = await h.gateway.store.audit.recent(kind="telegram_poll_conflict")
        assert audit["detail"]["bot_id"] == "123456"


# -- webhook -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_webhook_checks_the_secret_and_answers_after_the_commit(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/main"
    async with telegram_gateway(soulgate_database_url, fake_telegram, mode="webhook", webhook_url=url,
                                extra={"http": {"port": port}}) as h:
        await eventually(lambda: fake_telegram.webhook is not None)
        assert fake_telegram.webhook is not None
        assert fake_telegram.webhook["secret_token"] == derive_secret(fake_telegram.token)
        update = fake_telegram.message(fake_telegram.chat(1001), "forged")
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {SECRET_HEADER: "guess"}, {SECRET_HEADER: ""}):
                async with http.post(url, json={"update_id": 9, "message": update}, headers=headers) as r:
                    assert r.status == 401
            good = {SECRET_HEADER: derive_secret(fake_telegram.token)}
            async with http.post(url, data=b"{not json", headers=good) as r:
                assert r.status == 400
            async with http.post(url, json={"update_id": 9, "message": {"chat": 1}}, headers=good) as r:
                assert r.status == 400
        assert await count(h, "inbox") == 0 and await count(h, "audit") == 0

        fake_telegram.push_private_text("via webhook")
        assert await fake_telegram.deliver_webhook() == [200]
        assert await count(h, "inbox") == 1  # the 200 came after the commit
        [sent] = await fake_telegram.wait_for_messages(1001, 1)
        assert sent.text == "echo: via webhook"
        assert adapter_of(h).status()["rejected"] == 3  # the three bad secrets


# -- configuration -----------------------------------------------------------------------


async def test_bad_config_is_reported_with_key_paths(soulgate_database_url: str) -> None:
    bad = {"token": "not-a-token", "mode": "webhook", "poll_timeout": 0, "colour": "blue"}
    gw = Gateway(test_config({"channels": {"telegram": {"main": bad}}}), entry_points=False,
                 database_url=soulgate_database_url)
    problems = [p for p in gw.load_plugins() if p.startswith("channels.telegram")]
    joined = "\n".join(problems)
    assert "channels.telegram.main.token" in joined and "not-a-token" not in joined
    assert "channels.telegram.main.poll_timeout" in joined
    assert "channels.telegram.main.colour: unknown key" in joined
    with pytest.raises(ConfigError):
        await Gateway(test_config({"channels": {"telegram": {"main": {"token": "1:x", "mode": "webhook"}}}}),
                      entry_points=False, database_url=soulgate_database_url).start()
