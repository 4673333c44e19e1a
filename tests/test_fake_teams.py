"""The real botbuilder stack (CloudAdapter, ConfigurationBotFrameworkAuthentication,
JWT validation, MSAL, msrest connector) against tests/fakes/teams.py.

These tests also pin down botbuilder 4.17.1 behaviour our Teams adapter must work
around (status codes for bad tokens, per-turn token fetches, retries), so a change in
the SDK shows up here first.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botbuilder.core import TurnContext
from botbuilder.integration.aiohttp import (
    CloudAdapter,
    ConfigurationBotFrameworkAuthentication,
)
from botbuilder.schema import Activity, ConversationReference
from botframework.connector.models import ErrorResponseException

from tests.fakes import teams as fakes
from tests.fakes.teams import FakeTeams, post_activity, start_fake_teams

# Re-bound (not imported by name) so the fixture parameter does not shadow an import.
fake_teams = fakes.fake_teams


class EchoBot:
    """Replies "echo: <text>" to messages and remembers every turn's activity."""

    def __init__(self) -> None:
        self.activities: list[Activity] = []
        self.references: list[ConversationReference] = []

    async def on_turn(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        self.activities.append(activity)
        self.references.append(TurnContext.get_conversation_reference(activity))
        if activity.type == "message":
            await turn_context.send_activity(f"echo: {activity.text}")


def make_adapter(fake: FakeTeams, **config_overrides: Any) -> CloudAdapter:
    """What our Teams adapter does in production, plus the test credentials factory."""
    auth = ConfigurationBotFrameworkAuthentication(
        fake.bot_config(**config_overrides),
        credentials_factory=fake.credentials_factory(),
    )
    return CloudAdapter(auth)


@contextlib.asynccontextmanager
async def serve_bot(adapter: CloudAdapter, bot: EchoBot) -> AsyncIterator[str]:
    """The bot's /api/messages endpoint on 127.0.0.1; CloudAdapter.process unwrapped,
    so the statuses below are botbuilder's own."""

    async def messages(request: web.Request) -> web.StreamResponse:
        response = await adapter.process(request, bot)
        return response if response is not None else web.Response(status=201)

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/messages"
    finally:
        await runner.cleanup()


async def proactive(
    adapter: CloudAdapter,
    reference: ConversationReference,
    logic: Callable[[TurnContext], Awaitable[Any]],
    app_id: str,
) -> None:
    await adapter.continue_conversation(reference, logic, bot_app_id=app_id)


def reference_for(fake: FakeTeams, activity: dict[str, Any]) -> ConversationReference:
    return TurnContext.get_conversation_reference(Activity().deserialize(activity))


# --------------------------------------------------------------------------- happy path


async def test_valid_token_reply_is_recorded(fake_teams: FakeTeams) -> None:
    bot = EchoBot()
    inbound = fake_teams.personal_message("hi there", activity_id="1700000000001")
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        result = await fake_teams.post_activity(url, inbound)

    assert result.status == 201
    assert [a.text for a in bot.activities] == ["hi there"]
    [reply] = fake_teams.activities
    # send_activity inside a turn replies to the inbound activity.
    assert reply.kind == "reply"
    assert reply.conversation_id == inbound["conversation"]["id"]
    assert reply.activity_id == "1700000000001"
    assert reply.text == "echo: hi there"
    assert reply.activity["replyToId"] == "1700000000001"
    # The outbound call carried a token from the fake's client-credentials endpoint.
    [token_request] = fake_teams.token_requests
    assert token_request.client_id == fake_teams.app_id
    assert token_request.secret_ok
    assert token_request.scope == "https://api.botframework.com/.default"
    assert token_request.tenant == "botframework.com"
    assert reply.authorization is not None and reply.authorization.startswith("Bearer ")


async def test_channel_thread_reply_keeps_messageid(fake_teams: FakeTeams) -> None:
    bot = EchoBot()
    inbound = fake_teams.channel_message("status?", activity_id="1700000000123")
    thread_id = "19:fakeChannel0001@thread.tacv2;messageid=1700000000123"
    assert inbound["conversation"]["id"] == thread_id
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        assert (await fake_teams.post_activity(url, inbound)).status == 201

    [reply] = await fake_teams.wait_for_activities(1, conversation_id=thread_id)
    # The client percent-encodes the whole id, ";" and "=" included.
    assert "19%3AfakeChannel0001%40thread.tacv2%3Bmessageid%3D1700000000123" in reply.raw_path
    # The bot saw the mention entity Teams sends, with the exact text to strip.
    [mention] = [e for e in bot.activities[0].entities if e.type == "mention"]
    assert mention.additional_properties["mentioned"]["id"] == fake_teams.bot_id
    assert mention.additional_properties["text"] == "<at>Soul</at>"
    assert bot.activities[0].channel_data["tenant"]["id"] == fake_teams.tenant_id


async def test_every_turn_fetches_a_new_token(fake_teams: FakeTeams) -> None:
    # botbuilder builds new credentials (hence a new MSAL app with an empty cache) for
    # every connector client, i.e. every turn: one tenant discovery plus one token POST
    # per turn, both synchronous on the event loop. Worth a shared credentials cache.
    bot = EchoBot()
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        for text in ("one", "two"):
            assert (await fake_teams.post_activity(url, fake_teams.personal_message(text))).status
    await fake_teams.wait_for_activities(2)
    assert len(fake_teams.token_requests) == 2
    assert fake_teams.tenant_discovery_requests == 2


async def test_group_chat_and_conversation_update(fake_teams: FakeTeams) -> None:
    bot = EchoBot()
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        update = fake_teams.conversation_update(conversation_type="groupChat")
        assert (await fake_teams.post_activity(url, update)).status == 201
        chat = fake_teams.group_chat_message("summarise")
        assert (await fake_teams.post_activity(url, chat)).status == 201

    installed, message = bot.activities
    assert installed.type == "conversationUpdate"
    assert [m.id for m in installed.members_added] == [fake_teams.bot_id]
    assert message.conversation.conversation_type == "groupChat"
    assert message.text == "<at>Soul</at> summarise"
    # Only the message is answered; conversationUpdate gets no reply from EchoBot.
    [reply] = fake_teams.activities
    assert reply.conversation_id == "19:fakegroupchat0001@thread.v2"


async def test_attachments_and_hosted_content(fake_teams: FakeTeams) -> None:
    image_url = fake_teams.host_attachment(b"\x89PNG fake", "image/png")
    file_url = fake_teams.host_file(b"%PDF fake", "application/pdf")
    inbound = fake_teams.personal_message(
        "look",
        attachments=[
            fakes.inline_image_attachment(image_url),
            fakes.file_download_attachment("report.pdf", file_url),
        ],
    )
    bot = EchoBot()
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        assert (await fake_teams.post_activity(url, inbound)).status == 201
    [reply] = await fake_teams.wait_for_activities(1)

    types = [a.content_type for a in bot.activities[0].attachments]
    assert types == [
        "image/*",
        "application/vnd.microsoft.teams.file.download.info",
        "text/html",
    ]
    async with aiohttp.ClientSession() as http:
        # Inline images need the bot's token, like Teams' /v3/attachments.
        async with http.get(image_url) as resp:
            assert resp.status == 401
        assert reply.authorization is not None
        async with http.get(image_url, headers={"Authorization": reply.authorization}) as resp:
            assert resp.status == 200
            assert await resp.read() == b"\x89PNG fake"
        # A file's downloadUrl is pre-authenticated.
        async with http.get(file_url) as resp:
            assert resp.status == 200
            assert await resp.read() == b"%PDF fake"


# --------------------------------------------------------------------------- bad tokens

# (case id, how to authorize, status CloudAdapter.process produced with botbuilder
# 4.17.1). A PermissionError becomes 401; any other exception escapes process() and
# aiohttp answers 500. Our adapter must turn all of these into 401.
BAD_TOKENS: list[tuple[str, Callable[[FakeTeams], dict[str, Any]], int]] = [
    ("wrong-audience", lambda f: {"token": f.mint_token(audience="someone-else")}, 401),
    ("wrong-issuer", lambda f: {"token": f.mint_token(issuer="https://evil.example")}, 401),
    ("missing-serviceurl", lambda f: {"token": f.mint_token(omit_claims=("serviceurl",))}, 401),
    (
        "serviceurl-mismatch",
        lambda f: {"token": f.mint_token(service_url="https://evil.example/")},
        401,
    ),
    ("not-bearer-scheme", lambda f: {"authorization": "Basic dXNlcjpwYXNz"}, 401),
    # ExpiredSignatureError (past the 300 s leeway)
    ("expired", lambda f: {"token": f.mint_token(expires_in=-600)}, 500),
    # IndexError in _OpenIdMetadata._find
    ("unknown-kid", lambda f: {"token": f.mint_token(kid="not-in-jwks")}, 500),
    ("no-kid", lambda f: {"token": f.mint_token(include_kid=False)}, 500),
    # InvalidSignatureError
    ("untrusted-signing-key", lambda f: {"token": f.mint_token(untrusted_key=True)}, 500),
    # KeyError 'iss' in EmulatorValidation.is_token_from_emulator
    ("missing-issuer", lambda f: {"token": f.mint_token(omit_claims=("iss",))}, 500),
    # DecodeError: not a JWT
    ("malformed-bearer", lambda f: {"authorization": "Bearer not-a-jwt"}, 500),
    # validator returns None, then AttributeError on identity.claims
    ("three-part-header", lambda f: {"authorization": "Bearer a b"}, 500),
    ("no-authorization-header", lambda f: {}, 500),
]


@pytest.mark.parametrize(
    ("make_auth", "expected"),
    [pytest.param(make, status, id=case) for case, make, status in BAD_TOKENS],
)
async def test_bad_tokens_are_refused(
    fake_teams: FakeTeams,
    make_auth: Callable[[FakeTeams], dict[str, Any]],
    expected: int,
) -> None:
    bot = EchoBot()
    activity = fake_teams.personal_message("let me in")
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        # post_activity (module level) sends no header unless asked to.
        result = await post_activity(url, activity, **make_auth(fake_teams))
    assert result.status == expected
    assert bot.activities == []
    assert fake_teams.calls == []
    assert fake_teams.token_requests == []


async def test_expired_within_clock_skew_is_accepted(fake_teams: FakeTeams) -> None:
    # botbuilder validates with clock_tolerance=300 s: a token expired 60 s ago passes.
    bot = EchoBot()
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        token = fake_teams.mint_token(expires_in=-60)
        result = await fake_teams.post_activity(url, fake_teams.personal_message("x"), token=token)
    assert result.status == 201


async def test_key_not_endorsed_for_channel_is_refused(fake_teams: FakeTeams) -> None:
    # Must be published before the first validation: botbuilder caches the JWKS.
    kid = fake_teams.add_signing_key("webchat-only", ["webchat"])
    bot = EchoBot()
    async with serve_bot(make_adapter(fake_teams), bot) as url:
        bad = await fake_teams.post_activity(
            url, fake_teams.personal_message("x"), token=fake_teams.mint_token(kid=kid)
        )
        good = await fake_teams.post_activity(url, fake_teams.personal_message("y"))
    # "Could not validate endorsement key" is a plain Exception: 500, not 401.
    assert bad.status == 500
    assert good.status == 201
    assert [a.text for a in bot.activities] == ["y"]


async def test_misspelled_metadata_setting_is_silently_ignored(fake_teams: FakeTeams) -> None:
    # CHANNELS.md writes TO_BOT_FROM_CHANNEL_OPEN_ID_METADATA_URL; botbuilder reads
    # TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL. The wrong name is ignored and, because
    # other TO_* settings are present, the validator fetches requests.get(None): 500.
    config = fake_teams.bot_config(TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL=None)
    config.TO_BOT_FROM_CHANNEL_OPEN_ID_METADATA_URL = fake_teams.openid_metadata_url  # type: ignore[attr-defined]
    adapter = CloudAdapter(
        ConfigurationBotFrameworkAuthentication(config, credentials_factory=fake_teams.credentials_factory())
    )
    bot = EchoBot()
    async with serve_bot(adapter, bot) as url:
        result = await fake_teams.post_activity(url, fake_teams.personal_message("x"))
    assert result.status == 500
    assert bot.activities == []


# --------------------------------------------------------------------------- proactive


async def test_continue_conversation_posts_proactive_message(fake_teams: FakeTeams) -> None:
    bot = EchoBot()
    adapter = make_adapter(fake_teams)
    inbound = fake_teams.channel_message("remind me", activity_id="1700000000500")
    async with serve_bot(adapter, bot) as url:
        assert (await fake_teams.post_activity(url, inbound)).status == 201
    [stored] = bot.references
    # Round-trip through JSON, as a gateway would store it.
    reference = ConversationReference().deserialize(stored.serialize())
    fake_teams.reset()

    async def later(turn_context: TurnContext) -> None:
        await turn_context.send_activity("it is time")

    await proactive(adapter, reference, later, fake_teams.app_id)

    [sent] = await fake_teams.wait_for_activities(1)
    assert sent.text == "it is time"
    assert sent.conversation_id == inbound["conversation"]["id"]
    # Surprise: the proactive message is not appended with send_to_conversation, nor a
    # reply to the stored activity id. continue_conversation runs a synthetic
    # "ContinueConversation" event whose id is a fresh uuid1, and send_activity replies
    # to the turn's activity: POST .../activities/<that uuid>. In a channel the thread
    # is chosen by the ";messageid=" conversation id, not by this id.
    assert sent.kind == "reply"
    assert sent.activity_id != "1700000000500"
    assert uuid.UUID(sent.activity_id or "").version == 1
    assert sent.activity["replyToId"] == sent.activity_id
    assert len(fake_teams.token_requests) == 1


async def test_continue_conversation_needs_bot_app_id(fake_teams: FakeTeams) -> None:
    adapter = make_adapter(fake_teams)
    reference = reference_for(fake_teams, fake_teams.personal_message("x"))

    async def logic(turn_context: TurnContext) -> None:
        await turn_context.send_activity("never")

    # Without bot_app_id the claims carry no audience: the credentials factory rejects
    # app id None before any network call.
    with pytest.raises(Exception, match="Invalid app_id"):
        await adapter.continue_conversation(reference, logic)
    assert fake_teams.calls == []


async def test_typing_and_update(fake_teams: FakeTeams) -> None:
    adapter = make_adapter(fake_teams)
    reference = reference_for(fake_teams, fake_teams.personal_message("x", activity_id="42"))

    async def logic(turn_context: TurnContext) -> None:
        # Clearing the synthetic continuation activity's id is what makes send_activity
        # append (send_to_conversation) instead of replying to a made-up id.
        turn_context.activity.id = None
        await turn_context.send_activity(Activity(type="typing"))
        sent = await turn_context.send_activity("draft")
        edited = Activity(type="message", id=sent.id, text="final")
        edited = TurnContext.apply_conversation_reference(edited, reference)
        await turn_context.update_activity(edited)

    await proactive(adapter, reference, logic, fake_teams.app_id)

    typing, draft, update = fake_teams.activities
    assert (typing.kind, typing.type) == ("send", "typing")
    assert (draft.kind, draft.text) == ("send", "draft")
    assert (update.kind, update.text, update.activity_id) == ("update", "final", draft.response_id)
    assert update.method == "PUT"


# --------------------------------------------------------------------------- faults


async def test_429_surfaces_with_status_and_retry_after(fake_teams: FakeTeams) -> None:
    adapter = make_adapter(fake_teams)
    reference = reference_for(fake_teams, fake_teams.personal_message("x"))
    fake_teams.fail_next(429, retry_after=7)

    async def logic(turn_context: TurnContext) -> None:
        await turn_context.send_activity("hello")

    with pytest.raises(ErrorResponseException) as caught:
        await proactive(adapter, reference, logic, fake_teams.app_id)

    response = caught.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    # msrest does not retry a 429, so exactly one call reached the connector.
    [call] = fake_teams.calls
    assert call.status == 429
    assert fake_teams.activities == []


@pytest.mark.parametrize("status", [412, 500, 502, 504])
async def test_post_faults_surface_without_retry(fake_teams: FakeTeams, status: int) -> None:
    adapter = make_adapter(fake_teams)
    reference = reference_for(fake_teams, fake_teams.personal_message("x"))
    fake_teams.fail_next(status)

    async def logic(turn_context: TurnContext) -> None:
        await turn_context.send_activity("hello")

    with pytest.raises(ErrorResponseException) as caught:
        await proactive(adapter, reference, logic, fake_teams.app_id)
    assert caught.value.response.status_code == status
    # msrest's urllib3 Retry lists 5xx, but urllib3 2.x never retries POST by default:
    # the caller sees the first failure and must do its own backoff.
    assert [c.status for c in fake_teams.calls] == [status]


async def test_put_is_silently_retried_on_5xx(fake_teams: FakeTeams) -> None:
    # ...whereas PUT (update) and DELETE are idempotent for urllib3: a 502 is retried
    # inside msrest (backoff 0.8 s) and the caller never sees it.
    adapter = make_adapter(fake_teams)
    reference = reference_for(fake_teams, fake_teams.personal_message("x"))
    fake_teams.fail_next(502, kinds=["update"])

    async def logic(turn_context: TurnContext) -> None:
        turn_context.activity.id = None
        sent = await turn_context.send_activity("draft")
        edited = TurnContext.apply_conversation_reference(
            Activity(type="message", id=sent.id, text="final"), reference
        )
        await turn_context.update_activity(edited)

    await proactive(adapter, reference, logic, fake_teams.app_id)
    assert [(c.kind, c.status) for c in fake_teams.calls] == [
        ("send", 201),
        ("update", 502),
        ("update", 200),
    ]


async def test_wrong_app_password_is_refused_by_token_endpoint(fake_teams: FakeTeams) -> None:
    auth = ConfigurationBotFrameworkAuthentication(
        fake_teams.bot_config(),
        credentials_factory=fake_teams.credentials_factory(password="wrong"),
    )
    adapter = CloudAdapter(auth)
    reference = reference_for(fake_teams, fake_teams.personal_message("x"))

    async def logic(turn_context: TurnContext) -> None:
        await turn_context.send_activity("hello")

    with pytest.raises(PermissionError, match="invalid_client"):
        await proactive(adapter, reference, logic, fake_teams.app_id)
    [token_request] = fake_teams.token_requests
    assert (token_request.status, token_request.secret_ok) == (401, False)
    assert fake_teams.calls == []


async def test_teams_rate_limits_enforced() -> None:
    async with start_fake_teams(enforce_limits=True, require_outbound_token=False) as fake:
        conv = "19:fakeChannel0001@thread.tacv2;messageid=1"
        url = f"{fake.service_url}v3/conversations/{conv.replace(';', '%3B')}/activities"
        statuses = []
        async with aiohttp.ClientSession() as http:
            for n in range(8):
                async with http.post(url, json={"type": "message", "text": str(n)}) as resp:
                    statuses.append(resp.status)
                    retry_after = resp.headers.get("Retry-After")
        # 7 operations per second per conversation, then 429 with Retry-After.
        assert statuses == [201] * 7 + [429]
        assert retry_after == "1"
        assert fake.throttled == {conv: 1}
        assert len(fake.activities_in(conv)) == 7


async def test_custom_limits_through_botbuilder() -> None:
    async with start_fake_teams(enforce_limits=True, limits=[(3, 30.0)]) as fake:
        adapter = make_adapter(fake)
        reference = reference_for(fake, fake.personal_message("x"))

        async def logic(turn_context: TurnContext) -> None:
            for n in range(4):
                await turn_context.send_activity(f"burst {n}")

        with pytest.raises(ErrorResponseException) as caught:
            await proactive(adapter, reference, logic, fake.app_id)
        assert caught.value.response.status_code == 429
        assert int(caught.value.response.headers["Retry-After"]) > 1
        assert [c.text for c in fake.activities] == ["burst 0", "burst 1", "burst 2"]
        assert fake.blocked_connections == []


# --------------------------------------------------------------------------- internet guard


async def test_stock_credentials_would_reach_microsoft(fake_teams: FakeTeams) -> None:
    # Why LoopbackCredentialFactory exists: with botbuilder's own factory, an https
    # loopback login URL makes MSAL run instance discovery on login.microsoftonline.com
    # (botbuilder never passes validate_authority/instance_discovery to MSAL) ...
    reference = reference_for(fake_teams, fake_teams.personal_message("x"))

    async def logic(turn_context: TurnContext) -> None:
        await turn_context.send_activity("hello")

    stock = CloudAdapter(ConfigurationBotFrameworkAuthentication(fake_teams.bot_config()))
    with pytest.raises(OSError):
        await proactive(stock, reference, logic, fake_teams.app_id)
    assert any(b.startswith("login.microsoftonline.com:") for b in fake_teams.blocked_connections)
    fake_teams.blocked_connections.clear()

    # ... and an http one is rejected by MSAL outright.
    http_login = fake_teams.login_url.replace(fake_teams.https_base_url, fake_teams.base_url)
    stock = CloudAdapter(
        ConfigurationBotFrameworkAuthentication(
            fake_teams.bot_config(TO_CHANNEL_FROM_BOT_LOGIN_URL=http_login)
        )
    )
    with pytest.raises(ValueError, match="https"):
        await proactive(stock, reference, logic, fake_teams.app_id)
    assert fake_teams.calls == []
    assert fake_teams.blocked_connections == []


async def test_loopback_factory_refuses_remote_login_url(fake_teams: FakeTeams) -> None:
    factory = fake_teams.credentials_factory()
    with pytest.raises(ValueError, match=r"https://127\.0\.0\.1"):
        await factory.create_credentials(
            fake_teams.app_id,
            "https://api.botframework.com",
            "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token",
            False,
        )
