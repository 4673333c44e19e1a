"""Bad input at scale: every inbound path fuzzed with malformed payloads (hypothesis).

Two promises are checked. A pure normalizer returns a valid envelope (typed fields,
storable in Postgres, unchanged by a JSON round trip), ignores the event, or raises
its adapter's documented bad-input error; nothing else. A running gateway answers a
malformed request with 4xx (or 200 for an event it ignores), never 5xx (the platform
would retry a poison payload forever), and its database then holds a complete inbox
row or nothing: no inbox_keys row without its inbox row, no inbox row without its
key, and every stored envelope reads back. At the end the workers must have digested
everything that was admitted.

``SOULGATE_FUZZ_EXAMPLES=N`` multiplies every example count by N and randomizes the
run (the default is small and repeatable). The ``explicit`` examples are bugs found
here once, kept as regressions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
import types
from typing import Any

import aiohttp
from aiogram.types import Update
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.email.config import EmailConfig
from adapters.email.mailparse import Unreadable, parse_mail, summary
from adapters.email.normalize import to_envelope
from adapters.email.screening import loop_reason, sender_reason
from adapters.email.threads import bare_id, ours
from adapters.slack import SlackConfig
from adapters.slack.inbound import Identity, Parsed, parse_event
from adapters.teams.errors import BadActivity
from adapters.teams.normalize import address_envelope, conversation_reference, message_envelope, tenant_of
from adapters.telegram.normalize import BotIdentity, normalize
from adapters.telegram.webhook import SECRET_HEADER, derive_secret
from gateway import TurnResult, hookimpl
from gateway.testing import GatewayHarness, running_gateway, test_config
from storage.storable import storable_json
from tests.fakes import mailserver
from tests.fakes import teams as teams_fakes
from tests.fakes.mailserver import FakeImapServer, FakeSmtpServer
from tests.fakes.slack import start_fake_slack
from tests.fakes.telegram import start_fake_telegram
from tests.faults.fuzzing import (
    JSON_VALUES,
    assert_storable,
    assert_valid_envelope,
    bodies,
    check_database,
    check_outbox,
    drained,
    fuzz_settings,
    mails,
    max_seq,
    mutants,
    run_in_thread,
    scalar,
)
from tests.faults.payloads import (
    EMAIL_TABLE,
    MAIL_TEMPLATES,
    SLACK_EVENTS,
    TEAMS_ACTIVITIES,
    TG_UPDATES,
    teams_templates,
)

imap_server = mailserver.imap_server
smtp_server = mailserver.smtp_server


class _Silent:
    """Answers nothing: the fuzz is about what comes in, and replies to junk would only add noise."""

    name = "silent"

    async def respond(self, turn: Any) -> TurnResult:
        return TurnResult(replies=[])


@hookimpl
def soulgate_responder(services: Any) -> Any:
    return _Silent()


SILENT = types.SimpleNamespace(soulgate_responder=soulgate_responder)


def deep(prefix: bytes, depth: int, suffix: bytes = b"}") -> bytes:
    """``prefix`` + arrays nested ``depth`` deep + ``suffix`` (json.dumps itself refuses such depth)."""
    return prefix + b"[" * depth + b"]" * depth + suffix


def body_with(template: dict[str, Any], path: tuple[Any, ...], value: Any) -> bytes:
    """``template`` as a request body with the value at ``path`` replaced (NaN written as Python does)."""
    doc = json.loads(json.dumps(template))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, (await resp.text())[:300]


async def expect_whole(h: GatewayHarness, since: int, status: int, reason: str, channel: str) -> None:
    """Never 5xx; a refusal stored nothing, an acceptance at most one complete row."""
    assert status < 500, f"{status} {reason}"
    new = await check_database(h.gateway.store.db, since, channel, "main")
    assert len(new) <= (1 if status == 200 else 0), f"{status} stored {len(new)} rows"


# -- what Postgres can hold ---------------------------------------------------------------


@fuzz_settings(200)
@given(JSON_VALUES)
def test_storable_json_keeps_what_postgres_holds_and_fixes_the_rest(value: Any) -> None:
    cleaned = storable_json(value)
    assert_storable(cleaned, "cleaned")
    assert json.loads(json.dumps(cleaned)) == cleaned
    try:
        assert_storable(value, "value")
    except AssertionError:
        return
    assert cleaned is value  # nothing to fix: no copy


# -- Telegram ------------------------------------------------------------------------------

BOT = BotIdentity(4242, "soulgate_bot")
_PLAIN_MESSAGE = {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"},
                  "from": {"id": 1, "is_bot": False, "first_name": "A"}}


@fuzz_settings(300)
@given(st.sampled_from(TG_UPDATES).flatmap(mutants))
# a lone surrogate before an entity: UnicodeEncodeError in utf16_slice (the update was dropped)
@example({"update_id": 1, "message": {**_PLAIN_MESSAGE, "text": "\ud800 @soulgate_bot",
                                      "entities": [{"type": "mention", "offset": 2, "length": 13}]}})
def test_telegram_normalizer_returns_an_envelope_or_nothing(raw: Any) -> None:
    try:
        update = Update.model_validate(raw)
    except ValidationError:
        return  # what the webhook answers with 400
    envelope = normalize(update, raw, account="main", me=BOT)
    if envelope is not None:
        assert_valid_envelope(envelope, "telegram", "main")


async def test_telegram_webhook_never_fails_on_bad_updates(soulgate_database_url: str) -> None:
    async with start_fake_telegram() as fake:
        port = free_port()
        url = f"http://127.0.0.1:{port}/telegram/main"
        table = {"token": fake.token, "api_base": fake.base_url, "mode": "webhook", "webhook_url": url}
        config = test_config({"channels": {"telegram": {"main": table}}, "http": {"port": port}})
        headers = {SECRET_HEADER: derive_secret(fake.token), "Content-Type": "application/json"}
        async with running_gateway(soulgate_database_url, config=config, plugins=[("silent", SILENT)]) as h, \
                aiohttp.ClientSession() as http:
            db = h.gateway.store.db

            async def one(body: bytes) -> None:
                since = await max_seq(db)
                status, reason = await post(http, url, body, headers)
                await expect_whole(h, since, status, reason, "telegram")

            strategy = st.sampled_from(TG_UPDATES).flatmap(lambda u: bodies(u, deep_at="message"))
            first = TG_UPDATES[1]
            await run_in_thread(strategy, 100, one, explicit=(
                deep(b'{"update_id": 7, "message": ', 5000),  # RecursionError in json.loads: 500
                body_with(first, ("message", "caption"), "a\x00b"),  # NUL: the insert failed, 503 forever
                body_with(first, ("message", "caption"), "\udc00"),  # lone surrogate: the same
                body_with(first, ("message", "chat", "x"), float("nan")),  # NaN in raw: the same
            ))
            unreadable = await db.fetch("SELECT detail FROM audit WHERE kind = 'telegram_unreadable'")
            assert not unreadable, f"the normalizer crashed: {unreadable}"
            await drained(db)


# -- Slack ---------------------------------------------------------------------------------

SLACK_CONFIG = SlackConfig.model_validate(
    {"bot_token": "xoxb-1", "signing_secret": "secret", "reply_in_thread_channels": {"C1": False}})
SLACK_ME = Identity(team_id="T0SOULGATE", bot_user_id="U0BOT", bot_id="B0BOT")
def _slack(**event: Any) -> dict[str, Any]:
    return {"type": "event_callback", "team_id": "T1", "event_id": "Ev1",
            "event": {"type": "message", "user": "U1", "channel": "C1", "ts": "1.2", "text": "hi", **event}}


@fuzz_settings(300)
@given(st.sampled_from(SLACK_EVENTS).flatmap(mutants))
@example(_slack(subtype=["x"]))  # TypeError: unhashable subtype (503, redelivered by Slack)
@example(_slack(files=[{"id": {"x": 1}, "size": True}]))  # attachment ref a dict, size a bool
@example(_slack(user_profile={"display_name": ["x"]}))  # display name a list
@example(_slack(channel=""))  # an empty conversation id
@example(_slack(text={"not": "text"}))  # the text of the message a repr() of an object
def test_slack_parser_returns_an_envelope_ignores_or_raises_value_error(payload: Any) -> None:
    if not isinstance(payload, dict):
        return  # the endpoint answers 400 before parsing
    try:
        parsed = parse_event(payload, "main", SLACK_CONFIG, SLACK_ME)
    except ValueError:
        return  # documented: malformed → 400
    if isinstance(parsed, Parsed):
        assert_valid_envelope(parsed.envelope, "slack", "main")


def slack_headers(body: bytes, secret: str) -> dict[str, str]:
    """Signed as Slack signs, for any bytes (the SDK's signer only takes UTF-8 text)."""
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def _slack_account(fake: Any, **extra: Any) -> dict[str, Any]:
    return {"bot_token": fake.workspace.token, "signing_secret": fake.signing_secret,
            "api_base_url": fake.base_url, **extra}


async def test_slack_events_endpoint_never_fails_on_bad_events(soulgate_database_url: str) -> None:
    async with start_fake_slack() as fake:
        config = test_config({"channels": {"slack": {"main": _slack_account(fake, allowed_users=["U0ALICE"])}}})
        async with running_gateway(soulgate_database_url, config=config, plugins=[("silent", SILENT)]) as h, \
                aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{h.gateway.public_port}/slack/main/events"
            db = h.gateway.store.db

            async def one(body: bytes) -> None:
                since = await max_seq(db)
                status, reason = await post(http, url, body, slack_headers(body, fake.signing_secret))
                await expect_whole(h, since, status, reason, "slack")

            strategy = st.sampled_from(SLACK_EVENTS).flatmap(lambda e: bodies(e, deep_at="event"))
            dm = SLACK_EVENTS[2]
            await run_in_thread(strategy, 100, one, explicit=(
                deep(b'{"type": "event_callback", "event": ', 5000),  # RecursionError: 500
                body_with(dm, ("event", "subtype"), ["x"]),  # unhashable subtype: 503
                body_with(dm, ("event", "text"), "a\x00b"),  # NUL: the insert failed, 503
                body_with(dm, ("event", "user"), "U\x00"),  # NUL in the audit of a refused user: 503
                body_with(dm, ("event", "x"), float("inf")),  # Infinity in raw: 503
            ))
            await drained(db)


async def test_slack_socket_mode_acks_every_bad_event(soulgate_database_url: str) -> None:
    """Socket Mode has no status code: the promise is an ack for every envelope (a malformed
    event is refused for good, not redelivered forever) and no half-written row."""
    async with start_fake_slack() as fake:
        table = _slack_account(fake, mode="socket", app_token=fake.app_token)
        config = test_config({"channels": {"slack": {"main": table}}})
        async with running_gateway(soulgate_database_url, config=config, plugins=[("silent", SILENT)]) as h:
            db = h.gateway.store.db
            await fake.wait_for_socket()

            async def one(payload: Any) -> None:
                since = await max_seq(db)
                envelope = await fake.push_envelope(payload)
                await fake.wait_for_ack(envelope, timeout=10)
                assert len(await check_database(db, since, "slack", "main")) <= 1

            strategy = st.sampled_from(SLACK_EVENTS).flatmap(mutants).filter(lambda p: isinstance(p, dict))
            thread = json.loads(json.dumps(SLACK_EVENTS[1]))
            thread["event"]["thread_ts"] = "1700000000.000100\x00"  # NUL in the thread's state key
            await run_in_thread(strategy, 60, one, explicit=(thread,))
            await drained(db)


# -- Teams ---------------------------------------------------------------------------------


_TEAMS_BASE = {"type": "message", "id": "1", "serviceUrl": "https://x/", "from": {"id": "29:a"},
               "recipient": {"id": "28:b"}, "conversation": {"id": "a:1"}, "text": "hi"}
_FILE_INFO = "application/vnd.microsoft.teams.file.download.info"


@fuzz_settings(300)
@given(st.sampled_from(TEAMS_ACTIVITIES).flatmap(mutants))
@example({**_TEAMS_BASE, "from": {"id": "29:a", "name": ["x"]}})  # display name a list
@example({**_TEAMS_BASE, "entities": 5})  # TypeError: int is not iterable
@example({**_TEAMS_BASE, "attachments": 5})  # the same
@example({**_TEAMS_BASE, "attachments": [  # TypeError: unhashable downloadUrl
    {"contentType": _FILE_INFO, "content": {"downloadUrl": ["u"]}}]})
@example({**_TEAMS_BASE, "serviceUrl": "http://["})  # ValueError (Invalid IPv6 URL), not BadActivity
@example({**_TEAMS_BASE, "attachments": [{"contentType": "text/html", "content": '<img src="http://[">'}]})
def test_teams_normalizer_returns_an_envelope_or_raises_bad_activity(activity: Any) -> None:
    if not isinstance(activity, dict):
        return  # the webhook answers 400 before normalizing
    tenant_of(activity)  # read before anything is validated: must never raise
    conversation_reference(activity)
    try:
        envelope = message_envelope(activity, channel="teams", account="main")
        address = address_envelope(activity, channel="teams", account="main")
    except BadActivity:
        return  # documented: → 400
    if envelope is not None:
        assert_valid_envelope(envelope, "teams", "main")
    assert_valid_envelope(address, "teams", "main")


def _service_url_of(body: bytes, default: str) -> Any:
    try:
        activity = json.loads(body)
    except Exception:
        return default
    return activity.get("serviceUrl", default) if isinstance(activity, dict) else default


async def test_teams_webhook_never_fails_on_bad_activities(soulgate_database_url: str) -> None:
    import adapters.teams as teams

    async with teams_fakes.start_fake_teams() as fake:
        @hookimpl
        def soulgate_adapters() -> list[Any]:
            return [teams.adapter_spec(credentials_factory=fake.credentials_factory())]

        plugin = types.SimpleNamespace(soulgate_adapters=soulgate_adapters)
        endpoints = {
            "to_bot_from_channel_openid_metadata_url": fake.openid_metadata_url,
            "to_bot_from_emulator_openid_metadata_url": fake.emulator_openid_metadata_url,
            "to_channel_from_bot_login_url": fake.login_url, "oauth_url": f"{fake.base_url}/oauth",
            "validate_authority": False,
        }
        table = {"app_id": fake.app_id, "app_password": fake.app_password, "app_type": "MultiTenant",
                 "allowed_tenants": [fake.tenant_id], "endpoints": endpoints}
        config = test_config({"plugins": {"disabled": ["teams"]}, "channels": {"teams": {"main": table}}})
        plugins = [("teams-under-test", plugin), ("silent", SILENT)]
        async with running_gateway(soulgate_database_url, config=config, plugins=plugins) as h, \
                aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{h.gateway.public_port}/api/messages"
            db = h.gateway.store.db

            async def one(body: bytes) -> None:
                since = await max_seq(db)
                token = fake.mint_token(service_url=_service_url_of(body, fake.service_url))
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                status, reason = await post(http, url, body, headers)
                await expect_whole(h, since, status, reason, "teams")
                for row in await db.fetch("SELECT reply_to FROM conversations"):
                    assert isinstance(row["reply_to"], dict)

            templates = teams_templates(fake.service_url)
            strategy = st.sampled_from(templates).flatmap(lambda a: bodies(a, deep_at="channelData"))
            personal = templates[0]
            head = json.dumps({k: v for k, v in personal.items() if k != "channelData"}).encode()[:-1]
            await run_in_thread(strategy, 100, one, explicit=(
                deep(head + b', "channelData": ', 5000),  # RecursionError in json.loads: 500
                deep(head + b', "channelData": ', 950),  # RecursionError at the handler's own stack depth
                deep(head + b', "channelData": ', 900),  # stored: what walks it later must not recurse that deep
                body_with(personal, ("text",), "a\x00b"),  # NUL: the insert failed, 503
                body_with(personal, ("channelData", "tenant", "id"), "\x00"),  # NUL in the refusal's audit: 500
                body_with(personal, ("serviceUrl",), "http://[x/"),  # urlsplit's ValueError: 503 forever
                body_with(personal, ("attachments",), [{"contentType": "text/html", "content": '<img src="http://[">'}]),
            ))
            await drained(db)
        assert not fake.blocked_connections


# -- email ---------------------------------------------------------------------------------

EMAIL_CONFIG = EmailConfig.model_validate(EMAIL_TABLE)
#: an Authentication-Results header without an authserv-id: IndexError in the sender check, which
#: escaped the intake, so the watcher fetched the mail again and again
NO_AUTHSERV = b"Authentication-Results: ;\r\n" + MAIL_TEMPLATES[1]


@fuzz_settings(200)
@given(mails(MAIL_TEMPLATES))
@example(NO_AUTHSERV)
def test_email_parser_reads_any_bytes_or_raises_unreadable(raw: bytes) -> None:
    try:
        mail = parse_mail(raw, max_attachment_bytes=EMAIL_CONFIG.max_attachment_bytes,
                          max_attachments=EMAIL_CONFIG.max_attachments)
    except Unreadable:
        return  # documented: kept and reported, never retried
    summary(mail)
    loop_reason(mail, EMAIL_CONFIG, ours=ours(mail.message_id, EMAIL_CONFIG.domain) is not None)
    sender_reason(mail, EMAIL_CONFIG)
    conversation = bare_id(mail.message_id) if mail.message_id else "imap:INBOX:7:42"
    envelope = to_envelope(mail, account="support", config=EMAIL_CONFIG, mailbox="INBOX", uidvalidity=7,
                           uid=42, conversation=conversation, source=raw)
    assert_valid_envelope(envelope, "email", "support")


async def test_email_intake_takes_every_bad_mail_exactly_once(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer,
) -> None:
    """No status code here: the promise is that every fetched mail is decided (admitted, ignored,
    duplicate or unreadable) and the watermark moves past it, so no mail is fetched forever."""
    table = {**EMAIL_TABLE, "allowed_senders": [],
             "imap": {"host": imap_server.host, "port": imap_server.port, "tls": "none",
                      "user": imap_server.user, "password": imap_server.password,
                      "poll_interval_seconds": 0.5, "timeout_seconds": 5.0},
             "smtp": {"host": smtp_server.host, "port": smtp_server.port, "tls": "none"}}
    config = test_config({"channels": {"email": {"support": table}}})
    async with running_gateway(soulgate_database_url, config=config, plugins=[("silent", SILENT)]) as h:
        adapter = h.gateway.adapters[("email", "support")]
        db = h.gateway.store.db

        def status() -> dict[str, Any]:
            return dict(adapter.status())

        def taken() -> int:
            return sum(int(status().get(k, 0)) for k in ("admitted", "duplicate", "ignored", "unreadable"))

        async def settled(count: int, last_uid: int) -> None:
            # the watermark is saved just after a mail is counted: wait for both
            try:
                async with asyncio.timeout(60):
                    while taken() < count or status()["last_uid"] != last_uid:  # noqa: ASYNC110 - in the adapter
                        await asyncio.sleep(0.1)
            except TimeoutError:
                raise AssertionError(f"a mail was not taken, or the watermark is stuck: {status()}") from None

        async with asyncio.timeout(30):
            while not status().get("polls"):  # noqa: ASYNC110 - the first poll sets the watermark
                await asyncio.sleep(0.1)

        async def batch(raws: list[bytes]) -> None:
            since, before = await max_seq(db), taken()
            uids = [await imap_server.deliver(raw) for raw in raws]
            await settled(before + len(raws), uids[-1])
            assert taken() == before + len(raws), f"a mail was taken twice: {status()}"
            assert len(await check_database(db, since, "email", "support")) <= len(raws)

        # (the fake IMAP server's own MIME parser gives up on multiparts nested ~300 deep)
        strategy = st.lists(mails(MAIL_TEMPLATES, depths=(10, 100)), min_size=15, max_size=15)
        await run_in_thread(strategy, 3, batch, explicit=([NO_AUTHSERV],))
        await drained(db)


# -- the http channel (OpenAI-compatible) -----------------------------------------------------

HTTP_KEY = "sk-soulgate-fuzz-key-0000001"
CHAT: dict[str, Any] = {
    "model": "assistant", "user": "u1", "stream": False, "stream_options": {"include_usage": True},
    "messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "earlier"},
                 {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                 {"role": "user", "content": "hi"}],
}
_HEADER_VALUES = st.one_of(st.none(), st.sampled_from(["", " ", "x" * 257, "conv-1"]),
                           st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))


