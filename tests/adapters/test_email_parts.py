"""The email adapter's parts on their own: parsing, quote stripping, screening, threading,
composing, sending errors, config validation, and lazy imports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.email.config import EmailConfig
from adapters.email.mailparse import Unreadable, parse_mail
from adapters.email.outbound import compose, deliver, markdown_to_html
from adapters.email.quoting import split_reply
from adapters.email.screening import authenticated, loop_reason, sender_reason
from adapters.email.threads import ThreadMap, our_message_id, ours, references_for, reply_subject
from gateway import (
    Attachment,
    OutcomeUnknown,
    PermanentDeliveryError,
    Reply,
    ReplyAddress,
    TransientDeliveryError,
)
from gateway.config import Config
from gateway.runtime import Gateway
from tests.fakes import mailmessages as mm
from tests.fakes import mailserver
from tests.fakes.mailserver import FakeSmtpServer

smtp_server = mailserver.smtp_server


def config(**over: Any) -> EmailConfig:
    base: dict[str, Any] = {
        "address": "bot@example.org",
        "imap": {"host": "127.0.0.1", "user": "bot", "password": "x"},
        "smtp": {"host": "127.0.0.1", "tls": "none"},
    }
    return EmailConfig.model_validate({**base, **over})


def parse(raw: bytes) -> Any:
    return parse_mail(raw, max_attachment_bytes=1_000_000, max_attachments=10)


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,defect", [
    (b"From: a@example.org\r\nMessage-ID: <\r\n\r\nbody\r\n", "header Message-ID"),
    (b"From: a@example.org\r\nContent-Type: text/plain; charset=\"x-nope\"\r\n\r\nbody \xe4\r\n", "charset"),
    (b"From: a@example.org\r\nContent-Type: text/plain; charset*=utf-8''%FF\r\n\r\nbody\r\n", "charset"),
])
def test_headers_and_charsets_that_crash_the_stdlib_are_survived(raw: bytes, defect: str) -> None:
    mail = parse(raw)
    assert mail.from_addr == "a@example.org" and mail.text.startswith("body")
    assert any(defect in d for d in mail.defects), mail.defects


@pytest.mark.parametrize("raw", [
    b"\x00\x01\x02 binary junk",
    b"From: a@[\r\n\r\nno usable sender\r\n",
    b"Subject: nobody sent this\r\n\r\nbody\r\n",
])
def test_mail_without_a_sender_is_unreadable(raw: bytes) -> None:
    with pytest.raises(Unreadable, match="no usable sender"):
        parse(raw)


def test_threading_headers_are_read_leniently() -> None:
    mail = parse(mm.plain_text_message(in_reply_to="bare@example.org",
                                       references="<a@x> junk <b@y>\r\n <c@z>", message_id="<m@x>"))
    assert mail.in_reply_to == ["<bare@example.org>"]  # brackets some clients forget
    assert mail.references == ["<a@x>", "<b@y>", "<c@z>"]
    assert mail.message_id == "<m@x>"


def test_reply_to_is_the_address_answered() -> None:
    mail = parse(mm.plain_text_message(reply_to="Team <team@example.org>"))
    assert (mail.from_addr, mail.reply_addr, mail.reply_name) == ("alice@example.org", "team@example.org", "Team")


# -- quotes and signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("text,new", [
    ("Thanks!\n\nOn Mon, 3 Jun 2024 at 10:00, Bot <bot@x.org> wrote:\n> old\n> older\n", "Thanks!"),
    ("Thanks!\n\nOn Mon, 3 Jun 2024 at 10:00, Bot <bot@x.org>\nwrote:\n> old\n", "Thanks!"),
    ("Danke.\n\nAm 03.06.2024 um 10:00 schrieb Bot <bot@x.org>:\n> alt\n", "Danke."),
    ("Sure.\n\n-----Original Message-----\nFrom: Bot\nSent: Monday\n\nold", "Sure."),
    ("Yes\n\nFrom: Bot <bot@x.org>\nSent: Monday\nTo: Alice\n\nold", "Yes"),
    ("Hi\n\n-- \nAlice\nACME\n", "Hi"),
    ("Hi\n\nSent from my iPhone", "Hi"),
    ("> q1\nanswer one\n> q2\nanswer two\n", "> q1\nanswer one\n> q2\nanswer two"),  # inline replies stay
    ("> everything is quoted\n", "> everything is quoted"),  # never stripped to nothing
    ("As I wrote: see below.\nThanks", "As I wrote: see below.\nThanks"),
])
def test_split_reply(text: str, new: str) -> None:
    assert split_reply(text)[0] == new


# -- screening ----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers,reason", [
    ({"extra_headers": [("Auto-Submitted", "auto-generated")]}, "Auto-Submitted: auto-generated"),
    ({"extra_headers": [("X-Auto-Response-Suppress", "All")]}, "X-Auto-Response-Suppress: All"),
    ({"extra_headers": [("X-Autoreply", "yes")]}, "X-Autoreply: yes"),
    ({"extra_headers": [("List-Unsubscribe", "<mailto:u@x>")]}, "mailing list (List-Unsubscribe)"),
    ({"from_": "MAILER-DAEMON@mx.example.org"}, "automated sender mailer-daemon@mx.example.org"),
    ({"from_": "Alice <alice@example.org>", "reply_to": "noreply@example.org"},
     "automated sender noreply@example.org"),
    ({"reply_to": "bot@example.org"}, "Reply-To is this mailbox itself"),
])
def test_loop_reasons(headers: Any, reason: str) -> None:
    assert loop_reason(parse(mm.plain_text_message(**headers)), config()) == reason


def test_ordinary_and_explicitly_human_mail_is_answered() -> None:
    cfg = config()
    assert loop_reason(parse(mm.plain_text_message()), cfg) is None
    assert loop_reason(parse(mm.plain_text_message(extra_headers=[("Auto-Submitted", "no")])), cfg) is None
    outlook = [("X-Auto-Response-Suppress", "DR, RN, NRN")]  # only delivery receipts suppressed
    assert loop_reason(parse(mm.plain_text_message(extra_headers=outlook)), cfg) is None
    report = parse(mm.bounce_message(auto_submitted=None, return_path=None, from_="ops@example.org"))
    assert loop_reason(report, cfg) == "delivery or read report (multipart/report)"


def _auth(*results: str, from_: str = "Alice <alice@mail.example.org>") -> Any:
    return parse(mm.plain_text_message(from_=from_, extra_headers=[("Authentication-Results", r) for r in results]))


@pytest.mark.parametrize("results,ok", [
    (["mx.test; dmarc=pass (p=reject) header.from=mail.example.org"], True),
    (["mx.test; dkim=pass header.d=example.org"], True),  # relaxed alignment: parent domain
    (["mx.test; dkim=pass header.i=@mail.example.org"], True),
    (["mx.test; spf=pass smtp.mailfrom=bounce@mail.example.org"], True),
    (["mx.test; dkim=pass header.d=evil.test; spf=pass smtp.mailfrom=x@evil.test"], False),
    (["mx.test; dmarc=fail header.from=mail.example.org"], False),
    (["mx.test; dmarc=pass header.from=evil.test"], False),
    (["evil.test; dmarc=pass"], False),  # someone else's authserv-id
    (["MX.TEST; dkim=fail", "mx.test; dmarc=pass"], False),  # our server's own header is the topmost
    ([], False),
])
def test_authentication_results(results: list[str], ok: bool) -> None:
    assert authenticated(_auth(*results), "mx.test") is ok


def test_allow_list_by_address_and_domain() -> None:
    cfg = config(allowed_senders=["@Example.org", "friend@partner.test"])
    assert cfg.allowed_senders == ["example.org", "friend@partner.test"]
    assert sender_reason(parse(mm.plain_text_message()), cfg) is None
    assert sender_reason(parse(mm.plain_text_message(from_="friend@partner.test")), cfg) is None
    assert sender_reason(parse(mm.plain_text_message(from_="foe@partner.test")), cfg) is not None
    # a subdomain is another domain
    assert sender_reason(parse(mm.plain_text_message(from_="x@sub.example.org")), cfg) is not None


# -- threading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("subject,expected", [
    ("Question", "Re: Question"), ("Re: Question", "Re: Question"), ("RE: re: Question", "Re: Question"),
    ("AW: Re[2]: Frage", "Re: Frage"), ("Re:Re:  x", "Re: x"), ("", "Re: your message"),
    ("Regarding Re: the plan", "Re: Regarding Re: the plan"),
])
def test_reply_subject_does_not_stack(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


def test_references_keep_the_root_and_the_recent_ids() -> None:
    refs = [f"<{n}@x>" for n in range(30)]
    out = references_for(refs, "<parent@x>")
    assert out[0] == "<0@x>" and out[-1] == "<parent@x>" and len(out) == 20
    assert references_for([], "<p@x>") == ["<p@x>"] and references_for([], None) == []


async def test_thread_map_prefers_the_parent_and_knows_our_ids() -> None:
    store: dict[str, Any] = {}

    async def get(key: str) -> Any:
        return store.get(key)

    async def set_(key: str, value: Any, *, expires_in: float | None = None) -> None:
        store[key] = value

    threads = ThreadMap(get, set_, "example.org")
    await threads.remember("<first@x>", "conv-a")
    await threads.remember("<other@x>", "conv-b")
    assert await threads.conversation_for(message_id="<n@x>", in_reply_to=["<other@x>"],
                                          references=["<first@x>", "<other@x>"], fallback="f") == "conv-b"
    assert await threads.conversation_for(message_id="<n@x>", in_reply_to=[], references=["<root@x>", "<u@x>"],
                                          fallback="f") == "root@x"
    assert await threads.conversation_for(message_id="<n@x>", in_reply_to=[], references=[],
                                          fallback="f") == "n@x"
    mine = our_message_id("sg." + "a" * 32, "conv-c", "example.org")
    assert ours(mine, "example.org") and not ours(mine, "other.org") and not ours("<first@x>", "example.org")
    await threads.remember_token("conv-c")
    assert await threads.conversation_for(message_id="<n@x>", in_reply_to=[mine], references=[],
                                          fallback="f") == "conv-c"


# -- composing and sending ----------------------------------------------------------------------


def _address(**data: Any) -> ReplyAddress:
    base = {"to": "alice@example.org", "to_name": "Alice", "message_id": "<q@x>", "references": ["<r@x>"],
            "subject": "Re: Hello", "conversation": "r@x"}
    return ReplyAddress("email", "support", {**base, **data})


def test_compose_threads_marks_and_renders() -> None:
    reply = Reply(text="Hi **there**\n\n<script>alert(1)</script>",
                  attachments=(Attachment(name="a.txt", mime="text/plain", data=b"hello"),))
    msg = compose(reply, _address(), config(display_name="Bot"), "<sg.1@example.org>")
    assert str(msg["From"]) == "Bot <bot@example.org>" and str(msg["To"]) == "Alice <alice@example.org>"
    assert (msg["Subject"], msg["In-Reply-To"], msg["References"]) == ("Re: Hello", "<q@x>", "<r@x> <q@x>")
    assert msg["Auto-Submitted"] == "auto-replied" and msg["Message-ID"] == "<sg.1@example.org>"
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(("html",))
    assert body is not None and "<strong>there</strong>" in body.get_content()
    assert "<script>" not in body.get_content()  # raw HTML in an answer stays text
    (att,) = msg.iter_attachments()
    assert att.get_filename() == "a.txt" and att.get_content() == "hello"


def test_compose_refuses_bad_addresses_and_header_injection() -> None:
    with pytest.raises(PermanentDeliveryError, match="not an email address"):
        compose(Reply(text="x"), _address(to="not an address"), config(), "<m@x>")
    msg = compose(Reply(text="x"), _address(subject="Hi\r\nBcc: victim@evil.test", to_name="A\nBcc: v@e.t"),
                  config(), "<m@x>")
    assert "Bcc" not in msg and b"\nBcc:" not in msg.as_bytes()
    assert msg["Subject"] == "Re: Hi Bcc: victim@evil.test"


def test_markdown_to_html_tables_and_code() -> None:
    html = markdown_to_html("| a | b |\n|---|---|\n| 1 | 2 |\n\n```\ncode <x>\n```\n")
    assert "<table>" in html and "code &lt;x&gt;" in html


async def test_smtp_refusals_are_classified(smtp_server: FakeSmtpServer) -> None:
    cfg = config(smtp={"host": smtp_server.host, "port": smtp_server.port, "tls": "none", "timeout_seconds": 5})
    msg = compose(Reply(text="x"), _address(to="ghost@example.org"), cfg, "<m@x>")
    smtp_server.reject_recipients.add("ghost@example.org")
    with pytest.raises(PermanentDeliveryError, match="RCPT TO refused: 550"):
        await deliver(msg, cfg, ["ghost@example.org"])
    # a non-ASCII address needs SMTPUTF8, which this server does not offer: retrying cannot help
    intl = compose(Reply(text="x"), _address(to="jürgen@example.org"), cfg, "<m@x>")
    with pytest.raises(PermanentDeliveryError):
        await deliver(intl, cfg, ["jürgen@example.org"])
    assert smtp_server.messages == []
    refused = config(smtp={"host": "127.0.0.1", "port": 1, "tls": "none", "timeout_seconds": 5})
    with pytest.raises(TransientDeliveryError, match="connection failed"):
        await deliver(msg, refused, ["alice@example.org"])


@asynccontextmanager
async def smtp_that_dies_in_data() -> AsyncIterator[int]:
    """A server that accepts everything up to the end of DATA, then hangs up without a reply."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            cmd = line.strip().upper()
            if cmd.startswith((b"EHLO", b"HELO")):
                writer.write(b"250 test\r\n")
            elif cmd == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while (data := await reader.readline()) and data != b".\r\n":
                    pass
                writer.close()  # the message is in, the answer never comes
                return
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_lost_connection_during_data_is_an_unknown_outcome() -> None:
    async with smtp_that_dies_in_data() as port:
        cfg = config(smtp={"host": "127.0.0.1", "port": port, "tls": "none", "timeout_seconds": 5})
        msg = compose(Reply(text="x"), _address(), cfg, "<m@x>")
        with pytest.raises(OutcomeUnknown, match="during DATA"):
            await deliver(msg, cfg, ["alice@example.org"])


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("over,message", [
    ({"imap": {"host": "h", "user": "u", "password": "p", "tls": "starttls"}}, "aioimaplib cannot do STARTTLS"),
    ({"smtp": {"host": "h", "user": "u"}}, "set both user and password"),
    ({"address": "Support <support@example.org>"}, "plain address"),
    ({"allowed_senders": ["not a domain!"]}, "neither an address nor a domain"),
    ({"processed_folder": "INBOX"}, "must differ from imap.mailbox"),
    ({"processed_folder": "Erledigt/Müll"}, "ASCII folder name"),
    ({"smtp": {"host": "smtp://h", "tls": "none"}}, "without scheme"),
    ({"imapp": {}}, "Extra inputs are not permitted"),
    ({"rate_window_seconds": float("inf")}, "less than or equal to"),  # stamps must be able to expire
    ({"keep_attachments_days": 0}, "greater than 0"),
])
def test_bad_config_is_refused_with_a_clear_error(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**over)


