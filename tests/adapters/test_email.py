"""The email adapter end to end: a real gateway on real Postgres, aioimaplib against pymap
and aiosmtplib against aiosmtpd (``tests/fakes/mailserver.py``)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.email import EmailAdapter
from gateway import AdmitResult, Envelope, Turn, TurnResult
from gateway.config import Config
from gateway.testing import GatewayHarness, running_gateway, test_config
from gateway.testing.recorder import RecordingResponder
from storage import prune_expired_state
from tests.fakes import mailmessages as mm
from tests.fakes import mailserver
from tests.fakes.mailserver import FakeImapServer, FakeSmtpServer, ReceivedMail, SmtpMode, start_smtp_server

imap_server = mailserver.imap_server
smtp_server = mailserver.smtp_server

BOT = "bot@example.org"
ALICE = "alice@example.org"

Respond = Callable[[Turn], Awaitable[TurnResult]]


class Recorder(RecordingResponder):
    def echo_text(self, turn: Turn) -> str:
        return f"**echo** ({len(turn.history)} before): {turn.envelope.text}"

def account_table(imap_srv: FakeImapServer, smtp_srv: FakeSmtpServer, **over: Any) -> dict[str, Any]:
    imap_over = over.pop("imap", {})
    smtp_over = over.pop("smtp", {})
    table: dict[str, Any] = {
        "address": BOT, "display_name": "Soulgate Bot",
        "imap": {"host": imap_srv.host, "port": imap_srv.port, "tls": "none", "user": imap_srv.user,
                 "password": imap_srv.password, "poll_interval_seconds": 1.0, "timeout_seconds": 5.0,
                 **imap_over},
        "smtp": {"host": smtp_srv.host, "port": smtp_srv.port, "tls": "none", "timeout_seconds": 5.0, **smtp_over},
        **over,
    }
    return table


def config_for(imap_srv: FakeImapServer, smtp_srv: FakeSmtpServer, **over: Any) -> Config:
    return test_config({"channels": {"email": {"support": account_table(imap_srv, smtp_srv, **over)}},
                        "delivery": {"max_attempts": 2}})


@asynccontextmanager
async def email_gateway(db: str, imap_srv: FakeImapServer, smtp_srv: FakeSmtpServer,
                        recorder: Recorder | None = None, **over: Any) -> AsyncIterator[GatewayHarness]:
    recorder = recorder or Recorder()
    async with running_gateway(db, config=config_for(imap_srv, smtp_srv, **over),
                               plugins=[("recorder", recorder.plugin())]) as h:
        await eventually(lambda: adapter_of(h).status().get("polls", 0) >= 1)
        yield h


def adapter_of(h: GatewayHarness) -> EmailAdapter:
    adapter = h.gateway.adapters[("email", "support")]
    assert isinstance(adapter, EmailAdapter)
    return adapter


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the condition lives in another component
            await asyncio.sleep(0.05)


async def audits(h: GatewayHarness, kind: str) -> list[dict[str, Any]]:
    rows = await h.gateway.store.db.fetch("SELECT detail FROM audit WHERE kind = $1 ORDER BY id", kind)
    return [dict(r["detail"]) for r in rows]


async def inbox_envelopes(h: GatewayHarness) -> list[Envelope]:
    rows = await h.gateway.store.db.fetch("SELECT envelope FROM inbox ORDER BY seq")
    return [Envelope.from_json(r["envelope"]) for r in rows]


async def watermark(h: GatewayHarness) -> dict[str, Any]:
    value = await h.gateway.store.state.get("adapter:email:support:watermark:INBOX")
    return cast(dict[str, Any], value)


def body_parts(mail: ReceivedMail) -> dict[str, str]:
    return {p.get_content_type(): str(cast(EmailMessage, p).get_content()) for p in mail.message.walk()
            if p.get_content_maintype() == "text"}


# -- requests and threads ---------------------------------------------------------------------


async def test_request_answered_with_threading_headers(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    recorder = Recorder()
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, recorder) as h:
        raw = mm.plain_text_message("What is the answer?\n", subject="RE: Re: Question",
                                    message_id="<q1@example.org>", references="<root@example.org>",
                                    in_reply_to="<root@example.org>", reply_to="Alice Work <alice.work@example.org>")
        uid = await imap_server.deliver(raw)
        (sent,) = await smtp_server.wait_for_messages(1, timeout=10)
        msg = sent.message
        assert sent.mail_from == BOT and sent.rcpt_tos == ("alice.work@example.org",)  # Reply-To wins
        assert msg["From"].addresses[0].addr_spec == BOT
        assert msg["From"].addresses[0].display_name == "Soulgate Bot"
        assert msg["To"].addresses[0].addr_spec == "alice.work@example.org"
        assert msg["Subject"] == "Re: Question"  # not stacked
        assert msg["In-Reply-To"] == "<q1@example.org>"
        assert str(msg["References"]).split() == ["<root@example.org>", "<q1@example.org>"]
        assert msg["Auto-Submitted"] == "auto-replied"
        assert re.fullmatch(r"<sg\.[0-9a-f]{32}\.[0-9a-f]{16}@example\.org>", str(msg["Message-ID"]))
        assert msg.get_content_type() == "multipart/alternative"
        parts = body_parts(sent)
        assert parts["text/plain"].startswith("**echo** (0 before): What is the answer?")
        assert "<strong>echo</strong>" in parts["text/html"]

        (env,) = [t.envelope for t in recorder.turns]
        validity = await imap_server.uidvalidity()
        assert env.external_id == f"imap:INBOX:{validity}:{uid}"
        assert env.alt_ids == ("mid:<q1@example.org>",)
        # a reply to a thread we never saw: the thread root names the conversation
        assert (env.conversation.id, env.conversation.kind, env.conversation.title) == (
            "root@example.org", "direct", "Question")
        assert env.sender.id == ALICE and env.sender.display_name == "Alice Example" and env.addressed
        assert env.text == "What is the answer?"
        assert base64.b64decode(env.raw["source_b64"]) == raw

        await h.idle()
        (stored,) = await imap_server.messages()
        assert "\\Seen" in stored.flags  # flagged only after the inbox commit
        assert (await watermark(h))["last_uid"] == uid
        status = adapter_of(h).status()
        assert status["leading"] and status["connected"] and status["admitted"] == 1 and status["sent"] == 1
        # later polls ask UID FETCH <last+1>:*, which still returns the last message: it is
        # filtered out, not taken again
        await eventually(lambda: adapter_of(h).status()["polls"] >= status["polls"] + 2)
        assert adapter_of(h).status()["duplicate"] == 0 and len(recorder.turns) == 1
        result = await h.gateway.store.db.fetch("SELECT platform_message_id FROM outbox")
        assert result[0]["platform_message_id"] == msg["Message-ID"]


async def test_reply_to_the_answer_continues_the_conversation(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    recorder = Recorder()
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, recorder):
        first = mm.plain_text_message("Refund please.\n", subject="Order 123", message_id="<start@example.org>")
        await imap_server.deliver(first)
        (answer,) = await smtp_server.wait_for_messages(1, timeout=10)

        # the user answers the bot's mail, quoting it and signing
        headers = mm.reply_headers(answer.raw)
        quoted = "\n".join(f"> {line}" for line in body_parts(answer)["text/plain"].splitlines())
        body = f"It was order 123.\n\nOn Mon, 3 Jun 2024, Soulgate Bot <{BOT}> wrote:\n{quoted}\n\n-- \nAlice\n"
        await imap_server.deliver(mm.plain_text_message(body, **headers))
        await smtp_server.wait_for_messages(2, timeout=10)

        # a client that keeps only In-Reply-To (no References) still finds the thread
        second = smtp_server.messages[1]
        await imap_server.deliver(mm.plain_text_message(
            "And one more thing.\n", subject="Re: Order 123", message_id="<more@example.org>",
            in_reply_to=str(second.message["Message-ID"])))
        third = (await smtp_server.wait_for_messages(3, timeout=10))[2]

    turns = recorder.turns
    assert [t.envelope.conversation.id for t in turns] == ["start@example.org"] * 3
    assert len({t.envelope.conversation_key for t in turns}) == 1
    assert turns[0].envelope.text == "Order 123\n\nRefund please."  # a new thread's subject counts
    assert turns[1].envelope.text == "It was order 123."  # quote and signature stripped
    assert turns[1].envelope.raw["text"].startswith("It was order 123.")  # the whole original kept
    assert any(s.kind == "quote" and "> **echo**" in s.value for s in turns[1].envelope.segments)
    # the agent sees the history of the thread
    assert [h.content for h in turns[1].history][:1] == ["Order 123\n\nRefund please."]
    assert len(turns[2].history) == 4
    assert str(second.message["References"]).split()[0] == "<start@example.org>"
    assert third.message["In-Reply-To"] == "<more@example.org>"
    assert str(third.message["Subject"]) == "Re: Order 123"


async def test_idle_wakes_the_adapter_long_before_a_poll_would(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    slow = {"poll_interval_seconds": 600, "idle_renew_seconds": 600}
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, imap=slow) as h:
        adapter = adapter_of(h)
        await eventually(lambda: adapter.status()["idling"])
        assert adapter.status()["polls"] == 1
        await imap_server.deliver(mm.plain_text_message("Are you awake?\n"))
        # polling alone would take ten minutes; the generous limit is no timing assertion
        await smtp_server.wait_for_messages(1, timeout=15)
        assert adapter.status()["polls"] == 2


async def test_dropped_connection_is_replaced_and_polled(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    slow = {"poll_interval_seconds": 600, "idle_renew_seconds": 600}
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, imap=slow) as h:
        adapter = adapter_of(h)
        await eventually(lambda: adapter.status()["idling"])
        # mail arriving while the link is dead is found by the poll after the reconnect
        await imap_server.drop_connections()
        await imap_server.deliver(mm.plain_text_message("Sent while you were away.\n"))
        await smtp_server.wait_for_messages(1, timeout=15)
        await eventually(lambda: adapter.status()["connects"] >= 2)
        assert adapter.status()["last_error"] is None or "IMAP" in adapter.status()["last_error"]


class FreezingProxy:
    """A TCP relay to the IMAP server that can go silent without closing anything,
    like a NAT box that forgot the connection: only timeouts can notice."""

    def __init__(self, target: FakeImapServer) -> None:
        self.target = target
        self.frozen: set[asyncio.StreamWriter] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    owner: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if owner in self.frozen:
                continue  # swallowed: the other side never hears of it
            writer.write(data)
            await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        self.writers.append(writer)
        await asyncio.gather(self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, writer),
                             return_exceptions=True)

    def freeze_all(self) -> None:
        self.frozen.update(self.writers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FreezingProxy]:
        server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            for w in self.writers:
                w.close()
            server.close()


async def test_a_silently_dead_connection_is_detected_by_timeouts_and_replaced(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async with FreezingProxy(imap_server).running() as proxy:
        over = {"port": proxy.port, "idle_renew_seconds": 1, "poll_interval_seconds": 600, "timeout_seconds": 1}
        async with email_gateway(soulgate_database_url, imap_server, smtp_server, imap=over) as h:
            adapter = adapter_of(h)
            await eventually(lambda: adapter.status()["idling"])
            proxy.freeze_all()  # no FIN, no RST: the IDLE just never ends
            await imap_server.deliver(mm.plain_text_message("Anyone there?\n"))
            await smtp_server.wait_for_messages(1, timeout=15)
            assert adapter.status()["connects"] >= 2


async def test_killed_after_fetch_before_admit_is_answered_once_after_restart(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    fetched = asyncio.Event()

    async def hang(envelope: Envelope) -> AdmitResult:
        fetched.set()
        await asyncio.Event().wait()  # the process "dies" here: nothing after the fetch happens
        raise AssertionError("unreachable")

    async with email_gateway(soulgate_database_url, imap_server, smtp_server) as h:
        h.gateway.admit = hang  # type: ignore[method-assign]
        uid = await imap_server.deliver(mm.plain_text_message("Do not lose me.\n"))
        await asyncio.wait_for(fetched.wait(), 10)
        assert (await watermark(h))["last_uid"] < uid
    assert smtp_server.messages == []
    (stored,) = await imap_server.messages()
    assert "\\Seen" not in stored.flags  # fetched with BODY.PEEK[]

    recorder = Recorder()
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, recorder) as h:
        await smtp_server.wait_for_messages(1, timeout=10)
        await h.idle()
        assert (await watermark(h))["last_uid"] == uid
    assert len(smtp_server.messages) == 1 and len(recorder.turns) == 1


async def test_the_same_mail_seen_twice_is_answered_once(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    recorder = Recorder()
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, recorder) as h:
        raw = mm.plain_text_message("Only once, please.\n", message_id="<twice@example.org>")
        await imap_server.deliver(raw)
        await smtp_server.wait_for_messages(1, timeout=10)
        await imap_server.deliver(raw)  # delivered again (a second copy, a client's re-upload)
        await eventually(lambda: adapter_of(h).status()["duplicate"] == 1)

        # the server renumbers the mailbox: everything is read again, nothing answered twice
        await imap_server.change_uidvalidity()
        await imap_server.drop_connections()
        await imap_server.deliver(mm.plain_text_message("New after the renumbering.\n"))
        await smtp_server.wait_for_messages(2, timeout=15)
        await h.idle()
        changed = await audits(h, "email_uidvalidity_changed")
        assert len(changed) == 1 and changed[0]["new"] == await imap_server.uidvalidity()
        assert adapter_of(h).status()["duplicate"] >= 3
    assert len(smtp_server.messages) == 2
    assert [t.envelope.text.splitlines()[-1] for t in recorder.turns] == [
        "Only once, please.", "New after the renumbering."]


async def test_auto_replies_lists_bounces_and_own_mail_are_not_answered(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async with email_gateway(soulgate_database_url, imap_server, smtp_server) as h:
        loops = [
            mm.auto_reply_message(),
            mm.list_message(),
            mm.list_message(precedence="bulk"),
            mm.list_message(precedence=None),
            mm.plain_text_message(extra_headers=[("Precedence", "junk")]),
            mm.bounce_message(),
            mm.bounce_message(auto_submitted=None),  # only the null sender and MAILER-DAEMON tell
            mm.plain_text_message(from_="Soulgate Bot <bot@example.org>"),
            mm.plain_text_message(from_="Shop <no-reply@shop.example.com>"),
            mm.plain_text_message(return_path="<>"),
            mm.plain_text_message(" \n", subject=""),  # nothing to answer
        ]
        for raw in loops:
            await imap_server.deliver(raw)
        last = await imap_server.deliver(mm.plain_text_message("A person asking.\n"))
        (sent,) = await smtp_server.wait_for_messages(1, timeout=10)
        await h.idle()
        assert "A person asking." in body_parts(sent)["text/plain"]
        ignored = await audits(h, "email_ignored")
        reasons = [d["reason"] for d in ignored]
        assert len(reasons) == len(loops), reasons
        assert reasons == [
            "Auto-Submitted: auto-replied",
            "Precedence: list",
            "Precedence: bulk",
            "mailing list (List-Id, List-Post, List-Unsubscribe)",
            "Precedence: junk",
            "Auto-Submitted: auto-replied",
            "null sender (Return-Path: <>)",
            "sent by this mailbox itself",
            "automated sender no-reply@shop.example.com",
            "null sender (Return-Path: <>)",
            "empty message",
        ]
        assert all(d["uid"] and d["message_id"] for d in ignored)
        assert len(await inbox_envelopes(h)) == 1  # not admitted: the audit row is the record
        assert (await watermark(h))["last_uid"] == last  # and the watermark moved past them
    # our own answer, delivered back into the mailbox (a Bcc, a forwarding rule), is not answered
    assert sent.message["Auto-Submitted"] == "auto-replied"


async def test_answers_of_the_bot_itself_do_not_loop(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async with email_gateway(soulgate_database_url, imap_server, smtp_server) as h:
        await imap_server.deliver(mm.plain_text_message("Hello bot.\n"))
        (sent,) = await smtp_server.wait_for_messages(1, timeout=10)
        # the answer comes back (a Bcc to itself, a forwarding rule), its markers stripped by
        # some relay: its Message-ID still gives it away
        stripped = sent.raw.replace(b"Auto-Submitted: auto-replied\r\n", b"").replace(
            b"From: Soulgate Bot <bot@example.org>", b"From: Someone <someone@example.org>")
        assert b"Auto-Submitted" not in stripped and b"bot@example.org" not in stripped.split(b"To:")[0]
        await imap_server.deliver(stripped)
        await imap_server.deliver(sent.raw)  # and verbatim: a repeat of a Message-ID already decided
        await eventually(lambda: adapter_of(h).status()["duplicate"] == 1)
        reasons = [d["reason"] for d in await audits(h, "email_ignored")]
        assert reasons == ["sent by this mailbox itself"]
    assert len(smtp_server.messages) == 1


async def test_allow_list_and_authentication_results(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    ours = "mx.example.org"
    passed = ("Authentication-Results", f"{ours}; dkim=pass header.d=example.org; dmarc=pass header.from=example.org")
    forged = ("Authentication-Results", "mx.evil.test; dmarc=pass header.from=example.org")
    failed = ("Authentication-Results", f"{ours}; dkim=fail header.d=example.org; dmarc=fail")
    async with email_gateway(soulgate_database_url, imap_server, smtp_server,
                             allowed_senders=["Example.org", "friend@partner.test"],
                             trusted_authserv_id=ours) as h:
        await imap_server.deliver(mm.plain_text_message("stranger\n", from_="Eve <eve@evil.test>",
                                                        extra_headers=[passed]))
        await imap_server.deliver(mm.plain_text_message("forged\n", extra_headers=[forged]))
        await imap_server.deliver(mm.plain_text_message("failed\n", extra_headers=[failed]))
        await imap_server.deliver(mm.plain_text_message("unsigned\n"))
        await imap_server.deliver(mm.plain_text_message("genuine\n", extra_headers=[passed]))
        (sent,) = await smtp_server.wait_for_messages(1, timeout=10)
        await h.idle()
        assert "genuine" in body_parts(sent)["text/plain"]
        reasons = [d["reason"] for d in await audits(h, "email_ignored")]
        assert reasons == [
            "sender eve@evil.test is not on allowed_senders",
            f"sender {ALICE} not authenticated by {ours}",
            f"sender {ALICE} not authenticated by {ours}",
            f"sender {ALICE} not authenticated by {ours}",
        ]


async def test_per_sender_and_per_thread_rate_caps(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async with email_gateway(soulgate_database_url, imap_server, smtp_server,
                             max_per_sender=3, max_per_thread=2) as h:
        for n in range(3):  # one thread, three mails: the third is over the thread cap
            await imap_server.deliver(mm.plain_text_message(
                f"thread mail {n}\n", message_id=f"<t{n}@example.org>",
                references="<t0@example.org>" if n else None))
        await imap_server.deliver(mm.plain_text_message("new thread\n"))  # sender's third answer
        await imap_server.deliver(mm.plain_text_message("one too many\n"))  # over the sender cap
        await imap_server.deliver(mm.plain_text_message("someone else\n", from_="Bob <bob@example.org>"))
        await smtp_server.wait_for_messages(4, timeout=10)
        await h.idle()
        reasons = [d["reason"] for d in await audits(h, "email_ignored")]
        assert len(reasons) == 2
        assert reasons[0].startswith("rate cap: 2 mails in this thread")
        assert reasons[1].startswith(f"rate cap: 3 mails from {ALICE}")
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [ALICE, ALICE, ALICE, "bob@example.org"]


# -- formats ------------------------------------------------------------------------------------


async def test_mail_formats_are_read(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    recorder = Recorder()
    pdf = b"%PDF-1.4\n% fake\n%%EOF\n"
    cases: dict[str, bytes] = {
        "alternative": mm.alternative_message(subject="alt"),
        "html": mm.html_only_message(subject="Web form"),
        "latin1": mm.charset_message(subject="latin1"),
        "mislabelled": mm.mislabelled_charset_message(subject="mislabelled"),
        "encoded": mm.encoded_words_message(),
        "attachment": mm.attachment_message(filename="Bericht über.pdf", content=pdf, subject="att"),
        "wrong_boundary": mm.malformed_message("wrong_boundary"),
        "bad_headers": mm.malformed_message("bad_headers"),
        "bad_base64": mm.malformed_message("bad_base64"),
    }
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, recorder) as h:
        for raw in cases.values():
            await imap_server.deliver(raw)
        await smtp_server.wait_for_messages(len(cases), timeout=20)
        await h.idle()
        envs = dict(zip(cases, [t.envelope for t in recorder.turns], strict=True))

        assert envs["alternative"].text == "alt\n\nHello in *plain* text."  # the text/plain part
        html = envs["html"]
        assert html.text == "Web form\n\nOnly HTML here & no text part.\n\n[a link](https://example.org/x)"
        assert html.raw["text_source"] == "html" and "color: red" not in html.text
        assert "Grüße aus Köln, Straße 5. Ça va?" in envs["latin1"].text
        assert "\ufffd" in envs["mislabelled"].text  # replaced, and the damage recorded
        assert any("undecodable" in d for d in envs["mislabelled"].raw["defects"])
        encoded = envs["encoded"]
        assert encoded.conversation.title == "Grüße aus Köln: Überraschung für dich ✓"
        assert encoded.sender.display_name == "Jürgen Müller" and encoded.sender.id == "juergen@example.org"
        att = envs["attachment"]
        (segment,) = [s for s in att.segments if s.kind == "attachment"]
        assert segment.attachment is not None and segment.attachment.name == "Bericht über.pdf"
        assert (segment.attachment.mime, segment.attachment.size) == ("application/pdf", len(pdf))
        assert await h.services.fetch_attachment(att, segment.attachment) == pdf
        # the bytes are kept for keep_attachments_days (30), then no longer
        [kept] = await h.gateway.store.db.fetch(
            "SELECT key, expires_at - now() AS left FROM kv_state WHERE key LIKE 'adapter:email:%:att:' || $1",
            segment.attachment.ref)
        assert 29.9 < kept["left"].total_seconds() / 86_400 <= 30
        await h.gateway.store.db.fetch("UPDATE kv_state SET expires_at = now() WHERE key = $1", kept["key"])
        with pytest.raises(ValueError, match="no longer stored"):
            await h.services.fetch_attachment(att, segment.attachment)
        assert await prune_expired_state(h.gateway.store.db) == 1
        assert "Readable text before the breakage." in envs["wrong_boundary"].text
        assert envs["wrong_boundary"].raw["defects"]
        assert "Body after broken headers." in envs["bad_headers"].text
        assert envs["bad_base64"].raw["defects"]
        # the answers to encoded subjects are encoded correctly too
        subjects = {str(m.message["Subject"]) for m in smtp_server.messages}
        assert "Re: Grüße aus Köln: Überraschung für dich ✓" in subjects


async def test_attachment_caps(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    recorder = Recorder()
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, recorder,
                             max_attachment_bytes=10) as h:
        await imap_server.deliver(mm.attachment_message(content=b"x" * 100))
        await smtp_server.wait_for_messages(1, timeout=10)
        env = recorder.turns[0].envelope
        (segment,) = [s for s in env.segments if s.kind == "attachment"]
        assert segment.attachment is not None and segment.attachment.ref is None
        assert segment.attachment.size == 100 and "cap" in (segment.label or "")
        with pytest.raises(ValueError, match="not kept"):
            await h.services.fetch_attachment(env, segment.attachment)


async def test_unreadable_and_oversized_mail_is_kept_and_reported(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async with email_gateway(soulgate_database_url, imap_server, smtp_server,
                             processed_folder="Processed", max_message_bytes=4096) as h:
        garbage = b"\x00\x01 this is not a mail at all \xff\xfe\r\n"
        bad_uid = await imap_server.deliver(garbage)
        big_uid = await imap_server.deliver(mm.attachment_message(content=b"y" * 8000, subject="huge"))
        await imap_server.deliver(mm.plain_text_message("Still answered.\n"))
        await smtp_server.wait_for_messages(1, timeout=10)
        await h.idle()

        problems = await audits(h, "email_unreadable")
        assert [p["uid"] for p in problems] == [bad_uid, big_uid]
        assert "no usable sender" in problems[0]["error"] and "max_message_bytes" in problems[1]["error"]
        kept = await h.gateway.store.state.get(f"adapter:email:support:{problems[0]['state_key']}")
        stored = {m.uid: m.raw for m in await imap_server.messages()}
        assert base64.b64decode(kept["source_b64"]) == stored[bad_uid]  # as the server holds it
        head = await h.gateway.store.state.get(f"adapter:email:support:{problems[1]['state_key']}")
        assert b"Subject: huge" in base64.b64decode(head["source_b64"])

        status = (await h.gateway.status())["adapters"]
        (mine,) = [a for a in status if a["channel"] == "email"]
        assert mine["unreadable"] == 2 and [p["uid"] for p in mine["unreadable_mail"]] == [bad_uid, big_uid]
        # left where a person will look; the answered one moved on; nothing is retried
        assert {m.uid for m in await imap_server.messages()} == {bad_uid, big_uid}
        (moved,) = await imap_server.messages("Processed")
        assert b"Still answered." in moved.raw and "\\Seen" in moved.flags
        assert (await watermark(h))["last_uid"] > big_uid
    assert len(smtp_server.messages) == 1


async def test_only_one_instance_watches_a_mailbox(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    async with email_gateway(soulgate_database_url, imap_server, smtp_server) as a:
        config = config_for(imap_server, smtp_server)
        async with running_gateway(soulgate_database_url, config=config,
                                   plugins=[("recorder", Recorder().plugin())]) as b:
            await asyncio.sleep(0.5)
            assert adapter_of(a).status()["leading"] and not adapter_of(b).status()["leading"]
            await imap_server.deliver(mm.plain_text_message("Hello both.\n"))
            await smtp_server.wait_for_messages(1, timeout=10)
            await a.idle()
    assert len(smtp_server.messages) == 1


# -- SMTP and IMAP TLS ---------------------------------------------------------------------------


def _ca(tmp_path: Path) -> str:
    cert_path, _key = mailserver.self_signed_cert().write(tmp_path)
    return str(cert_path)


@pytest.mark.parametrize("mode,tls", [(SmtpMode.SMTPS, "implicit"), (SmtpMode.STARTTLS, "starttls")])
async def test_smtp_tls_modes_are_used(
    soulgate_database_url: str, imap_server: FakeImapServer, tmp_path: Path, mode: SmtpMode, tls: str
) -> None:
    async with start_smtp_server(mode, username="bot@example.org", password="smtp-secret") as smtp:
        smtp_cfg = {"tls": tls, "ca_file": _ca(tmp_path), "user": "bot@example.org", "password": "smtp-secret",
                    "host": "localhost"}
        async with email_gateway(soulgate_database_url, imap_server, smtp, smtp=smtp_cfg):
            await imap_server.deliver(mm.plain_text_message("Over TLS please.\n"))
            (sent,) = await smtp.wait_for_messages(1, timeout=10)
    assert sent.tls is True
    if mode is SmtpMode.STARTTLS:
        assert sent.auth_user == "bot@example.org"  # AUTH only after the upgrade


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_no_plaintext_fallback_when_tls_is_configured(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer, tls: str
) -> None:
    assert smtp_server.mode is SmtpMode.PLAIN  # offers no STARTTLS, speaks no TLS
    async with email_gateway(soulgate_database_url, imap_server, smtp_server, smtp={"tls": tls}) as h:
        await imap_server.deliver(mm.plain_text_message("Secret question.\n"))
        await eventually(lambda: adapter_of(h).status()["send_failures"] >= 1)
        await h.idle(timeout=15)
        dead = await h.gateway.store.outbox.dead()
        assert len(dead) == 1
        if tls == "starttls":
            assert "does not offer STARTTLS" in dead[0]["last_error"]
    assert smtp_server.messages == []  # nothing went out in plaintext


async def test_imap_over_implicit_tls(
    soulgate_database_url: str, smtp_server: FakeSmtpServer, tmp_path: Path
) -> None:
    async with mailserver.start_imap_server(tls=True) as imap:
        over = {"tls": "implicit", "ca_file": _ca(tmp_path), "host": "localhost"}
        async with email_gateway(soulgate_database_url, imap, smtp_server, imap=over):
            await imap.deliver(mm.plain_text_message("Via IMAPS.\n"))
            await smtp_server.wait_for_messages(1, timeout=10)


async def test_wrong_imap_password_is_reported_and_retried(
    soulgate_database_url: str, imap_server: FakeImapServer, smtp_server: FakeSmtpServer
) -> None:
    config = config_for(imap_server, smtp_server, imap={"password": "wrong"})
    async with running_gateway(soulgate_database_url, config=config) as h:
        adapter = adapter_of(h)
        await eventually(lambda: bool(adapter.status()["last_error"]))
        status = adapter.status()
        assert "LOGIN refused" in status["last_error"] and not status["connected"]
        assert "wrong" not in str(status)  # never the secret