async def test_http_channel_never_fails_on_bad_requests(soulgate_database_url: str) -> None:
    table = {"api_keys": [HTTP_KEY], "reply_timeout_seconds": 20}
    config = test_config({"channels": {"http": {"main": table}}})
    async with running_gateway(soulgate_database_url, config=config, plugins=[("silent", SILENT)]) as h, \
            aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{h.gateway.public_port}/v1/chat/completions"
        db = h.gateway.store.db

        async def one(request: tuple[bytes, str | None, str | None]) -> None:
            body, conversation, key = request
            headers = {"Authorization": f"Bearer {HTTP_KEY}", "Content-Type": "application/json"}
            if conversation is not None:
                headers["X-Soulgate-Conversation"] = conversation
            if key is not None:
                headers["Idempotency-Key"] = key
            since = await max_seq(db)
            status, reason = await post(http, url, body, headers)
            assert status < 500, f"{status} {reason}"
            new = await check_database(db, since, "http", "main")
            assert len(new) <= (1 if status == 200 else 0), f"{status} stored {len(new)} rows"

        requests = st.tuples(bodies(CHAT, deep_at="messages"), _HEADER_VALUES, _HEADER_VALUES)
        await run_in_thread(requests, 80, one, explicit=(
            (deep(b'{"model": "assistant", "messages": ', 5000), None, None),  # RecursionError: 500
            (body_with(CHAT, ("messages", 3, "role"), ["user"]), None, None),  # unhashable role: 500
            # a NUL in an earlier message: seeding the history failed, 503 with x-should-retry: true
            (body_with(CHAT, ("messages", 1, "content"), "a\x00b"), None, None),
        ))
        await drained(db)


