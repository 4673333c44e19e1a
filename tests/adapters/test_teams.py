"""The Teams adapter end to end: real gateway, real Postgres, real botbuilder, fake Bot Framework.

Inbound activities carry tokens signed with the fake's RSA key and are checked
by botbuilder's own validator against the fake's OpenID metadata/JWKS (set via
the ``endpoints`` config table). Replies go through botbuilder's CloudAdapter
``continue_conversation``, MSAL and msrest to the fake Bot Connector. The
``fake_teams`` fixture fails a test that tries to reach anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

import adapters.teams as teams
from adapters.teams.adapter import TEAMS_LIMITS, TeamsAdapter, bucket
from gateway import ConfigError, Reply, ReplyAddress, Turn, TurnResult, hookimpl, utf16_len
from gateway.testing import GatewayHarness, running_gateway, test_config
from gateway.testing.recorder import RecordingResponder
from tests.fakes import teams as fakes
from tests.fakes.teams import FakeTeams, post_activity, start_fake_teams

fake_teams = fakes.fake_teams
Respond = Callable[[Turn], Awaitable[TurnResult]]
PERSONAL = "a:1personalChatIdFakeTeams0001"
GROUP = "19:fakegroupchat0001@thread.v2"
CHANNEL = "19:fakeChannel0001@thread.tacv2"
TEAM = "19:fakeTeamGeneral0001@thread.tacv2"


Recorder = RecordingResponder

def plugin_under_test(fake: FakeTeams, recorder: Recorder, password: str | None = None) -> types.SimpleNamespace:
    """The Teams plugin as built in, but with the fake's loopback credentials factory
    (MSAL would otherwise do instance discovery on login.microsoftonline.com)."""

    class _Responder:
        name = "recorder"

        async def respond(self, turn: Turn) -> TurnResult:
            return await recorder.respond(turn)

    @hookimpl
    def soulgate_adapters() -> list[Any]:
        return [teams.adapter_spec(credentials_factory=fake.credentials_factory(password=password))]

    @hookimpl
    def soulgate_responder(services: Any) -> Any:
        return _Responder()

    return types.SimpleNamespace(
        soulgate_adapters=soulgate_adapters,
        soulgate_reply=teams.soulgate_reply,  # the built-in hook itself
        soulgate_responder=soulgate_responder,
    )


def account(fake: FakeTeams, **extra: Any) -> dict[str, Any]:
    return {
        "app_id": fake.app_id,
        "app_password": fake.app_password,
        "app_type": "MultiTenant",
        "allowed_tenants": [fake.tenant_id],
        "endpoints": {
            "to_bot_from_channel_openid_metadata_url": fake.openid_metadata_url,
            "to_bot_from_emulator_openid_metadata_url": fake.emulator_openid_metadata_url,
            "to_channel_from_bot_login_url": fake.login_url,
            "oauth_url": f"{fake.base_url}/oauth",
            "validate_authority": False,
        },
        **extra,
    }


@asynccontextmanager
async def teams_gateway(
    db: str, fake: FakeTeams, recorder: Recorder | None = None, *, routes: list[dict[str, Any]] | None = None,
    password: str | None = None, gateway: dict[str, Any] | None = None, **extra: Any,
) -> AsyncIterator[GatewayHarness]:
    config = test_config({
        "plugins": {"disabled": ["teams"]},  # replaced by plugin_under_test
        "channels": {"teams": {"main": account(fake, **extra)}},
        "routes": routes or [],
        **(gateway or {}),
    })
    plugin = plugin_under_test(fake, recorder or Recorder(), password)
    async with running_gateway(db, config=config, plugins=[("teams-under-test", plugin)]) as h:
        yield h


def url(h: GatewayHarness) -> str:
    return f"http://127.0.0.1:{h.gateway.public_port}/api/messages"


async def count(h: GatewayHarness, table: str) -> int:
    rows = await h.gateway.store.db.fetch(f"SELECT count(*) AS n FROM {table}")
    return int(rows[0]["n"])


async def admin(h: GatewayHarness, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": "Bearer test-admin-token"}
    async with aiohttp.ClientSession() as http, http.request(
        method, f"http://127.0.0.1:{h.gateway.admin_port}{path}", json=body, headers=headers
    ) as resp:
        return resp.status, await resp.json()


# -- answered where they came from -------------------------------------------------------------


async def test_personal_group_and_channel_thread_answered_in_place(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    rec = Recorder()
    async with teams_gateway(soulgate_database_url, fake_teams, rec) as h:
        personal = fake_teams.personal_message("hello **there**", activity_id="1700000000001")
        assert (await fake_teams.post_activity(url(h), personal)).status == 200
        [dm] = await fake_teams.wait_for_activities(1, conversation_id=PERSONAL, within=10)

        group = fake_teams.group_chat_message("ask Soul about Soul", chat_name="Ops")
        assert (await fake_teams.post_activity(url(h), group)).status == 200
        [grp] = await fake_teams.wait_for_activities(1, conversation_id=GROUP, within=10)

        thread = f"{CHANNEL};messageid=1700000000100"
        reply_in_thread = fake_teams.channel_message(
            "status?", activity_id="1700000000105", thread_root_id="1700000000100"
        )
        assert (await fake_teams.post_activity(url(h), reply_in_thread)).status == 200
        [chan] = await fake_teams.wait_for_activities(1, conversation_id=thread, within=10)

    # Plain sends to the conversation (the thread, for a channel), Markdown kept.
    assert (dm.kind, dm.text, dm.activity["textFormat"]) == ("send", "echo: hello **there**", "markdown")
    assert "replyToId" not in dm.activity
    assert (grp.kind, grp.text) == ("send", "echo: ask Soul about Soul")
    assert (chan.kind, chan.text) == ("send", "echo: status?")
    assert dm.authorization is not None and dm.authorization.startswith("Bearer fake-teams-access-")

    e_dm, e_grp, e_chan = rec.envelopes
    assert (e_dm.conversation.kind, e_dm.conversation.id, e_dm.thread, e_dm.addressed) == (
        "direct", PERSONAL, None, True)
    assert e_dm.external_id == f"{PERSONAL}|1700000000001"
    assert e_dm.sender.id == "00000000-0000-0000-0000-00000000a11c"  # the AAD object id
    # Only the <at> mention entity is removed, not the other occurrences of the name.
    assert (e_grp.conversation.kind, e_grp.conversation.title, e_grp.text, e_grp.addressed) == (
        "group", "Ops", "ask Soul about Soul", True)
    assert (e_chan.conversation.kind, e_chan.conversation.id, e_chan.thread) == (
        "channel", CHANNEL, "1700000000100")
    assert e_chan.conversation.title == "Contoso / General"
    assert e_chan.reply_to.data["tenant_id"] == fake_teams.tenant_id
    assert (e_chan.reply_to.data["team_id"], e_chan.reply_to.data["channel_id"]) == (TEAM, CHANNEL)


async def test_unaddressed_group_message_is_admitted_but_not_answered(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        chatter = fake_teams.group_chat_message("lunch?", mention=False, activity_id="1700000000200")
        asked = fake_teams.group_chat_message("and you?", activity_id="1700000000201")
        assert (await fake_teams.post_activity(url(h), chatter)).status == 200
        assert (await fake_teams.post_activity(url(h), asked)).status == 200
        await fake_teams.wait_for_activities(1, within=10)
        await h.idle()
        assert await count(h, "inbox") == 2
    assert [a.text for a in fake_teams.activities] == ["echo: and you?"]


async def test_same_activity_twice_is_answered_once(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        activity = fake_teams.personal_message("once please", activity_id="1700000000300")
        first = await fake_teams.post_activity(url(h), activity)
        again = await fake_teams.post_activity(url(h), activity)  # Teams' retry after ~15 s
        assert (first.status, again.status) == (200, 200)
        await fake_teams.wait_for_activities(1, within=10)
        await h.idle()
        assert await count(h, "inbox") == 1
        _, body = await admin(h, "GET", "/api/status")
    assert [a.text for a in fake_teams.activities] == ["echo: once please"]
    [teams_status] = [a for a in body["adapters"] if a["channel"] == "teams"]
    assert teams_status["requests"] == {"admitted": 1, "duplicates": 1, "sent": 1}
    assert teams_status["insecure_dev_mode"] is False


# -- authentication ------------------------------------------------------------------------------

# Each of these made botbuilder's CloudAdapter.process answer 401 or 500; ours answers 401.
BAD_AUTH: list[tuple[str, Callable[[FakeTeams], dict[str, Any]]]] = [
    ("wrong-audience", lambda f: {"token": f.mint_token(audience="someone-else")}),
    ("wrong-issuer", lambda f: {"token": f.mint_token(issuer="https://evil.example")}),
    ("expired", lambda f: {"token": f.mint_token(expires_in=-600)}),
    ("unknown-key", lambda f: {"token": f.mint_token(kid="not-in-jwks")}),
    ("no-kid", lambda f: {"token": f.mint_token(include_kid=False)}),
    ("untrusted-signing-key", lambda f: {"token": f.mint_token(untrusted_key=True)}),
    ("key-not-endorsed-for-msteams", lambda f: {"token": f.mint_token(kid="webchat-only")}),
    ("missing-serviceurl-claim", lambda f: {"token": f.mint_token(omit_claims=("serviceurl",))}),
    ("serviceurl-mismatch", lambda f: {"token": f.mint_token(service_url="https://evil.example/")}),
    ("missing-issuer", lambda f: {"token": f.mint_token(omit_claims=("iss",))}),
    ("malformed-bearer", lambda f: {"authorization": "Bearer not-a-jwt"}),
    ("three-part-header", lambda f: {"authorization": "Bearer a b"}),
    ("basic-scheme", lambda f: {"authorization": "Basic dXNlcjpwYXNz"}),
    ("no-authorization-header", lambda f: {}),
]


async def test_every_bad_token_is_401_and_stores_nothing(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    fake_teams.add_signing_key("webchat-only", ["webchat"])  # before the first validation
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        statuses = {}
        for case, make in BAD_AUTH:
            activity = fake_teams.personal_message(f"let me in ({case})")
            statuses[case] = (await post_activity(url(h), activity, **make(fake_teams))).status
        # The same endpoint still works for a good token afterwards.
        good = await fake_teams.post_activity(url(h), fake_teams.personal_message("legit"))
        await fake_teams.wait_for_activities(1, within=10)
        await h.idle()
        inbox, conversations = await count(h, "inbox"), await count(h, "conversations")
    assert statuses == {case: 401 for case, _ in BAD_AUTH}
    assert good.status == 200
    assert (inbox, conversations) == (1, 1)
    assert [a.text for a in fake_teams.activities] == ["echo: legit"]


async def test_other_tenant_is_403_and_audited(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        outsider = fake_teams.personal_message("hi from elsewhere", tenant_id="99999999-aaaa-bbbb-cccc-000000000000")
        result = await fake_teams.post_activity(url(h), outsider)
        assert result.status == 403
        assert await count(h, "inbox") == 0
        status, body = await admin(h, "GET", "/api/audit?kind=teams_tenant_refused")
    assert status == 200
    [row] = body["audit"]
    assert row["detail"]["tenant_id"] == "99999999-aaaa-bbbb-cccc-000000000000"
    assert fake_teams.calls == []


async def test_malformed_bodies_are_400_and_store_nothing(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        token = fake_teams.mint_token()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url(h), data=b"{not json", headers=headers) as resp:
                not_json = resp.status
            async with http.post(url(h), data=b"[1, 2]", headers=headers) as resp:
                not_object = resp.status
        no_conversation = fake_teams.personal_message("x")
        del no_conversation["conversation"]
        missing = await fake_teams.post_activity(url(h), no_conversation)
        mistyped = {**fake_teams.personal_message("x"), "conversation": "a:not-an-object"}
        wrong_type = await fake_teams.post_activity(url(h), mistyped)
        assert await count(h, "inbox") == 0
    assert (not_json, not_object, missing.status, wrong_type.status) == (400, 400, 400, 400)


# -- proactive sends -----------------------------------------------------------------------------


async def test_install_stores_the_address_for_api_send(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        installed = fake_teams.conversation_update(conversation_type="personal")
        team_install = fake_teams.conversation_update(conversation_type="channel")
        for activity in (installed, team_install):
            assert (await fake_teams.post_activity(url(h), activity)).status == 200
        assert await count(h, "inbox") == 0  # nothing to answer
        status, listed = await admin(h, "GET", "/api/conversations?channel=teams")
        assert status == 200
        keys = {c["key"] for c in listed["conversations"]}
        assert keys == {f"teams:main:{PERSONAL}:", f"teams:main:{TEAM}:"}

        status, queued = await admin(h, "POST", "/api/send",
                                     {"conversation": f"teams:main:{PERSONAL}:", "text": "Reminder: *standup*"})
        assert status == 202 and len(queued["queued"]) == 1
        status, _ = await admin(h, "POST", "/api/send",
                                {"conversation": f"teams:main:{TEAM}:", "text": "Hello team"})
        assert status == 202
        [dm] = await fake_teams.wait_for_activities(1, conversation_id=PERSONAL, within=10)
        [post] = await fake_teams.wait_for_activities(1, conversation_id=TEAM, within=10)
        status, missing = await admin(h, "POST", "/api/send",
                                      {"conversation": "teams:main:a:never-seen:", "text": "x"})
    assert "never-seen" in missing["error"]
    assert (dm.kind, dm.text, dm.activity["textFormat"]) == ("send", "Reminder: *standup*", "markdown")
    assert post.text == "Hello team"
    assert status == 404


# -- delivery: splitting, reply style, retries, typing, token reuse -------------------------------

LONG = "\n\n".join(f"Paragraph {n}: " + "word " * 60 for n in range(12))


async def test_long_answer_split_in_order_under_the_limit(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async def long_answer(turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text=LONG)])

    async with teams_gateway(soulgate_database_url, fake_teams, Recorder(long_answer),
                             max_message_chars=1000) as h:
        for n in range(2):
            activity = fake_teams.personal_message(f"essay {n}")
            assert (await fake_teams.post_activity(url(h), activity)).status == 200
        chunks = await fake_teams.wait_for_activities(8, within=15)
        await h.idle()
    texts = [c.text or "" for c in fake_teams.activities]
    half = len(texts) // 2
    assert half >= 4 and texts[:half] == texts[half:]
    assert all(utf16_len(t) <= 1000 for t in texts)
    assert "\n\n".join(texts[:half]).split() == LONG.split()
    # One token for everything: credentials are cached across sends.
    assert len(fake_teams.token_requests) == 1
    assert fake_teams.tenant_discovery_requests == 1
    assert len(chunks) >= 8


async def test_reply_style_top_level_starts_a_new_post(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async def two_chunks(turn: Turn) -> TurnResult:
        return TurnResult(replies=[Reply(text="A" * 900 + "\n\n" + "B" * 900)])

    routes = [{"agent": "assistant", "channel": "teams", "options": {"reply_style": "top_level"}}]
    async with teams_gateway(soulgate_database_url, fake_teams, Recorder(two_chunks), routes=routes,
                             max_message_chars=1000) as h:
        asked = fake_teams.channel_message("report", activity_id="1700000000400")
        assert (await fake_teams.post_activity(url(h), asked)).status == 200
        first, second = await fake_teams.wait_for_activities(2, within=10)
        # the post's root is remembered for a week, well past the outbox TTL, then dropped
        [kept] = await h.gateway.store.db.fetch(
            "SELECT expires_at - now() AS left FROM kv_state WHERE key LIKE 'adapter:teams:%:post:%'")
        assert 6.9 < kept["left"].total_seconds() / 86_400 <= 7
    assert first.conversation_id == CHANNEL  # a new top-level post, not the thread of the question
    assert second.conversation_id == f"{CHANNEL};messageid={first.response_id}"
    assert (first.text, second.text) == ("A" * 900, "B" * 900)


async def test_sends_share_one_connection(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    """The connector client is kept per service URL: replies reuse its kept-alive connection
    (against the real service, a new one per message costs a TLS handshake each)."""
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        for n in range(4):
            asked = fake_teams.channel_message(f"hello {n}", activity_id=f"17000000007{n:02d}")
            assert (await fake_teams.post_activity(url(h), asked)).status == 200
            await fake_teams.wait_for_activities(n + 1, within=10)  # one at a time: no reason for a second one
        await h.idle()
    sends = [c for c in fake_teams.calls if c.kind in ("send", "reply")]
    assert len(sends) == 4 and all(c.status == 201 for c in sends)
    assert len({c.client_port for c in sends}) == 1


async def test_connector_429_412_502_504_are_retried(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    statuses = (429, 412, 502, 504)
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        for n, status in enumerate(statuses):
            fake_teams.fail_next(status, retry_after=1 if status == 429 else None)
            # Channel threads: Teams shows no typing there, so the reply is the only call.
            asked = fake_teams.channel_message(f"try {n}", activity_id=f"17000000005{n:02d}")
            assert (await fake_teams.post_activity(url(h), asked)).status == 200
            await fake_teams.wait_for_activities(n + 1, within=15)
        await h.idle()
    calls = fake_teams.calls
    for n, status in enumerate(statuses):
        thread = f"{CHANNEL};messageid=17000000005{n:02d}"
        assert [c.status for c in calls if c.conversation_id == thread] == [status, 201]
    assert [a.text for a in fake_teams.activities] == [f"echo: try {n}" for n in range(len(statuses))]


async def test_refused_token_is_renewed_and_hopeless_sends_dead_lettered(
    soulgate_database_url: str, fake_teams: FakeTeams
) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams) as h:
        first = fake_teams.channel_message("one", activity_id="1700000000600")
        assert (await fake_teams.post_activity(url(h), first)).status == 200
        await fake_teams.wait_for_activities(1, within=10)
        fake_teams.revoke_tokens()  # the connector now answers 401 to the cached token
        second = fake_teams.channel_message("two", activity_id="1700000000601")
        assert (await fake_teams.post_activity(url(h), second)).status == 200
        await fake_teams.wait_for_activities(2, within=15)
        fake_teams.fail_next(403)  # e.g. the bot was removed from the conversation
        third = fake_teams.channel_message("three", activity_id="1700000000602")
        assert (await fake_teams.post_activity(url(h), third)).status == 200
        await h.idle(15)
        _, dead = await admin(h, "GET", "/api/outbox/dead")
    assert [a.text for a in fake_teams.activities] == ["echo: one", "echo: two"]
    assert len(fake_teams.token_requests) == 2
    [row] = dead["dead"]
    assert "403" in str(row)


async def test_wrong_app_password_ends_in_dead_letter(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    async with teams_gateway(soulgate_database_url, fake_teams, password="wrong",
                             gateway={"delivery": {"max_attempts": 2}}) as h:
        asked = fake_teams.channel_message("hello?", activity_id="1700000000700")
        assert (await fake_teams.post_activity(url(h), asked)).status == 200
        await h.idle(15)
        _, dead = await admin(h, "GET", "/api/outbox/dead")
    assert fake_teams.activities == []
    assert all(t.status == 401 for t in fake_teams.token_requests)
    [row] = dead["dead"]
    assert "could not get a Bot Framework token" in str(row)


async def test_typing_indicator_while_the_turn_runs(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    async def slow(turn: Turn) -> TurnResult:
        for _ in range(200):  # until the gateway showed "typing" (it waits 0.5 s first)
            if any(c.type == "typing" for c in fake_teams.calls):
                break
            await asyncio.sleep(0.05)
        return TurnResult(replies=[Reply(text="done thinking")])

    async with teams_gateway(soulgate_database_url, fake_teams, Recorder(slow)) as h:
        assert (await fake_teams.post_activity(url(h), fake_teams.personal_message("think"))).status == 200
        await fake_teams.wait_for_activities(2, within=15)
    typing = [c for c in fake_teams.activities if c.type == "typing"]
    assert typing and typing[0].conversation_id == PERSONAL
    assert fake_teams.activities[-1].text == "done thinking"


# -- configuration and dev mode --------------------------------------------------------------


async def test_no_app_id_refuses_to_start(soulgate_database_url: str) -> None:
    config = test_config({"channels": {"teams": {"main": {"app_password": "x"}}}})
    with pytest.raises(ConfigError, match="app_id is required"):
        async with running_gateway(soulgate_database_url, config=config):
            pass


async def test_insecure_dev_mode_is_loud_and_works_without_tokens(
    soulgate_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="soulgate")
    async with start_fake_teams(require_outbound_token=False) as fake:
        # The built-in plugin exactly as shipped (no factory injected).
        config = test_config({"channels": {"teams": {"main": {"insecure_dev_mode": True}}}})
        async with running_gateway(soulgate_database_url, config=config) as h:
            assert isinstance(h.gateway.adapters[("teams", "main")], TeamsAdapter)
            result = await post_activity(url(h), fake.personal_message("hi from the emulator"))
            assert result.status == 200
            [reply] = await fake.wait_for_activities(1, within=10)
            _, body = await admin(h, "GET", "/api/status")
        assert fake.blocked_connections == []
    [entry] = [a for a in body["adapters"] if a["channel"] == "teams"]
    assert entry["insecure_dev_mode"] is True and "not authenticated" in entry["warning"]
    assert "INSECURE DEV MODE" in caplog.text
    assert reply.authorization is None  # no app id, no token
    assert reply.conversation_id == PERSONAL


BAD_TABLES: list[tuple[dict[str, Any], str]] = [
    ({"app_id": "a", "app_password": "p"}, "tenant_id is required"),
    ({"app_id": "a", "app_password": "p", "app_type": "MultiTenant"}, "allowed_tenants is required"),
    ({"app_id": "a", "tenant_id": "t"}, "app_password"),
    ({"app_id": "a", "app_password": "p", "tenant_id": "t", "certificate_thumbprint": "AB"}, "go together"),
    ({"app_id": "a", "app_password": "p", "tenant_id": "t", "path": "api"}, "must start with '/'"),
    ({"app_id": "a", "app_password": "p", "tenant_id": "t", "endpoints": {"TO_BOT": "x"}}, "unknown key"),
    ({"app_id": "a", "app_password": "p", "tenant_id": "t", "max_message_chars": 10}, "max_message_chars"),
    ({"app_id": "a", "app_password": "p", "tenant_id": "t", "reply_style": "sideways"}, "reply_style"),
]


def test_bad_config_is_reported_with_its_key() -> None:
    from gateway.runtime import Gateway

    for table, problem in BAD_TABLES:
        gateway = Gateway(test_config({"channels": {"teams": {"main": table}}}), entry_points=False)
        problems = gateway.load_plugins()  # what `soulgate check` reports
        assert any(p.startswith("channels.teams.main") and problem in p for p in problems), (table, problems)
        assert ("teams", "main") not in gateway.adapters


def test_rate_limits_per_conversation_never_exceed_teams_windows() -> None:
    cfg = teams.TeamsConfig(app_id="a", app_password="p", tenant_id="t")  # type: ignore[arg-type]
    adapter = TeamsAdapter("main", cfg)
    address = ReplyAddress("teams", "main", {"conversation_id": f"{CHANNEL};messageid=1", "reference": {}})
    limits = adapter.rate_limits(address)
    assert len(limits) == len(TEAMS_LIMITS)
    assert all(lim.key.startswith(f"teams:main:{CHANNEL};messageid=1:") for lim in limits)
    for (operations, window), lim in zip(TEAMS_LIMITS, limits, strict=True):
        # a GCRA bucket allows burst + window/interval operations in any window
        assert lim.burst + window / lim.interval <= operations + 1e-9
        assert bucket(operations, window) == (lim.interval, lim.burst)


# -- normalization details ---------------------------------------------------------------------


async def test_attachments_become_segments(soulgate_database_url: str, fake_teams: FakeTeams) -> None:
    rec = Recorder()
    image_url = fake_teams.host_attachment(b"\x89PNG fake", "image/png")
    file_url = fake_teams.host_file(b"%PDF fake", "application/pdf")
    async with teams_gateway(soulgate_database_url, fake_teams, rec) as h:
        activity = fake_teams.personal_message("look", attachments=[
            fakes.inline_image_attachment(image_url),
            fakes.file_download_attachment("report.pdf", file_url),
        ])
        assert (await fake_teams.post_activity(url(h), activity)).status == 200
        await fake_teams.wait_for_activities(1, within=10)
    [env] = rec.envelopes
    atts = [(s.attachment.name, s.attachment.mime, s.attachment.ref, s.label)
            for s in env.segments if s.attachment is not None]
    assert atts == [("image", "image/*", image_url, None), ("report.pdf", "application/pdf", file_url, None)]


def test_channel_files_and_images_are_labelled_as_needing_graph() -> None:
    from adapters.teams.normalize import NEEDS_GRAPH, message_envelope

    activity = fakes.channel_message("see <at>Adele</at>", service_url="https://smba.example/amer/",
                                     activity_id="17", html=False)
    activity["entities"].append(
        {"type": "mention", "text": "<at>Adele</at>", "mentioned": {"id": "29:adele", "name": "Adele"}}
    )
    graph_img = "https://graph.microsoft.com/v1.0/teams/t/channels/c/messages/17/hostedContents/x/$value"
    activity["attachments"] = [
        {"contentType": "reference", "contentUrl": "https://contoso.sharepoint.com/x/plan.docx", "name": "plan.docx"},
        {"contentType": "text/html", "content": f'<p>see <img src="{graph_img}" alt="x"></p>'},
    ]
    env = message_envelope(activity, channel="teams", account="main")
    assert env is not None
    assert env.text == "see @Adele"  # the bot's mention removed, Adele's kept readable
    mention, doc, img = env.segments
    assert (mention.kind, mention.value, mention.label) == ("mention", "29:adele", "Adele")
    assert doc.attachment is not None and doc.attachment.name == "plan.docx"
    assert doc.label == NEEDS_GRAPH and img.label == NEEDS_GRAPH
    assert img.value == graph_img


def test_only_the_mention_entity_text_is_removed() -> None:
    from adapters.teams.normalize import message_envelope

    activity = fakes.group_chat_message("Soul, tell <at>Soul</at> fans about Soul", service_url="https://s/")
    env = message_envelope(activity, channel="teams", account="main")
    assert env is not None and env.addressed
    assert env.text == "Soul, tell fans about Soul"
    # The bot's own messages (echoed by some clients) are not turns.
    own = fakes.personal_message("x", service_url="https://s/", user_id=f"28:{fakes.DEFAULT_APP_ID}")
    assert message_envelope(own, channel="teams", account="main") is None
