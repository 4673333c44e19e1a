"""The Slack adapter end to end: real gateway, real Postgres, real slack-sdk, fake Slack.

Inbound requests are signed exactly as Slack signs them; replies go through the
SDK's ``AsyncWebClient`` to ``tests/fakes/slack.py``. Socket Mode runs the SDK's
aiohttp ``SocketModeClient`` against the fake's WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from adapters.slack import SlackConfig
from adapters.slack.inbound import Identity, Ignored, Parsed, parse_event, plain_text
from adapters.slack.mrkdwn import to_mrkdwn
from adapters.slack.outbound import render_chunks
from gateway import Attachment, ConfigError, Envelope, Reply, Turn, TurnResult
from gateway.runtime import Gateway
from gateway.testing import GatewayHarness, running_gateway, test_config
from gateway.testing.recorder import RecordingResponder
from tests.fakes import slack as slack_fakes
from tests.fakes.slack import (
    FakeSlack,
    Workspace,
    app_mention_event,
    event_callback,
    message_event,
    new_ts,
    post_signed,
    start_fake_slack,
    url_verification,
)

fake_slack = slack_fakes.fake_slack

Respond = Callable[[Turn], Awaitable[TurnResult]]


class Recorder(RecordingResponder):
    def echo_text(self, turn: Turn) -> str:
        return f"echo: {turn.envelope.text} ({len(turn.history)} earlier)"

def account(fake: FakeSlack, workspace: Workspace | None = None, **extra: Any) -> dict[str, Any]:
    ws = workspace or fake.workspace
    return {"bot_token": ws.token, "signing_secret": fake.signing_secret, "api_base_url": fake.base_url,
            **extra}


@asynccontextmanager
async def slack_gateway(
    db: str, accounts: dict[str, dict[str, Any]], recorder: Recorder | None = None,
) -> AsyncIterator[GatewayHarness]:
    config = test_config({"channels": {"slack": accounts}})
    plugin = (recorder or Recorder()).plugin()
    async with running_gateway(db, config=config, plugins=[("recorder", plugin)]) as h:
        yield h


def url(h: GatewayHarness, name: str = "main") -> str:
    return f"http://127.0.0.1:{h.gateway.public_port}/slack/{name}/events"


async def inbox_rows(h: GatewayHarness) -> int:
    rows = await h.gateway.store.db.fetch("SELECT count(*) AS n FROM inbox")
    return int(rows[0]["n"])


async def post(h: GatewayHarness, event: dict[str, Any], secret: str = slack_fakes.DEFAULT_SIGNING_SECRET,
               name: str = "main", **opts: Any) -> int:
    result = await post_signed(url(h, name), event_callback(event), secret, **opts)
    return result.status


# -- end to end over HTTP ------------------------------------------------------------------


async def test_url_verification_and_dm_answered(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    rec = Recorder()
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, rec) as h:
        challenge = await post_signed(url(h), url_verification("c-123"), fake_slack.signing_secret)
        assert (challenge.status, challenge.json()) == (200, {"challenge": "c-123"})

        dm = message_event("hello *there* &amp; you", channel="D0DM")
        assert await post(h, dm) == 200
        reply = (await fake_slack.wait_for_posts("D0DM"))[0]
        assert reply.text == "echo: hello _there_ &amp; you (0 earlier)"  # the echo is read as Markdown
        assert reply.thread_ts is None  # DMs are answered at top level by default
        env = rec.envelopes[0]
        assert (env.conversation.kind, env.addressed, env.thread, env.sender.id) == (
            "direct", True, None, "U0ALICE")
        assert env.text == "hello *there* & you"
        assert env.external_id.startswith("Ev") and env.alt_ids == (f"msg:T0SOULGATE:D0DM:{dm['ts']}",)
        status = await h.gateway.status()
        slack = next(a for a in status["adapters"] if a["channel"] == "slack")
        assert slack["mode"] == "http" and slack["path"] == "/slack/main/events"
        assert slack["bot_user_id"] == "U0BOT" and "xoxb" not in json.dumps(status)


async def test_mention_answered_in_thread_and_thread_reply_continues(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    rec = Recorder()
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, rec) as h:
        mention = app_mention_event("<@U0BOT> what is <@U0BOB|bob> up to? see <https://example.com/a?b=1&amp;c=2|docs>")
        assert await post(h, mention) == 200
        first = (await fake_slack.wait_for_posts("C0GENERAL"))[0]
        assert first.thread_ts == mention["ts"]
        assert first.text == "echo: what is @bob up to? see docs (https://example.com/a?b=1&amp;c=2) (0 earlier)"
        env = rec.envelopes[0]
        assert env.addressed and env.conversation.kind == "channel" and env.thread == mention["ts"]
        assert [(s.kind, s.value) for s in env.segments] == [
            ("mention", "U0BOB"), ("link", "https://example.com/a?b=1&c=2")]

        # No mention needed inside a thread the bot was called into; history continues.
        follow = message_event("and then?", thread_ts=mention["ts"])
        assert await post(h, follow) == 200
        posts = await fake_slack.wait_for_posts("C0GENERAL", 2, thread_ts=mention["ts"])
        assert posts[1].text == "echo: and then? (2 earlier)"
        # the membership is remembered for 90 days (adapter state with an expiry)
        [kept] = await h.gateway.store.db.fetch(
            "SELECT expires_at - now() AS left FROM kv_state WHERE key LIKE 'adapter:slack:main:thread:%'")
        assert 89.9 < kept["left"].total_seconds() / 86_400 <= 90
        assert rec.envelopes[1].conversation_key == env.conversation_key

        # Chatter without a mention, and a thread the bot is not in, get no answer.
        other_root = new_ts()
        assert await post(h, message_event("just chatting", ts=other_root)) == 200
        assert await post(h, message_event("reply in a thread without the bot", thread_ts=other_root)) == 200
        await h.idle()
        assert len(fake_slack.posts) == 2 and len(rec.turns) == 2


async def test_reply_in_thread_per_conversation(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    cfg = account(fake_slack, reply_in_thread_channels={"C0TOP": False, "D0THREADS": True})
    async with slack_gateway(soulgate_database_url, {"main": cfg}) as h:
        for n in (1, 2):
            assert await post(h, app_mention_event(f"<@U0BOT> q{n}", channel="C0TOP")) == 200
            await fake_slack.wait_for_posts("C0TOP", n)
        assert [(p.text, p.thread_ts) for p in fake_slack.posts_in("C0TOP")] == [
            ("echo: q1 (0 earlier)", None), ("echo: q2 (2 earlier)", None)]  # one channel-wide conversation
        dm = message_event("in a thread please", channel="D0THREADS")
        assert await post(h, dm) == 200
        assert (await fake_slack.wait_for_posts("D0THREADS"))[0].thread_ts == dm["ts"]
        follow = message_event("more", channel="D0THREADS", thread_ts=dm["ts"])
        assert await post(h, follow) == 200
        posts = await fake_slack.wait_for_posts("D0THREADS", 2)
        assert (posts[1].text, posts[1].thread_ts) == ("echo: more (2 earlier)", dm["ts"])


async def test_retry_and_app_mention_message_twin_give_one_answer(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as h:
        ts = new_ts()
        mention = event_callback(app_mention_event("<@U0BOT> once please", ts=ts))
        twin = event_callback(message_event("<@U0BOT> once please", ts=ts))  # own event_id
        secret = fake_slack.signing_secret
        assert (await post_signed(url(h), mention, secret)).status == 200
        assert (await post_signed(url(h), twin, secret)).status == 200
        for n in (1, 2):  # Slack's retries carry the same event_id
            assert (await post_signed(url(h), mention, secret, retry_num=n)).status == 200
        await fake_slack.wait_for_posts("C0GENERAL")
        await h.idle()
        assert [p.text for p in fake_slack.posts] == ["echo: once please (0 earlier)"]
        assert await inbox_rows(h) == 1


async def test_bad_requests_get_401_or_400_and_store_nothing(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as h:
        event = message_event("sneaky", channel="D0DM")
        for broken in ({"forged": True}, {"stale": True}, {"bad_timestamp": True},
                       {"omit": "timestamp"}, {"omit": "signature"}, {"omit": "both"},
                       # int() would take these; Slack never sends them
                       {"timestamp": "\uff11\uff17" + "\uff10" * 8}, {"timestamp": f"{int(time.time()):_}"}):
            assert await post(h, event, **broken) == 401, broken
        assert await post(h, event, secret="someone-else") == 401
        forged_challenge = await post_signed(url(h), url_verification(), "nope")
        assert forged_challenge.status == 401 and "challenge" not in forged_challenge.text
        secret = fake_slack.signing_secret
        assert (await post_signed(url(h), b"{not json", secret)).status == 400
        assert (await post_signed(url(h), b"[1, 2]", secret)).status == 400
        malformed = event_callback({"type": "message", "text": "no channel", "user": "U0ALICE"})
        assert (await post_signed(url(h), malformed, secret)).status == 400
        await h.idle()
        assert await inbox_rows(h) == 0 and fake_slack.posts == []


async def test_bots_self_and_system_messages_are_ignored(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    rec = Recorder()
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, rec) as h:
        ignored = [
            message_event("my own echo", channel="D0DM", user="U0BOT", bot_id="B0BOT"),
            message_event("my own, no bot_id", channel="D0DM", user="U0BOT"),
            message_event("<@U0BOT> hi from a bot", subtype="bot_message", bot_id="B0OTHER", user="U0OTHERBOT"),
            message_event("bot without subtype", channel="D0DM", bot_id="B0OTHER", user="U0OTHERBOT"),
            message_event("edited", channel="D0DM", subtype="message_changed"),
            message_event("", channel="D0DM", subtype="message_deleted"),
            message_event("<@U0ALICE> has joined", subtype="channel_join"),
            {"type": "reaction_added", "user": "U0ALICE", "reaction": "+1"},
        ]
        for event in ignored:
            assert await post(h, event) == 200, event
        assert await post(h, message_event("a person", channel="D0DM")) == 200
        await fake_slack.wait_for_posts("D0DM")
        await h.idle()
        assert [p.text for p in fake_slack.posts] == ["echo: a person (0 earlier)"]
        assert await inbox_rows(h) == 1 and len(rec.turns) == 1


async def test_admit_commits_before_the_http_ack(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as h:
        gate = asyncio.Event()
        admit = h.gateway.admit

        async def gated(envelope: Envelope) -> Any:
            await gate.wait()
            return await admit(envelope)

        h.gateway.admit = gated  # type: ignore[method-assign]
        request = asyncio.create_task(post(h, message_event("wait for it", channel="D0DM")))
        done, _ = await asyncio.wait({request}, timeout=0.3)
        assert not done  # no 200 while the inbox row is not committed
        gate.set()
        assert await request == 200
        assert await inbox_rows(h) == 1  # committed by the time Slack saw the 200
        await fake_slack.wait_for_posts("D0DM")


async def test_429_retry_after_is_honoured(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as h:
        fake_slack.ratelimit("chat.postMessage", times=1, retry_after=1)
        assert await post(h, message_event("busy?", channel="D0DM")) == 200
        posts = await fake_slack.wait_for_posts("D0DM", timeout=10)
        await h.idle()
        assert [p.text for p in posts] == ["echo: busy? (0 earlier)"]
        statuses = [c.status for c in fake_slack.calls_to("chat.postMessage")]
        assert statuses == [429, 200]


async def test_long_answer_split_in_thread_under_the_channel_rate(soulgate_database_url: str) -> None:
    paragraphs = [f"Paragraph {i}: " + "words & more words " * 40 for i in range(8)]
    code = "```python\n" + "\n".join(f"print({i})  # <{i}>" for i in range(250)) + "\n```"
    answer = "\n\n".join([*paragraphs[:4], code, *paragraphs[4:]])

    async def long(turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text=answer)])

    # The fake refuses a second post to a channel within 0.5 s: our 1/s limit keeps clear of it.
    async with start_fake_slack(channel_post_interval=0.5) as fake, slack_gateway(
        soulgate_database_url, {"main": account(fake)}, Recorder(long)
    ) as h:
        mention = app_mention_event("<@U0BOT> tell me everything")
        assert await post(h, mention) == 200
        await h.idle(timeout=30)
        posts = fake.posts_in("C0GENERAL")
        assert len(posts) >= 3 and fake.channel_429s == {}
        assert all(len(p.text) <= 4000 and p.thread_ts == mention["ts"] for p in posts)
        assert all(p.text.count("```") % 2 == 0 for p in posts)  # every chunk renders on its own
        joined = "\n".join(p.text for p in posts)
        assert all(f"Paragraph {i}:" in joined for i in range(8))
        assert all(f"print({i})  # &lt;{i}&gt;" in joined for i in range(250))
        assert joined.index("Paragraph 3:") < joined.index("print(0)") < joined.index("Paragraph 4:")


async def test_dropped_connection_is_never_posted_twice(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as h:
        # Slack applies the post, then the connection drops before the answer.
        fake_slack.drop_connection("chat.postMessage", after_processing=True)
        assert await post(h, message_event("only once", channel="D0DM")) == 200
        await fake_slack.wait_for_posts("D0DM")
        await h.idle()
        await asyncio.sleep(0.3)  # a retry, if there were one, would be immediate
        assert [p.text for p in fake_slack.posts] == ["echo: only once (0 earlier)"]
        assert fake_slack.count("chat.postMessage") == 1  # the SDK did not retry either
        assert (await h.gateway.store.outbox.counts())["unknown"] == 1
        assert await h.gateway.store.audit.recent(kind="delivery_unknown")


async def test_timed_out_post_is_parked_not_repeated(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack, timeout_seconds=1)}) as h:
        fake_slack.delay("chat.postMessage", 1.5)  # Slack posts it, but answers too late
        assert await post(h, message_event("slow lane", channel="D0DM")) == 200
        await fake_slack.wait_for_posts("D0DM", timeout=10)
        await h.idle()
        assert fake_slack.count("chat.postMessage") == 1 and len(fake_slack.posts) == 1
        [dead] = await h.gateway.store.audit.recent(kind="delivery_unknown")
        assert "TimeoutError" in dead["detail"]["error"]


async def test_never_lost_policy_retries_an_unanswered_post(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    cfg = account(fake_slack, delivery_policy="never_lost")
    async with slack_gateway(soulgate_database_url, {"main": cfg}) as h:
        fake_slack.drop_connection("chat.postMessage", after_processing=False)
        assert await post(h, message_event("do not lose me", channel="D0DM")) == 200
        posts = await fake_slack.wait_for_posts("D0DM", timeout=10)
        await h.idle()
        assert [p.text for p in posts] == ["echo: do not lose me (0 earlier)"]
        assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [0, 200]


async def test_allow_lists_ignore_and_audit_others(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    cfg = account(fake_slack, allowed_channels=["C0OK", "D0DM"], allowed_users=["U0ALICE"],
                  allowed_teams=["T0SOULGATE"])
    async with slack_gateway(soulgate_database_url, {"main": cfg}) as h:
        assert await post(h, app_mention_event("<@U0BOT> hi", channel="C0NOPE")) == 200
        assert await post(h, app_mention_event("<@U0BOT> hi", channel="C0OK", user="U0MALLORY")) == 200
        other_team = event_callback(message_event("hi", channel="D0DM"),
                                    workspace=Workspace(team_id="T0OTHER"))
        assert (await post_signed(url(h), other_team, fake_slack.signing_secret)).status == 200
        assert await post(h, app_mention_event("<@U0BOT> hi", channel="C0OK")) == 200
        await fake_slack.wait_for_posts("C0OK")
        await h.idle()
        assert [p.channel for p in fake_slack.posts] == ["C0OK"] and await inbox_rows(h) == 1
        audit = await h.gateway.store.audit.recent(kind="slack_ignored")
        reasons = sorted(a["detail"]["reason"] for a in audit)
        assert reasons == ["channel_not_allowed", "team_not_allowed", "user_not_allowed"]
        assert all(a["plugin"] == "slack" and a["detail"]["account"] == "main" for a in audit)


async def test_ack_reaction_while_working(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    async def slow(turn: Turn) -> TurnResult:
        await asyncio.sleep(1.2)  # the gateway shows "working" after 0.5 s
        return TurnResult(replies=[Reply(text="done")])

    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, Recorder(slow)) as h:
        mention = app_mention_event("<@U0BOT> think hard")
        assert await post(h, mention) == 200
        await fake_slack.wait_for_posts("C0GENERAL", timeout=10)
        await h.idle()
        assert fake_slack.reaction_log == [
            ("add", "C0GENERAL", mention["ts"], "eyes"), ("remove", "C0GENERAL", mention["ts"], "eyes")]


async def test_ack_reaction_removed_by_the_instance_that_sends(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    """A rolling restart: instance A runs the turn (and reacts) but stops before delivering;
    instance B sends the answer and must take A's reaction back."""
    async def slow(turn: Turn) -> TurnResult:
        await asyncio.sleep(1.2)  # the gateway shows "working" after 0.5 s
        return TurnResult(replies=[Reply(text="done")])

    mention = app_mention_event("<@U0BOT> think hard")
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, Recorder(slow)) as a:
        assert await post(a, mention) == 200
        await fake_slack.wait_for_reactions(1, timeout=10)
        # leaving the block stops A: the turn finishes and commits, its delivery workers are gone
    assert fake_slack.reaction_log == [("add", "C0GENERAL", mention["ts"], "eyes")]
    assert not fake_slack.posts
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as b:
        await fake_slack.wait_for_posts("C0GENERAL", timeout=10)
        await b.idle()
        rows = await b.gateway.store.db.fetch("SELECT body FROM outbox")
        assert [r["body"]["meta"].get("typing_shown") for r in rows] == [True]
    assert [p.text for p in fake_slack.posts] == ["done"]
    assert fake_slack.reaction_log == [
        ("add", "C0GENERAL", mention["ts"], "eyes"), ("remove", "C0GENERAL", mention["ts"], "eyes")]


