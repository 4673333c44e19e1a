"""Every built-in channel answers when roles are split: an ``--role ingress`` gateway takes
the message in, a ``--role worker`` gateway (which never calls ``Adapter.start``) runs
the turn and delivers the reply, typing hint and all, to the platform's fake.

Both gateways run in this process on one real Postgres database, with the real
platform SDKs against the fakes in ``tests/fakes``. The worker gets what sending
needs from ``Adapter.bind`` (a context that refuses to receive).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

from adapters.email import EmailAdapter
from adapters.teams import TeamsAdapter
from gateway import Adapter, AdapterContext, Reply, ReplyAddress, SendResult, Turn, TurnResult
from gateway.runtime import Gateway, Role
from gateway.testing import make_envelope, test_config
from gateway.testing.recorder import RecordingResponder
from tests.adapters.test_email import account_table
from tests.adapters.test_teams import account as teams_account
from tests.adapters.test_teams import plugin_under_test
from tests.fakes import mailmessages as mm
from tests.fakes import mailserver
from tests.fakes import slack as slack_fakes
from tests.fakes import teams as teams_fakes
from tests.fakes.mailserver import FakeImapServer, FakeSmtpServer
from tests.fakes.slack import FakeSlack, event_callback, message_event, post_signed
from tests.fakes.teams import FakeTeams
from tests.fakes.telegram import FakeTelegram, fake_telegram_fixture  # noqa: F401 - the fixture

fake_slack = slack_fakes.fake_slack
fake_teams = teams_fakes.fake_teams
imap_server = mailserver.imap_server
smtp_server = mailserver.smtp_server

PERSONAL = "a:1personalChatIdFakeTeams0001"
CHANNEL = "19:fakeChannel0001@thread.tacv2"


@asynccontextmanager
async def split_roles(
    db: str, config: dict[str, Any], plugins: Iterable[tuple[str, object]]
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """An ingress gateway and a worker gateway on one database, both started."""
    plugins = list(plugins)

    def gateway(role: Role) -> Gateway:
        cfg = test_config({**config, "gateway": {"instance_name": role}})
        return Gateway(cfg, role=role, extra_plugins=plugins, entry_points=False, database_url=db)

    ingress, worker = gateway("ingress"), gateway("worker")
    await ingress.start()
    try:
        await worker.start()
        try:
            yield ingress, worker
        finally:
            await asyncio.shield(worker.stop())
    finally:
        await asyncio.shield(ingress.stop())


async def check_split(ingress: Gateway, worker: Gateway, channel: str) -> None:
    """The worker ran every turn and sent every chunk through an adapter it never started."""
    assert worker._started_adapters == [] and worker.public_port is None
    assert any(a.channel == channel for a in ingress._started_adapters)
    claimed = await worker.store.db.fetch("SELECT claimed_by FROM inbox")
    assert claimed and {r["claimed_by"].split("/")[0] for r in claimed} == {"worker"}
    assert worker.metrics.delivered.labels(channel)._value.get() >= 1
    assert ingress.metrics.delivered.labels(channel)._value.get() == 0


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a deadline
    """Until ``check()`` holds, e.g. the fake recorded the typing hint (sent after 0.5 s of a turn)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - the condition lives in another component
            await asyncio.sleep(0.05)


# -- Teams: botbuilder is loaded and the state for top-level posts is reached without start() --


async def test_teams_worker_sends_replies_typing_and_top_level_posts(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async def respond(turn: Turn) -> TurnResult:
        if turn.envelope.conversation.kind == "channel":  # two chunks: the second goes into the first's thread
            return TurnResult(replies=[Reply(text="A" * 900 + "\n\n" + "B" * 900)])
        await eventually(lambda: any(c.type == "typing" for c in fake_teams.calls))
        return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])

    config = {
        "plugins": {"disabled": ["teams"]},  # replaced by the same plugin with the fake's credentials
        "channels": {"teams": {"main": teams_account(fake_teams, max_message_chars=1000)}},
        "routes": [{"agent": "assistant", "channel": "teams", "options": {"reply_style": "top_level"}}],
    }
    plugin = plugin_under_test(fake_teams, RecordingResponder(respond))
    async with split_roles(soulgate_database_url, config, [("teams-under-test", plugin)]) as (ingress, worker):
        url = f"http://127.0.0.1:{ingress.public_port}/api/messages"
        assert (await fake_teams.post_activity(url, fake_teams.personal_message("hello"))).status == 200
        typing, reply = await fake_teams.wait_for_activities(2, conversation_id=PERSONAL, within=15)
        asked = fake_teams.channel_message("report", activity_id="1700000000400")
        assert (await fake_teams.post_activity(url, asked)).status == 200
        await fake_teams.wait_for_activities(4, within=15)
        first, second = [c for c in fake_teams.activities if (c.conversation_id or "").startswith(CHANNEL)]
        await worker.wait_idle()
        await check_split(ingress, worker, "teams")
        adapter = worker.adapters[("teams", "main")]
        assert isinstance(adapter, TeamsAdapter) and adapter.status()["cached_credentials"] == 1
    assert (typing.type, reply.text) == ("typing", "echo: hello")
    assert first.conversation_id == CHANNEL  # a new top-level post
    assert second.conversation_id == f"{CHANNEL};messageid={first.response_id}"  # found in adapter state
    assert (first.text, second.text) == ("A" * 900, "B" * 900)