# -- the admin API's proactive send ----------------------------------------------------------------


async def test_admin_send_never_fails_on_bad_bodies(soulgate_database_url: str) -> None:
    async with running_gateway(soulgate_database_url, plugins=[("silent", SILENT)]) as h, \
            aiohttp.ClientSession() as http:
        await h.send("hello", conversation="c1")
        await h.idle()
        db = h.gateway.store.db
        key = await scalar(db, "SELECT key FROM conversations LIMIT 1")
        url = f"http://127.0.0.1:{h.gateway.admin_port}/api/send"
        headers = {"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"}
        templates = [
            {"text": "proactive *hello*", "conversation": key},
            {"text": "to an address", "address": {"channel": "fake", "account": "test",
                                                  "data": {"conversation": "c2", "thread": None}}},
        ]

        async def one(body: bytes) -> None:
            since = int(await scalar(db, "SELECT coalesce(max(id), 0) FROM outbox"))
            status, reason = await post(http, url, body, headers)
            assert status < 500, f"{status} {reason}"
            written = await check_outbox(db, since)
            if status == 202:
                assert written == len(json.loads(reason)["queued"])
            else:
                assert written == 0, f"{status} yet {written} outbox rows"

        strategy = st.one_of(
            st.sampled_from(templates).flatmap(lambda t: bodies(t, deep_at="text")),
            JSON_VALUES.map(lambda v: json.dumps({"text": "x", "address": v}).encode()),
        )
        await run_in_thread(strategy, 100, one, explicit=(
            deep(b'{"text": "x", "address": ', 5000),  # RecursionError: 500
            json.dumps(templates[1] | {"address": {"channel": "fake", "account": "test",
                                                   "data": {"x": float("nan")}}}).encode(),  # NaN: 500
            json.dumps({"text": "a\x00b", "conversation": key}).encode(),  # NUL in the text: 500
            json.dumps({"text": "x", "conversation": "a\x00b"}).encode(),  # NUL in the key: 500
        ))