async def test_reaction_taken_back_once_for_several_replies_and_when_nothing_is_said(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    async def slow(turn: Turn) -> TurnResult:
        await asyncio.sleep(1.2)  # the gateway shows "working" after 0.5 s
        if "quiet" in turn.envelope.text:
            return TurnResult(replies=[])
        return TurnResult(replies=[Reply(text="first"), Reply(text="second")])

    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, Recorder(slow)) as h:
        two = app_mention_event("<@U0BOT> two answers")
        assert await post(h, two) == 200
        await fake_slack.wait_for_posts("C0GENERAL", 2, timeout=10)
        await h.idle()
        rows = await h.gateway.store.db.fetch("SELECT body FROM outbox ORDER BY seq")
        assert [r["body"]["meta"].get("typing_shown") for r in rows] == [None, True]  # the last chunk only

        quiet = app_mention_event("<@U0BOT> stay quiet", channel="C0OTHER")
        assert await post(h, quiet) == 200
        await fake_slack.wait_for_reactions(4, timeout=10)
        await h.idle()
    assert fake_slack.reaction_log == [
        ("add", "C0GENERAL", two["ts"], "eyes"), ("remove", "C0GENERAL", two["ts"], "eyes"),
        ("add", "C0OTHER", quiet["ts"], "eyes"), ("remove", "C0OTHER", quiet["ts"], "eyes")]
    assert fake_slack.count("reactions.remove") == 2  # no second, failing, removal
    assert [p.text for p in fake_slack.posts] == ["first", "second"]