async def test_teams_adapter_sends_without_bind_or_start_and_closes(fake_teams: FakeTeams) -> None:
    # What a plugin's own tooling may do: build the adapter and send. Only a top-level post of
    # several chunks needs adapter state, and says so instead of posting in the wrong place.
    from adapters.teams.config import TeamsConfig

    adapter = TeamsAdapter("main", TeamsConfig.model_validate(teams_account(fake_teams, max_message_chars=1000)),
                           credentials_factory=fake_teams.credentials_factory())
    reference = {"serviceUrl": fake_teams.service_url, "conversation": {"id": PERSONAL}, "channelId": "msteams"}
    address = ReplyAddress("teams", "main", {"reference": reference, "kind": "direct"})
    try:
        result = await adapter.send(address, Reply(text="proactive"))
        assert result.platform_message_id
        await adapter.typing(address)
        channel = ReplyAddress("teams", "main", {"reference": {**reference, "conversation": {"id": CHANNEL}},
                                                 "kind": "channel"})
        chunks = adapter.render(Reply(text="A" * 900 + "\n\n" + "B" * 900, meta={"teams_reply_style": "top_level"}))
        assert len(chunks) == 2
        for chunk in chunks:  # refused before anything is posted: a retry cannot post twice
            with pytest.raises(RuntimeError, match="needs adapter state"):
                await adapter.send(channel, chunk)
    finally:
        await adapter.close()
        await adapter.close()  # idempotent
    assert [(c.type, c.text) for c in fake_teams.activities] == [("message", "proactive"), ("typing", None)]


# -- email: SMTP from the worker, and the attachments the ingress kept ------------------------


async def test_email_worker_answers_and_reads_kept_attachments(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async def describe(turn: Turn) -> TurnResult:
        env = turn.envelope
        sizes = [len(await turn.services.fetch_attachment(env, s.attachment))
                 for s in env.segments if s.attachment is not None]
        return TurnResult(replies=[Reply(text=f"got {sizes} bytes")])

    pdf = b"%PDF-1.4\n" + b"x" * 300 + b"\n%%EOF\n"
    config = {"channels": {"email": {"support": account_table(imap_server, smtp_server)}}}
    plugin = RecordingResponder(describe).plugin()
    async with split_roles(soulgate_database_url, config, [("recorder", plugin)]) as (ingress, worker):
        taker = ingress.adapters[("email", "support")]
        # a mailbox's first poll starts at its newest mail: deliver after it (as tests/adapters/test_email.py)
        await eventually(lambda: taker.status().get("polls", 0) >= 1)
        await imap_server.deliver(mm.attachment_message("See attached.\n", content=pdf,
                                                        message_id="<q1@example.org>"))
        (sent,) = await smtp_server.wait_for_messages(1, timeout=15)
        await worker.wait_idle()
        await check_split(ingress, worker, "email")
        adapter = worker.adapters[("email", "support")]
        assert isinstance(adapter, EmailAdapter) and adapter.status()["sent"] == 1
    assert f"got [{len(pdf)}] bytes" in sent.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert sent.message["In-Reply-To"] == "<q1@example.org>"


# -- Telegram and Slack: their sessions open lazily; typing hints go out from the worker -------


async def test_telegram_worker_answers_with_typing(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    async def slow(turn: Turn) -> TurnResult:
        await eventually(lambda: bool(fake_telegram.calls["sendChatAction"]))
        return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])

    table = {"token": fake_telegram.token, "api_base": fake_telegram.base_url, "poll_timeout": 1}
    plugin = RecordingResponder(slow).plugin()
    async with split_roles(soulgate_database_url, {"channels": {"telegram": {"main": table}}},
                           [("recorder", plugin)]) as (ingress, worker):
        fake_telegram.push_private_text("hello there")
        [sent] = await fake_telegram.wait_for_messages(1001, 1)
        await worker.wait_idle()
        await check_split(ingress, worker, "telegram")
    assert sent.text == "echo: hello there"
    assert fake_telegram.calls["sendChatAction"][0].params["chat_id"] == 1001


async def test_slack_worker_answers_with_a_reaction(soulgate_database_url: str, fake_slack: FakeSlack) -> None:
    async def slow(turn: Turn) -> TurnResult:
        await eventually(lambda: fake_slack.count("reactions.add") > 0)
        return TurnResult(replies=[Reply(text=f"echo: {turn.envelope.text}")])

    table = {"bot_token": fake_slack.workspace.token, "signing_secret": fake_slack.signing_secret,
             "api_base_url": fake_slack.base_url}
    plugin = RecordingResponder(slow).plugin()
    async with split_roles(soulgate_database_url, {"channels": {"slack": {"main": table}}},
                           [("recorder", plugin)]) as (ingress, worker):
        url = f"http://127.0.0.1:{ingress.public_port}/slack/main/events"
        dm = message_event("hello", channel="D0DM")
        assert (await post_signed(url, event_callback(dm), fake_slack.signing_secret)).status == 200
        [reply] = await fake_slack.wait_for_posts("D0DM")
        await worker.wait_idle()
        await check_split(ingress, worker, "slack")
    assert reply.text == "echo: hello"
    # the "working on it" reaction, taken back once the answer is posted
    assert (fake_slack.count("reactions.add"), fake_slack.count("reactions.remove")) == (1, 1)
    assert fake_slack.calls_to("reactions.add")[0].args["timestamp"] == dm["ts"]