def test_defaults_are_secure() -> None:
    cfg = EmailConfig.model_validate({"address": "bot@example.org", "imap": {"host": "h", "user": "u",
                                      "password": "hunter2-secret"}, "smtp": {"host": "h"}})
    assert (cfg.imap.tls, cfg.imap.effective_port, cfg.smtp.tls, cfg.smtp.effective_port) == (
        "implicit", 993, "starttls", 587)
    assert cfg.imap.verify_tls and cfg.smtp.verify_tls and cfg.backlog == "skip"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())


def test_gateway_names_the_bad_key() -> None:
    gw = Gateway(Config.model_validate({"channels": {"email": {"support": {
        "address": "bot@example.org", "imap": {"host": "h", "user": "u", "password": "p", "tls": "starttls"},
        "smtp": {"host": "h"}}}}}))
    problems = gw.load_plugins()
    assert any(p.startswith("channels.email.support.imap.tls") and "STARTTLS" in p for p in problems), problems


def test_mail_libraries_load_only_when_an_account_runs() -> None:
    code = (
        "import sys\n"
        "from gateway.config import Config\n"
        "from gateway.runtime import Gateway\n"
        "cfg = {'channels': {'email': {'s': {'address': 'b@example.org', "
        "'imap': {'host': 'h', 'user': 'u', 'password': 'p'}, 'smtp': {'host': 'h'}}}}}\n"
        "for c in (Config(), Config.model_validate(cfg)):\n"
        "    gw = Gateway(c)\n"
        "    assert not gw.load_plugins()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('aioimaplib', 'aiosmtplib', 'lxml'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
