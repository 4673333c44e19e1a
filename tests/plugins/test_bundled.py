"""Bundled skills /whoami and time, through a real gateway; envelope factories per channel."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import ToolContext
from gateway.cli import main as soulgate
from gateway.testing import (
    GatewayFactory,
    console_envelope,
    email_envelope,
    fake_channel,
    make_envelope,
    slack_envelope,
    teams_envelope,
    telegram_envelope,
    test_config,
)
from plugins.time import TimeConfig, UnknownZone, describe, find_zone


async def test_whoami_names_sender_and_conversation(soulgate_gateway: GatewayFactory) -> None:
    async with soulgate_gateway() as gw:
        text = await gw.ask("/whoami", sender="u-7", sender_name="Ada *the* `great`", conversation="c-9",
                            thread="t-1")
        assert "**You are** Ada \\*the\\* \\`great\\`, id `u-7`" in text
        assert "- channel: fake, account `test`" in text
        assert "- conversation: `c-9` (direct), thread `t-1`" in text
        assert "`fake:test:c-9:t-1`" in text
        assert "`/whoami` — who and where" in await gw.ask("/help")


async def test_whoami_on_a_telegram_group_topic(soulgate_gateway: GatewayFactory) -> None:
    async with soulgate_gateway(adapter=fake_channel("telegram", "main")) as gw:
        env = telegram_envelope("/whoami", account="main", chat_id=-100123, chat_type="supergroup",
                                chat_title="Ops", topic_id=5, addressed=True)
        await gw.adapter.admit(env)
        text = (await gw.expect_reply()).text
        assert "**You are** Ada (@ada), id `42`" in text
        assert "- channel: telegram, account `main`" in text
        assert "- conversation: `-100123` (group, Ops), thread `5`" in text
        # the reply went back to where the message came from
        assert gw.adapter.sent[0].address == env.reply_to


def test_factories_build_envelopes_with_each_channels_natural_keys() -> None:
    tg = telegram_envelope("hi", chat_id=7, message_id=3, update_id=99)
    assert (tg.channel, tg.external_id, tg.alt_ids) == ("telegram", "update:99", ("msg:7:3",))
    assert tg.conversation.kind == "direct" and tg.addressed
    sl = slack_envelope("hi", team="T1", channel_id="C9", ts="1.2", event_id="Ev1", thread_ts="1.0")
    assert (sl.external_id, sl.alt_ids, sl.conversation.kind, sl.thread) == ("Ev1", ("msg:T1:C9:1.2",),
                                                                           "channel", "1.0")
    assert not sl.addressed
    tm = teams_envelope("hi", conversation_id="19:abc@thread.tacv2;messageid=111", conversation_type="channel")
    assert (tm.conversation.id, tm.thread, tm.conversation.kind) == ("19:abc@thread.tacv2", "111", "channel")
    em = email_envelope("hi", message_id="<b@x>", references=("<a@x>",), uid=12, uidvalidity=5,
                        headers={"Auto-Submitted": "auto-replied"})
    assert (em.external_id, em.alt_ids, em.conversation.id) == ("uid:INBOX:5:12", ("mid:<b@x>",), "<a@x>")
    assert em.raw["headers"]["Auto-Submitted"] == "auto-replied"
    assert console_envelope("hi").reply_to.channel == "console"
    # every factory's envelope survives the inbox's JSON round trip
    for env in (tg, sl, tm, em, console_envelope("x")):
        assert type(env).from_json(env.to_json()) == env


def test_time_zone_lookup_and_description() -> None:
    assert find_zone("europe/berlin").key == "Europe/Berlin"
    assert find_zone(" UTC ").key == "UTC"
    with pytest.raises(UnknownZone, match="Did you mean `Europe/Berlin`"):
        find_zone("Europe/Berlinn")
    with pytest.raises(UnknownZone, match=r"Unknown time zone `\.\./\.\./etc/passwd`"):
        find_zone("../../etc/passwd")
    summer = describe(find_zone("Europe/Berlin"), datetime(2024, 7, 1, 10, 30, tzinfo=UTC))
    assert summer == {
        "timezone": "Europe/Berlin", "iso": "2024-07-01T12:30:00+02:00", "date": "2024-07-01",
        "time": "12:30", "weekday": "Monday", "abbreviation": "CEST", "utc_offset": "+02:00",
    }
    assert describe(find_zone("Asia/Kolkata"), datetime(2024, 1, 1, tzinfo=UTC))["utc_offset"] == "+05:30"


async def test_time_command_and_tool(soulgate_gateway: GatewayFactory) -> None:
    config = test_config({"plugins": {"config": {"time": {"default_timezone": "asia/tokyo"}}}})
    async with soulgate_gateway(config=config) as gw:
        assert gw.services.plugin_config("time") == TimeConfig(default_timezone="Asia/Tokyo")
        assert "in Asia/Tokyo (JST, UTC+09:00)." in await gw.ask("/time")
        assert " in America/New_York (" in await gw.ask("/time america/new_york")
        assert "Unknown time zone `Mars/Olympus`" in await gw.ask("/time Mars/Olympus")
        plugin, tool = gw.services.tools()["current_time"]
        ctx = ToolContext(envelope=make_envelope("x"), services=gw.services, plugin=plugin, agent="a")
        now = await tool.handler(ctx, {"timezone": "Europe/Lisbon"})
        assert now["timezone"] == "Europe/Lisbon" and now["date"] in now["iso"]
        assert (await tool.handler(ctx, {}))["timezone"] == "Asia/Tokyo"
        assert "Unknown time zone" in (await tool.handler(ctx, {"timezone": "Nowhere"}))["error"]
        assert "must be a string" in (await tool.handler(ctx, {"timezone": 5}))["error"]


def test_bad_time_config_is_reported_and_the_plugin_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "soulgate.toml"
    cfg.write_text('[plugins.config.time]\ndefault_timezone = "Mars/Olympus"\nfoo = 1\n')
    assert soulgate(["--config", str(cfg), "check"]) == 1
    err = capsys.readouterr().err
    assert "plugin 'time': invalid config: plugins.config.time.default_timezone: Value error, " \
           "Unknown time zone `Mars/Olympus`" in err
    assert "plugins.config.time.foo: unknown key" in err