async def test_thread_membership_renewed_by_a_mention_and_forgotten_after_expiry(
    soulgate_database_url: str, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.slack import adapter as slack_adapter

    day = 86_400.0
    clock = [time.time()]
    monkeypatch.setattr(slack_adapter, "_now", lambda: clock[0])

    async def left(h: GatewayHarness) -> float:
        [row] = await h.gateway.store.db.fetch(
            "SELECT expires_at - now() AS left FROM kv_state WHERE key LIKE 'adapter:slack:main:thread:%'")
        return float(row["left"].total_seconds() / day)

    rec = Recorder()
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}, rec) as h:
        root = app_mention_event("<@U0BOT> start")
        assert await post(h, root) == 200
        await fake_slack.wait_for_posts("C0GENERAL")
        assert 89.9 < await left(h) <= 90
        # 89 days later (for the adapter and for the stored row) a mention in the thread renews it
        clock[0] += 89 * day
        await h.gateway.store.db.fetch("UPDATE kv_state SET expires_at = now() + interval '1 day'")
        assert await post(h, app_mention_event("<@U0BOT> still here?", thread_ts=root["ts"])) == 200
        await fake_slack.wait_for_posts("C0GENERAL", 2)
        assert 89.9 < await left(h) <= 90
        # once it expired, a reply without a mention is chatter again, here as on any instance
        clock[0] += 91 * day
        await h.gateway.store.db.fetch("UPDATE kv_state SET expires_at = now() - interval '1 second'")
        assert await post(h, message_event("anyone?", thread_ts=root["ts"])) == 200
        await h.idle()
        assert len(fake_slack.posts) == 2 and len(rec.turns) == 2