# -- the context bind() gets --------------------------------------------------------------------


class _Probe(Adapter):
    """Records what the gateway called, in order, and the contexts it was given."""

    channel: ClassVar[str] = "probe"

    def __init__(self, account: str = "main") -> None:
        super().__init__(account)
        self.calls: list[str] = []
        self.bound: AdapterContext | None = None
        self.started: AdapterContext | None = None

    async def bind(self, ctx: AdapterContext) -> None:
        self.calls.append("bind")
        self.bound = ctx

    async def start(self, ctx: AdapterContext) -> None:
        self.calls.append("start")
        self.started = ctx

    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        assert self.bound is not None
        await self.bound.set_state("last", reply.text)
        return SendResult()


@pytest.mark.parametrize(("role", "calls"), [("worker", ["bind"]), ("all", ["bind", "start"])])
async def test_bind_comes_first_in_every_role_with_a_context_that_only_sends(
    soulgate_database_url: str, role: Role, calls: list[str]
) -> None:
    probe = _Probe()
    gw = Gateway(test_config(), role=role, extra_plugins=[("recorder", RecordingResponder().plugin())],
                 entry_points=False, database_url=soulgate_database_url)
    gw.add_adapter(probe)
    await gw.start()
    try:
        assert probe.calls == calls and probe.bound is not None
        ctx = probe.bound
        routes = list(gw.public_routes)
        async def handler(request: Any) -> None:
            return None

        async def poll() -> None:
            return None

        for refused in (lambda: ctx.add_route("POST", "/probe", handler),
                        lambda: ctx.leadership("probe-poller")):
            with pytest.raises(RuntimeError, match=r"probe/main: \w+ belongs in Adapter.start\(\)"):
                refused()
        envelope = make_envelope("hi", channel="probe")
        for coro in (ctx.admit(envelope), ctx.remember_conversation(envelope),
                     ctx.run_as_leader("probe-poller", poll)):
            with pytest.raises(RuntimeError, match=r"belongs in Adapter\.start"):
                await coro
        assert gw.public_routes == routes
        rows = await gw.store.db.fetch("SELECT count(*) AS n FROM inbox")
        assert rows[0]["n"] == 0  # nothing was admitted
        # state and audit work, under the same keys the receiving context uses
        await gw.send_proactive(ReplyAddress("probe", "main"), "stored by the sending side")
        await gw.wait_idle()
        assert await ctx.get_state("last") == "stored by the sending side"
        if probe.started is not None:
            assert await probe.started.get_state("last") == "stored by the sending side"
        await ctx.audit("probe_checked", {"ok": True})
        audited = await gw.store.db.fetch("SELECT detail FROM audit WHERE kind = 'probe_checked'")
        assert [dict(r["detail"]) for r in audited] == [{"channel": "probe", "account": "main", "ok": True}]
    finally:
        await asyncio.shield(gw.stop())


async def test_telegram_worker_knows_chat_migrations_learned_elsewhere(
    soulgate_database_url: str, fake_telegram: FakeTelegram
) -> None:
    """A group that became a supergroup: a worker that never started its adapter sends to the
    new id at once (bind loads the migrations), instead of failing once on the old one."""
    from tests.adapters.test_telegram import telegram_gateway

    old, new = -4007, -1004007
    async with telegram_gateway(soulgate_database_url, fake_telegram) as h:
        fake_telegram.push_message(fake_telegram.message(fake_telegram.chat(old), "@soulgate_bot hi"))
        await fake_telegram.wait_for_messages(old, 1)  # the group's conversation is stored
        await h.idle()
        fake_telegram.push_migration(old, new)
        for _ in range(250):
            if await h.gateway.store.audit.recent(kind="telegram_chat_migrated"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the migration was never recorded")
    table = {"token": fake_telegram.token, "api_base": fake_telegram.base_url, "poll_timeout": 1}
    cfg = test_config({"channels": {"telegram": {"main": table}}, "gateway": {"instance_name": "worker"}})
    worker = Gateway(cfg, role="worker", entry_points=False, database_url=soulgate_database_url)
    sends_before = len(fake_telegram.calls["sendMessage"])
    await worker.start()
    try:
        await worker.services.send(f"telegram:main:{old}:", "a note")
        [sent] = await fake_telegram.wait_for_messages(new, 1)
        await worker.wait_idle()
    finally:
        await asyncio.shield(worker.stop())
    assert sent.text == "a note" and worker._started_adapters == []
    assert [c.params["chat_id"] for c in fake_telegram.calls["sendMessage"][sends_before:]] == [new]
