"""The fake Slack speaks the wire protocol slack-sdk / slack-bolt really use.

Every test drives the real SDK classes against ``tests.fakes.slack``; the bolt
tests also record how bolt acks and verifies, which the Slack adapter relies on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes import slack as slack_fakes
from tests.fakes.slack import (
    FakeSlack,
    Workspace,
    app_mention_event,
    event_callback,
    message_event,
    post_signed,
    signed_headers,
    start_fake_slack,
    url_verification,
)

# Binding the fixture in this module makes pytest offer it here only (pytest_plugins
# would register it for the whole session, and conftest.py belongs to others).
fake_slack = slack_fakes.fake_slack


async def test_auth_test_per_workspace_and_bad_tokens() -> None:
    other = Workspace(token="xoxb-other", team_id="T0OTHER", user_id="U0B2", bot_id="B0B2")
    async with start_fake_slack([Workspace(), other]) as fake:
        first = await fake.client().auth_test()
        assert (first["team_id"], first["user_id"], first["bot_id"]) == (
            "T0SOULGATE", "U0BOT", "B0BOT")
        second = await fake.client(other).auth_test()
        assert (second["team_id"], second["user_id"]) == ("T0OTHER", "U0B2")
        with pytest.raises(SlackApiError) as bad:
            await AsyncWebClient(token="xoxb-nope", base_url=fake.base_url).auth_test()
        assert bad.value.response.status_code == 200
        assert bad.value.response["error"] == "invalid_auth"
        with pytest.raises(SlackApiError) as app_token:  # xapp tokens can't call Web API
            await AsyncWebClient(token=fake.app_token, base_url=fake.base_url).auth_test()
        assert app_token.value.response["error"] == "not_allowed_token_type"
        # The SDK sends the token only as a bearer header.
        assert [c.token for c in fake.calls_to("auth.test")][:2] == ["xoxb-soulgate-test",
                                                                      "xoxb-other"]


async def test_post_message_is_recorded(fake_slack: FakeSlack) -> None:
    client = fake_slack.client()
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    first = await client.chat_postMessage(channel="C1", text="hi", thread_ts="1700000000.000100",
                                          blocks=blocks, mrkdwn=False)
    second = await client.chat_postMessage(channel="C1", text="again")
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["thread_ts"] == "1700000000.000100"
    posts = await fake_slack.wait_for_posts("C1", 2, timeout=1)
    assert [p.text for p in posts] == ["hi", "again"]
    assert posts[0].thread_ts == "1700000000.000100" and posts[1].thread_ts is None
    assert posts[0].blocks == blocks and posts[0].mrkdwn is False
    assert fake_slack.posts_in("C1", thread_ts="1700000000.000100") == posts[:1]
    with pytest.raises(TimeoutError):
        await fake_slack.wait_for_posts("C1", 3, timeout=0.1)


async def test_wait_for_posts_wakes_up_on_a_later_post(fake_slack: FakeSlack) -> None:
    waiter = asyncio.create_task(fake_slack.wait_for_posts("C9", 1, timeout=2))
    await asyncio.sleep(0.05)
    await fake_slack.client().chat_postMessage(channel="C9", text="late")
    assert [p.text for p in await waiter] == ["late"]


async def test_text_limits() -> None:
    async with start_fake_slack() as fake:
        await fake.client().chat_postMessage(channel="C1", text="x" * 45_000)
        assert len(fake.posts[0].text) == 40_000  # silently truncated, like Slack
        fake.msg_too_long_over = 4000
        with pytest.raises(SlackApiError) as err:
            await fake.client().chat_postMessage(channel="C1", text="x" * 4001)
        assert err.value.response["error"] == "msg_too_long"
        with pytest.raises(SlackApiError) as err, pytest.warns(UserWarning, match="`text`"):
            await fake.client().chat_postMessage(channel="C1", text="")  # the SDK warns first
        assert err.value.response["error"] == "no_text"


async def test_update_reactions_conversations_users(fake_slack: FakeSlack) -> None:
    client = fake_slack.client()
    posted = await client.chat_postMessage(channel="C1", text="draft")
    await client.chat_update(channel="C1", ts=posted["ts"], text="final")
    assert fake_slack.posts[0].text == "final" and fake_slack.posts[0].edits == ["draft"]
    with pytest.raises(SlackApiError):
        await client.chat_update(channel="C1", ts="1.000001", text="x")

    await client.reactions_add(channel="C1", timestamp=posted["ts"], name="eyes")
    with pytest.raises(SlackApiError) as twice:
        await client.reactions_add(channel="C1", timestamp=posted["ts"], name="eyes")
    assert twice.value.response["error"] == "already_reacted"
    await client.reactions_remove(channel="C1", timestamp=posted["ts"], name="eyes")
    assert [op for op, *_ in fake_slack.reaction_log] == ["add", "remove"]
    assert fake_slack.reactions[("C1", posted["ts"])] == set()

    fake_slack.add_channel("G0PRIV", "private", name="secret")
    kinds = {}
    for channel in ("C0PUB", "D0DM", "G0MPIM", "G0PRIV"):
        info = (await client.conversations_info(channel=channel))["channel"]
        kinds[channel] = (info["is_channel"], info["is_im"], info["is_mpim"], info["is_private"])
    assert kinds == {"C0PUB": (True, False, False, False), "D0DM": (False, True, False, True),
                     "G0MPIM": (False, False, True, True), "G0PRIV": (True, False, False, True)}
    with pytest.raises(SlackApiError):
        await client.conversations_info(channel="X0NOPE")

    fake_slack.add_user("U0ALICE", "alice", tz="Europe/Berlin")
    alice = (await client.users_info(user="U0ALICE"))["user"]
    assert (alice["name"], alice["tz"], alice["is_bot"]) == ("alice", "Europe/Berlin", False)
    assert (await client.users_info(user="U0BOT"))["user"]["is_bot"] is True


async def test_429_raises_and_rate_limit_handler_retries(fake_slack: FakeSlack) -> None:
    fake_slack.ratelimit("chat.postMessage", times=1, retry_after=1)
    with pytest.raises(SlackApiError) as err:
        await fake_slack.client().chat_postMessage(channel="C1", text="hi")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "1"
    assert err.value.response["error"] == "ratelimited"
    assert fake_slack.posts == []

    # Not on by default: it has to be attached; it sleeps Retry-After + random() s.
    fake_slack.ratelimit("chat.postMessage", times=1, retry_after=1)
    client = fake_slack.client(retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)])
    started = time.monotonic()
    await client.chat_postMessage(channel="C1", text="hi")
    assert time.monotonic() - started >= 1
    assert fake_slack.count("chat.postMessage", status=429) == 2
    assert [p.text for p in fake_slack.posts] == ["hi"]


async def test_per_channel_post_limit_counts_429s() -> None:
    async with start_fake_slack(channel_post_interval=1.0) as fake:
        client = fake.client()
        await client.chat_postMessage(channel="C1", text="one")
        await client.chat_postMessage(channel="C2", text="other channel is fine")
        with pytest.raises(SlackApiError) as err:
            await client.chat_postMessage(channel="C1", text="too fast")
        assert err.value.response.status_code == 429
        assert fake.channel_429s == {"C1": 1}
        assert [p.text for p in fake.posts_in("C1")] == ["one"]


async def test_server_error_is_html_and_only_retried_on_request(fake_slack: FakeSlack) -> None:
    fake_slack.server_error("chat.postMessage")
    with pytest.raises(SlackApiError) as err:
        await fake_slack.client().chat_postMessage(channel="C1", text="hi")
    assert err.value.response.status_code == 500
    assert err.value.response.get("error") is None  # no JSON body to read it from
    fake_slack.server_error("chat.postMessage", status=503)
    client = fake_slack.client(retry_handlers=[AsyncServerErrorRetryHandler()])
    await client.chat_postMessage(channel="C1", text="hi")
    assert fake_slack.count("chat.postMessage") == 3 and len(fake_slack.posts) == 1


async def test_dropped_connection_default_retry_duplicates_post(fake_slack: FakeSlack) -> None:
    # The default AsyncConnectionErrorRetryHandler retries ServerDisconnectedError
    # once, so a post Slack applied but whose answer was lost is sent twice.
    fake_slack.drop_connection("chat.postMessage", after_processing=True)
    await fake_slack.client().chat_postMessage(channel="C1", text="once?")
    assert [p.text for p in fake_slack.posts] == ["once?", "once?"]

    fake_slack.drop_connection("chat.postMessage", after_processing=False)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fake_slack.client(retry_handlers=[]).chat_postMessage(channel="C1", text="lost")
    assert len(fake_slack.posts) == 2
    assert fake_slack.calls_to("chat.postMessage")[-1].status == 0


async def test_client_timeout_is_not_retried_but_the_post_lands(fake_slack: FakeSlack) -> None:
    # A slow answer ends in TimeoutError (no default handler retries it) while
    # Slack still applies the post: the send outcome is unknown to the caller.
    fake_slack.delay("chat.postMessage", seconds=1.5)
    with pytest.raises(TimeoutError):
        await fake_slack.client(timeout=1).chat_postMessage(channel="C1", text="slow")
    assert [p.text for p in await fake_slack.wait_for_posts("C1", timeout=2)] == ["slow"]
    assert fake_slack.count("chat.postMessage") == 1


def test_signature_helpers_against_signature_verifier() -> None:
    body = json.dumps(event_callback(message_event("hi")))
    verifier = SignatureVerifier("s3cret")

    def valid(headers: dict[str, str]) -> bool:
        return verifier.is_valid(body, headers.get("X-Slack-Request-Timestamp"),
                                 headers.get("X-Slack-Signature"))

    assert valid(signed_headers(body, "s3cret"))
    assert verifier.is_valid_request(body, signed_headers(body.encode(), "s3cret"))
    assert not valid(signed_headers(body, "s3cret", stale=True))
    assert not valid(signed_headers(body, "s3cret", forged=True))
    assert not valid(signed_headers(body, "other-secret"))
    assert not verifier.is_valid_request(body, signed_headers(body, "s3cret", omit="both"))
    assert not verifier.is_valid_request(body, signed_headers(body, "s3cret", omit="signature"))
    with pytest.raises(ValueError):  # must become a 401 in the adapter, not a 500
        valid(signed_headers(body, "s3cret", bad_timestamp=True))
    retry = signed_headers(body, "s3cret", retry_num=1)
    assert (retry["X-Slack-Retry-Num"], retry["X-Slack-Retry-Reason"]) == ("1", "http_timeout")


def test_event_builders() -> None:
    dm = message_event("hi", channel="D0DM", thread_ts="1.000001",
                       files=[{"id": "F1", "name": "a.png"}])
    assert (dm["channel_type"], dm["subtype"], dm["thread_ts"]) == ("im", "file_share", "1.000001")
    assert message_event(channel="G0X")["channel_type"] == "mpim"
    bot = message_event(subtype="bot_message", bot_id="B0OTHER")
    assert bot["bot_id"] == "B0OTHER" and "client_msg_id" not in bot
    first, second = event_callback(app_mention_event()), event_callback(app_mention_event())
    assert first["event_id"] != second["event_id"]
    assert float(second["event"]["ts"]) > float(first["event"]["ts"])
    assert first["event"]["text"].startswith("<@U0BOT>")
    assert url_verification("abc")["challenge"] == "abc"


@dataclass
class BoltHttp:
    url: str
    release: asyncio.Event  # the message listener blocks until this is set
    seen: list[dict[str, Any]]


@pytest.fixture
async def bolt_http(fake_slack: FakeSlack) -> AsyncIterator[BoltHttp]:
    """A bolt AsyncApp behind a bare aiohttp route, driven through async_dispatch."""
    bolt = AsyncApp(client=fake_slack.client(), signing_secret=fake_slack.signing_secret)
    state = BoltHttp("", asyncio.Event(), [])

    @bolt.event("message")
    async def on_message(event: dict[str, Any], say: Any) -> None:
        await state.release.wait()
        state.seen.append(event)
        await say(text=f"echo: {event['text']}", thread_ts=event.get("thread_ts") or event["ts"])

    async def endpoint(request: web.Request) -> web.Response:
        # bolt needs the raw body string (it verifies the signature over it).
        req = AsyncBoltRequest(body=(await request.read()).decode(), query=request.query_string,
                               headers=dict(request.headers))
        resp = await bolt.async_dispatch(req)
        return web.Response(status=resp.status, body=resp.body, headers=resp.first_headers())

    app = web.Application()
    app.router.add_post("/slack/events", endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    yield state
    state.release.set()
    await runner.cleanup()


async def test_bolt_http_acks_before_listener_and_rejects_bad_signatures(
    fake_slack: FakeSlack, bolt_http: BoltHttp
) -> None:
    url, secret = bolt_http.url, fake_slack.signing_secret
    challenge = await post_signed(url, url_verification("xyz"), secret)
    assert (challenge.status, challenge.json()) == (200, {"challenge": "xyz"})

    event = message_event("ping", channel="C0GEN")
    ok = await post_signed(url, event_callback(event), secret)
    assert ok.status == 200 and bolt_http.seen == []  # acked; the listener is still blocked
    bolt_http.release.set()
    reply = (await fake_slack.wait_for_posts("C0GEN", 1, timeout=3))[0]
    assert (reply.text, reply.thread_ts) == ("echo: ping", event["ts"])
    assert fake_slack.count("auth.test") == 1  # bolt's lazy single-team authorization

    assert (await post_signed(url, event_callback(event), secret, forged=True)).status == 401
    assert (await post_signed(url, event_callback(event), secret, stale=True)).status == 401
    assert (await post_signed(url, event_callback(event), secret, omit="both")).status == 401
    # bolt lets SignatureVerifier's ValueError escape into a 500 (Slack then retries).
    bad = await post_signed(url, event_callback(event), secret, bad_timestamp=True)
    assert bad.status == 500
    unmatched = await post_signed(url, event_callback(app_mention_event()), secret)
    assert unmatched.status == 404  # no app_mention listener: Slack would retry


async def test_socket_mode_client_connects_receives_and_acks(fake_slack: FakeSlack) -> None:
    client = fake_slack.socket_mode_client()
    received: list[SocketModeRequest] = []

    async def listener(sm: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        received.append(req)
        if req.retry_attempt:  # ignore the first delivery to provoke a redelivery
            await sm.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))

    client.socket_mode_request_listeners.append(listener)
    await client.connect()
    try:
        assert fake_slack.count("apps.connections.open") == 1
        payload = event_callback(message_event("hi"))
        first = await fake_slack.push_envelope(payload)
        with pytest.raises(TimeoutError):
            await fake_slack.wait_for_ack(first, timeout=0.3)
        again = await fake_slack.redeliver(first)
        assert await fake_slack.wait_for_ack(again, timeout=2) == {
            "envelope_id": again.envelope_id}
        assert [r.retry_attempt for r in received] == [0, 1]
        assert received[0].payload["event_id"] == received[1].payload["event_id"]

        await fake_slack.request_reconnect()  # Slack's "disconnect" -> new URL, new socket
        await fake_slack.wait_for_socket(timeout=3, opened=2)
        assert fake_slack.count("apps.connections.open") == 2
    finally:
        await client.close()


async def test_bolt_socket_mode_handler_end_to_end(fake_slack: FakeSlack) -> None:
    bolt = AsyncApp(client=fake_slack.client())

    @bolt.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await say(text="hello back", thread_ts=event.get("thread_ts") or event["ts"])

    handler = AsyncSocketModeHandler(bolt, fake_slack.app_token,
                                     web_client=AsyncWebClient(base_url=fake_slack.base_url))
    await handler.connect_async()
    try:
        mention = app_mention_event(channel="C0GEN")
        envelope = await fake_slack.push_envelope(event_callback(mention))
        assert await fake_slack.wait_for_ack(envelope, timeout=3) == {
            "envelope_id": envelope.envelope_id}
        reply = (await fake_slack.wait_for_posts("C0GEN", timeout=3))[0]
        assert (reply.text, reply.thread_ts) == ("hello back", mention["ts"])
    finally:
        await handler.close_async()