async def test_quick_answer_shows_no_reaction(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    async with slack_gateway(soulgate_database_url, {"main": account(fake_slack)}) as h:
        assert await post(h, app_mention_event("<@U0BOT> quick")) == 200
        await fake_slack.wait_for_posts("C0GENERAL", timeout=10)
        await h.idle()
        rows = await h.gateway.store.db.fetch("SELECT body FROM outbox")
        assert [r["body"]["meta"].get("typing_shown") for r in rows] == [None]
    assert fake_slack.reaction_log == []


async def test_several_workspaces_at_once(soulgate_database_url: str) -> None:
    second = Workspace(token="xoxb-second", team_id="T0SECOND", user_id="U0BOT2", bot_id="B0BOT2")
    async with start_fake_slack([Workspace(), second]) as fake:
        accounts = {
            "main": account(fake),
            "second": {**account(fake, second), "signing_secret": "second-secret", "ack_reaction": "",
                       "reply_in_thread": False},
            "broken": {**account(fake), "bot_token": "xoxb-revoked", "ack_reaction": ":thinking_face:"},
        }
        async with slack_gateway(soulgate_database_url, accounts) as h:
            assert await post(h, app_mention_event("<@U0BOT> one", channel="C0ONE")) == 200
            two = event_callback(app_mention_event("<@U0BOT2> two", channel="C0TWO", team="T0SECOND"),
                                 workspace=second)
            assert (await post_signed(url(h, "second"), two, "second-secret")).status == 200
            # Each account checks its own signing secret.
            assert (await post_signed(url(h, "second"), two, fake.signing_secret)).status == 401
            one_post = (await fake.wait_for_posts("C0ONE"))[0]
            two_post = (await fake.wait_for_posts("C0TWO"))[0]
            assert (one_post.team_id, one_post.text) == ("T0SOULGATE", "echo: one (0 earlier)")
            assert (two_post.team_id, two_post.text) == ("T0SECOND", "echo: two (0 earlier)")
            assert two_post.thread_ts is None and one_post.thread_ts is not None
            assert {"xoxb-soulgate-test", "xoxb-second"} <= {c.token for c in fake.calls_to("auth.test")}
            # A revoked token shows in the status and the audit; the other accounts go on.
            for _ in range(100):
                adapters = {a["account"]: a for a in (await h.gateway.status())["adapters"]}
                if "auth_error" in adapters["broken"]:
                    break
                await asyncio.sleep(0.05)
            assert adapters["broken"]["auth_error"] == "invalid_auth"
            assert adapters["main"]["bot_user_id"] == "U0BOT" and "auth_error" not in adapters["main"]
            assert await h.gateway.store.audit.recent(kind="slack_auth_failed")


@asynccontextmanager
async def file_server(token: str) -> AsyncIterator[tuple[str, list[str]]]:
    """Serves Slack-like private files: only with the bot token; redirects to a login page otherwise."""
    seen: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.headers.get("Authorization") != f"Bearer {token}":
            raise web.HTTPFound("/login")
        if request.path.endswith("/redirect"):
            raise web.HTTPFound("/login")
        return web.Response(body=b"%PDF-" + b"x" * 95, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_plugins_download_inbound_files_with_the_bot_token(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    async def describe(turn: Turn) -> TurnResult:
        [segment] = [s for s in turn.envelope.segments if s.kind == "attachment"]
        assert segment.attachment is not None
        data = await turn.services.fetch_attachment(turn.envelope, segment.attachment)
        return TurnResult(replies=[Reply(text=f"{segment.value}: {len(data)} bytes, {data[:5].decode()}")])

    async with file_server(fake_slack.workspace.token) as (base, seen):
        cfg = account(fake_slack, file_hosts=["127.0.0.1"], max_download_bytes=1000)
        async with slack_gateway(soulgate_database_url, {"main": cfg}, Recorder(describe)) as h:
            files = [{"id": "F1", "name": "plan.pdf", "mimetype": "application/pdf", "size": 100,
                      "url_private": f"{base}/files-pri/T0-F1/plan.pdf"}]
            assert await post(h, message_event("", channel="D0DM", files=files)) == 200
            reply = (await fake_slack.wait_for_posts("D0DM"))[0]
            assert reply.text == "plan.pdf: 100 bytes, %PDF-"

            adapter = h.gateway.adapters[("slack", "main")]
            refused = {
                "other host": Attachment("a", ref=base.replace("127.0.0.1", "localhost") + "/files-pri/x"),
                "no url": Attachment("b", ref=None),
                "redirect": Attachment("c", ref=f"{base}/files-pri/redirect"),
                "declared too big": Attachment("d", size=5000, ref=f"{base}/files-pri/d"),
            }
            for attachment in refused.values():
                with pytest.raises(ValueError):
                    await adapter.fetch_attachment(attachment)
            with pytest.raises(ValueError, match="cap"):  # the body outgrows the caller's cap
                await adapter.fetch_attachment(Attachment("e", ref=f"{base}/files-pri/e"), max_bytes=50)
            assert seen == ["/files-pri/T0-F1/plan.pdf", "/files-pri/redirect", "/files-pri/e"]


# -- Socket Mode ------------------------------------------------------------------------------


async def test_socket_mode_acks_after_the_admit_commit(
    soulgate_database_url: str, fake_slack: FakeSlack
) -> None:
    cfg = {"mode": "socket", "bot_token": fake_slack.workspace.token, "app_token": fake_slack.app_token,
           "api_base_url": fake_slack.base_url}
    async with slack_gateway(soulgate_database_url, {"main": cfg}) as h:
        gate = asyncio.Event()
        admit = h.gateway.admit

        async def gated(envelope: Envelope) -> Any:
            await gate.wait()
            return await admit(envelope)

        h.gateway.admit = gated  # type: ignore[method-assign]
        mention = app_mention_event("<@U0BOT> over the socket")
        envelope = await fake_slack.push_envelope(event_callback(mention))
        with pytest.raises(TimeoutError):
            await fake_slack.wait_for_ack(envelope, timeout=0.3)
        assert await inbox_rows(h) == 0
        gate.set()
        assert await fake_slack.wait_for_ack(envelope) == {"envelope_id": envelope.envelope_id}
        assert await inbox_rows(h) == 1
        reply = (await fake_slack.wait_for_posts("C0GENERAL"))[0]
        assert (reply.text, reply.thread_ts) == ("echo: over the socket (0 earlier)", mention["ts"])

        again = await fake_slack.redeliver(envelope)  # same event_id, new envelope id
        await fake_slack.wait_for_ack(again)
        bot_echo = await fake_slack.push_envelope(event_callback(
            message_event("echo", user="U0BOT", bot_id="B0BOT", thread_ts=mention["ts"])))
        await fake_slack.wait_for_ack(bot_echo)  # ignored, but acked so Slack stops resending
        await h.idle()
        assert len(fake_slack.posts) == 1 and await inbox_rows(h) == 1
        status = next(a for a in (await h.gateway.status())["adapters"] if a["channel"] == "slack")
        assert status["mode"] == "socket" and status["connected"] is True


# -- configuration ---------------------------------------------------------------------------------


def test_config_problems_are_reported_with_their_key() -> None:
    good = {"bot_token": "xoxb-1", "signing_secret": "s"}
    channels = {
        "ok": good,
        "no_secret": {"bot_token": "xoxb-1"},
        "socket_no_app_token": {"bot_token": "xoxb-1", "mode": "socket"},
        "wrong_tokens": {"bot_token": "s3cret", "mode": "socket", "app_token": "xoxb-2"},
        "typo": {**good, "reply_in_threads": True},
        "bad_path": {**good, "path": "slack/events"},
        "bad_reaction": {**good, "ack_reaction": "thumbs up"},
    }
    gw = Gateway(test_config({"channels": {"slack": channels}}), entry_points=False)
    problems = "\n".join(gw.load_plugins())
    assert "channels.slack.no_secret: " in problems and "signing_secret is required" in problems
    assert "channels.slack.socket_no_app_token: " in problems and "app_token is required" in problems
    assert "channels.slack.wrong_tokens.bot_token: " in problems
    assert "channels.slack.wrong_tokens.app_token: " in problems
    assert "channels.slack.typo.reply_in_threads: unknown key" in problems
    assert "channels.slack.bad_path.path: " in problems
    assert "channels.slack.bad_reaction.ack_reaction: " in problems
    assert "channels.slack.ok" not in problems and "s3cret" not in problems
    assert list(gw.adapters) == [("slack", "ok")]
    assert SlackConfig.model_validate({**good, "api_base_url": "http://127.0.0.1:1/api"}).api_base_url.endswith(
        "/api/")
    assert SlackConfig.model_validate({**good, "ack_reaction": ":eyes:"}).ack_reaction == "eyes"
    with pytest.raises(ConfigError):
        test_config({"channels": {"slack": "not a table"}})


# -- the pure parts: text in, mrkdwn out ----------------------------------------------------------


def test_plain_text_segments_and_mention_removal() -> None:
    text, segments, mentioned = plain_text(
        "<@U0BOT> ask <@U0BOB> in <#C0DEV|dev> about <https://x.io|https://x.io> &lt;b&gt; <!here>\n"
        "&gt; quoted\n    indented code", "U0BOT")
    assert mentioned
    assert text == "ask @U0BOB in #dev about https://x.io <b> @here\n> quoted\n    indented code"
    assert [(s.kind, s.value, s.label) for s in segments] == [
        ("mention", "U0BOB", None), ("mention", "C0DEV", "#dev"), ("link", "https://x.io", "https://x.io"),
        ("quote", "quoted", None)]


def test_files_and_kinds_from_events() -> None:
    cfg = SlackConfig.model_validate({"bot_token": "xoxb-1", "signing_secret": "s"})
    me = Identity(bot_user_id="U0BOT")
    files = [{"id": "F1", "name": "plan.pdf", "mimetype": "application/pdf", "size": 1234,
              "url_private": "https://files.slack.com/plan.pdf"}]
    parsed = parse_event(event_callback(message_event("", channel="G0MPIM", files=files)), "main", cfg, me)
    assert isinstance(parsed, Parsed)
    env = parsed.envelope
    assert (env.conversation.kind, env.addressed, env.text) == ("group", False, "")
    attachment = env.segments[0].attachment
    assert attachment is not None and (attachment.name, attachment.size, attachment.mime) == (
        "plan.pdf", 1234, "application/pdf")
    assert env.thread == env.reply_to.data["thread_ts"] == env.reply_to.data["ts"]
    private = parse_event(event_callback(message_event("x", channel="C0P", channel_type="group")), "m", cfg, me)
    assert isinstance(private, Parsed) and private.envelope.conversation.kind == "channel"
    assert isinstance(parse_event(event_callback(message_event("x", subtype="me_message")), "m", cfg, me), Ignored)
    with pytest.raises(ValueError):
        parse_event({"type": "event_callback"}, "m", cfg, me)


def test_markdown_to_mrkdwn() -> None:
    md = ("# Title\n\nSome **bold**, *italic*, ~~gone~~, `a<b` & [docs](https://x.io/?a=1&b=2).\n\n"
          "- one\n- two\n\n> quote\n\n```python\nif a < b:\n    pass\n```\n\n"
          "| k | value |\n|---|---|\n| a | 1 |\n\n<!channel> <@U123>")
    assert to_mrkdwn(md) == (
        "*Title*\n\nSome *bold*, _italic_, ~gone~, `a&lt;b` &amp; <https://x.io/?a=1&amp;b=2|docs>.\n\n"
        "• one\n• two\n\n> quote\n\n```\nif a &lt; b:\n    pass\n```\n\n"
        "```\nk | value\n--+------\na | 1\n```\n\n&lt;!channel&gt; &lt;@U123&gt;")


def test_render_chunks_fit_and_number_themselves() -> None:
    text = "\n\n".join("&" * 300 for _ in range(30))  # escaping makes it five times longer
    chunks = render_chunks(Reply(text=text, in_reply_to="x"), 4000)
    assert len(chunks) > 11 and all(len(c.text) <= 4000 for c in chunks)
    assert "".join(c.text for c in chunks).count("&amp;") == 9000
    assert [c.meta["slack_part"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert {c.meta["slack_parts"] for c in chunks} == {len(chunks)}
