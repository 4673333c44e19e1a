"""Real IMAP and SMTP servers on 127.0.0.1 for email tests.

* IMAP: pymap, started in-process on the test's event loop, with its in-memory
  ("dict") backend. Plaintext IMAP by default (aioimaplib cannot do STARTTLS, so
  pymap's STARTTLS is switched off), or implicit TLS with ``tls=True``.
  ``IDLE`` is supported. Helpers deliver raw RFC 5322 messages into a mailbox
  while clients are connected (an IDLE-ing client is woken exactly as if another
  IMAP client had issued ``APPEND``), read mailboxes back, change UIDVALIDITY and
  drop every client connection.
* SMTP: aiosmtpd's threaded ``Controller`` with a recording handler, in one of
  three TLS modes (see :class:`SmtpMode`) and with optional AUTH.

Both pick a free port themselves (port 0), so tests can run in parallel.

Use the async context managers :func:`start_imap_server` /
:func:`start_smtp_server`, or the function-scoped fixtures ``imap_server`` /
``smtp_server``: bind them in a test module (``imap_server =
mailserver.imap_server``) or import them in a conftest. ``smtp_server``
accepts indirect parametrisation with a :class:`SmtpMode` or a dict of
keyword arguments for :func:`start_smtp_server`.

The message builders live in :mod:`tests.fakes.mailmessages`. This module is
deliberately not called ``email.py``: imported as ``tests.fakes.email`` it
would be harmless, but the moment ``tests/fakes`` itself lands on
``sys.path`` (running a file from there, pytest's rootdir-less import modes)
it would shadow the standard library's :mod:`email` for every import.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import enum
import functools
import ipaddress
import ssl
import tempfile
import threading
import warnings
import weakref
from argparse import Namespace
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from proxyprotocol.reader import ProxyProtocolReader
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Identity, Login
from pymap.backend.dict import Session as DictSession
from pymap.backend.dict.mailbox import MailboxData
from pymap.concurrent import Subsystem
from pymap.flags import FlagOp
from pymap.imap import IMAPServer
from pymap.mailbox import MailboxSnapshot
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import FetchRequirement
from pymap.parsing.specials.flag import Flag
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import Cleartext

__all__ = [
    "IMAP_PASSWORD",
    "IMAP_USER",
    "SMTP_PASSWORD",
    "SMTP_USER",
    "FakeImapServer",
    "FakeSmtpServer",
    "ReceivedMail",
    "SelfSignedCert",
    "SmtpMode",
    "StoredMessage",
    "imap_server",
    "self_signed_cert",
    "smtp_server",
    "start_imap_server",
    "start_smtp_server",
]

LOCALHOST = "127.0.0.1"

#: Default IMAP login. An e-mail-like name on purpose: aioimaplib sends the user
#: name of LOGIN unquoted, and ``@``/``.`` are valid IMAP atom characters.
IMAP_USER = "bot@example.org"
IMAP_PASSWORD = "imap-secret"

#: Default SMTP AUTH credentials (only checked when AUTH is switched on).
SMTP_USER = "bot@example.org"
SMTP_PASSWORD = "smtp-secret"

_PARSE_POLICY = email.policy.default


def _parse(raw: bytes) -> EmailMessage:
    # policy.default gives EmailMessage with .defects and tolerant decoding;
    # the same call the gateway is told to use (docs CHANNELS.md, Email).
    return cast(EmailMessage, email.message_from_bytes(raw, policy=_PARSE_POLICY))


# --------------------------------------------------------------------------
# Self-signed certificate (generated at runtime, never checked in)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfSignedCert:
    """A self-signed certificate for ``localhost`` / ``127.0.0.1``.

    ``cert_pem`` doubles as its own CA: trust it with :meth:`client_context`
    (or ``cafile=`` after :meth:`write`).
    """

    cert_pem: bytes
    key_pem: bytes

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting this certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain() only reads files, so round-trip through a temp dir
        # that is gone as soon as the context has loaded the key.
        with tempfile.TemporaryDirectory(prefix="soulgate-cert-") as tmp:
            cert_path, key_path = self.write(Path(tmp))
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate.

        Hostname checking stays on: the certificate names both ``localhost``
        and the IP address ``127.0.0.1``.
        """
        return ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``cert.pem`` and ``key.pem`` into *directory*; return both paths."""
        cert_path = directory / "cert.pem"
        key_path = directory / "key.pem"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


@functools.cache
def self_signed_cert() -> SelfSignedCert:
    """Generate (once per process) a self-signed certificate for 127.0.0.1."""
    # An EC key: generating it takes a millisecond, RSA-2048 far longer.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated an hour: valid at once even if a verifier's clock lags.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address(LOCALHOST)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Not needed by Python 3.11, but VERIFY_X509_STRICT (default from 3.13)
        # expects key identifiers; cheap to add.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SelfSignedCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


# --------------------------------------------------------------------------
# IMAP: pymap in-process
# --------------------------------------------------------------------------


class _FakeImapConfig(DictConfig):
    """pymap's dict-backend config with a fixed greeting.

    The stock greeting calls ``socket.getfqdn()`` on every connection, which
    can stall on a machine without working DNS.
    """

    @property
    def greeting(self) -> bytes:
        return b"Server ready imap.test"


@dataclass(frozen=True)
class StoredMessage:
    """One message as the IMAP server holds it."""

    uid: int
    #: Permanent flags such as ``\\Seen``; ``\\Recent`` is per-session in pymap
    #: and therefore not included.
    flags: frozenset[str]
    raw: bytes
    internal_date: dt.datetime

    def parsed(self) -> EmailMessage:
        return _parse(self.raw)


class FakeImapServer:
    """A running pymap server; create it with :func:`start_imap_server`.

    The helpers work on pymap's own session and mailbox objects, the very ones
    the IMAP connections use, so connected clients see every change as a
    server-side event (EXISTS, FETCH FLAGS, EXPUNGE), IDLE included.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        tls: bool,
        cert: SelfSignedCert | None,
        config: _FakeImapConfig,
        login: Login,
        server: asyncio.Server,
        writers: set[asyncio.StreamWriter],
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        #: True when the listening socket speaks implicit TLS (IMAPS).
        self.tls = tls
        #: The certificate presented when ``tls`` is on, else None.
        self.cert = cert
        self._config = config
        self._login = login
        self._server = server
        self._writers = writers

    # -- connection helpers -------------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """The context to pass to ``aioimaplib.IMAP4_SSL`` (None for plaintext)."""
        return self.cert.client_context() if self.cert is not None else None

    @property
    def connection_count(self) -> int:
        """Client connections currently open."""
        return sum(1 for w in self._writers if not w.is_closing())

    async def drop_connections(self) -> int:
        """Cut every client connection off abruptly (no ``BYE``, unsent data
        discarded), as a crashing server or a dying link would. The listener
        keeps accepting, so reconnect logic can be tested. Returns how many
        connections were dropped."""
        dropped = 0
        for writer in list(self._writers):
            if not writer.is_closing():
                writer.transport.abort()
                dropped += 1
        self._writers.clear()
        # Let pymap's connection tasks notice the EOF and clean up.
        await asyncio.sleep(0)
        return dropped

    # -- users ---------------------------------------------------------------

    async def add_user(self, user: str, password: str) -> None:
        """Create (or replace) another login on the same server."""
        await _set_user(self._config, self._login, user, password)

    # -- mailboxes -------------------------------------------------------------

    @asynccontextmanager
    async def _session(self, user: str | None = None) -> AsyncIterator[DictSession]:
        identity = Identity(user or self.user, self._login, None, frozenset())
        # new_session() looks up the per-user mailbox set in config.set_cache,
        # i.e. exactly the objects the IMAP connections of that user work on.
        async with identity.new_session() as session:
            yield session

    async def _mailbox(self, mailbox: str, user: str | None = None) -> MailboxData:
        async with self._session(user) as session:
            try:
                return await session.mailbox_set.get_mailbox(mailbox)
            except KeyError:
                raise KeyError(f"no mailbox {mailbox!r} for {user or self.user}") from None

    async def create_mailbox(self, mailbox: str, *, user: str | None = None) -> None:
        async with self._session(user) as session:
            await session.mailbox_set.add_mailbox(mailbox)

    async def list_mailboxes(self, *, user: str | None = None) -> list[str]:
        async with self._session(user) as session:
            tree = await session.mailbox_set.list_mailboxes()
            return [entry.name for entry in tree.list()]

    async def deliver(
        self,
        raw: bytes,
        mailbox: str = "INBOX",
        *,
        flags: Iterable[str] = (),
        when: dt.datetime | None = None,
        user: str | None = None,
    ) -> int:
        """Store *raw* in *mailbox* like an IMAP ``APPEND`` from another client.

        Returns the new UID. A client IDLE-ing on that mailbox gets
        ``* n EXISTS`` (and ``* n RECENT``) right away. *raw* is stored
        byte-for-byte, malformed or not.
        """
        append = AppendMessage(
            raw,
            when or dt.datetime.now(dt.UTC),
            frozenset(Flag(f) for f in flags),
        )
        async with self._session(user) as session:
            append_uid, _ = await session.append_messages(mailbox, [append])
        (uid,) = append_uid.uids
        return uid

    async def messages(self, mailbox: str = "INBOX", *, user: str | None = None) -> list[StoredMessage]:
        """All messages in *mailbox*, in UID order, with their permanent flags.

        Reading here never changes flags (unlike a non-PEEK FETCH).
        """
        mbx = await self._mailbox(mailbox, user)
        result: list[StoredMessage] = []
        async for msg in mbx.messages():
            loaded = await msg.load_content(FetchRequirement.CONTENT)
            result.append(
                StoredMessage(
                    uid=msg.uid,
                    flags=frozenset(f.value.decode("ascii") for f in msg.permanent_flags),
                    raw=bytes(loaded),
                    internal_date=msg.internal_date,
                )
            )
        return sorted(result, key=lambda m: m.uid)

    async def set_flags(
        self,
        uid: int,
        flags: Iterable[str],
        mailbox: str = "INBOX",
        *,
        mode: FlagOp = FlagOp.REPLACE,
        user: str | None = None,
    ) -> None:
        """Change a message's flags as another client's ``UID STORE`` would."""
        mbx = await self._mailbox(mailbox, user)
        async for msg in mbx.messages():
            if msg.uid == uid:
                await mbx.update(uid, msg, frozenset(Flag(f) for f in flags), mode)
                return
        raise KeyError(f"no UID {uid} in {mailbox!r}")

    async def expunge(self, *uids: int, mailbox: str = "INBOX", user: str | None = None) -> None:
        """Remove messages (leaving UID gaps), as another client's EXPUNGE would."""
        mbx = await self._mailbox(mailbox, user)
        await mbx.delete(uids)

    async def uidvalidity(self, mailbox: str = "INBOX", *, user: str | None = None) -> int:
        return (await self._mailbox(mailbox, user)).uid_validity

    async def uidnext(self, mailbox: str = "INBOX", *, user: str | None = None) -> int:
        snapshot: MailboxSnapshot = await (await self._mailbox(mailbox, user)).snapshot()
        return snapshot.next_uid

    async def change_uidvalidity(
        self, mailbox: str = "INBOX", *, keep_messages: bool = True, user: str | None = None
    ) -> int:
        """Give *mailbox* a new UIDVALIDITY, as a server rebuilding its index does.

        pymap has no knob for this, so it is done with public mailbox-set
        operations: the mailbox is renamed away (for INBOX this leaves a fresh,
        empty INBOX behind, per RFC 3501), the messages are copied back when
        *keep_messages* is true, and the renamed mailbox is deleted. UIDs then
        restart at pymap's first UID (101), so the same UID numbers may now
        name different messages, which is exactly what a client must handle.

        Connected clients are not told: pymap neither sends ``BYE`` nor a new
        ``UIDVALIDITY`` to sessions that have the mailbox selected, and an IDLE
        on the old mailbox stays silent. Clients learn the new value on their
        next ``SELECT``/``EXAMINE``/``STATUS``; call :meth:`drop_connections`
        too if a test wants them forced to reconnect.

        Returns the new UIDVALIDITY.
        """
        async with self._session(user) as session:
            mailbox_set = session.mailbox_set
            old_validity = (await mailbox_set.get_mailbox(mailbox)).uid_validity
            attempt = 0
            while True:
                attempt += 1
                aside = f"{mailbox}.uidvalidity-reset-{attempt}"
                await mailbox_set.rename_mailbox(mailbox, aside)
                if mailbox.upper() != "INBOX":
                    await mailbox_set.add_mailbox(mailbox)
                new = await mailbox_set.get_mailbox(mailbox)
                old = await mailbox_set.get_mailbox(aside)
                if keep_messages:
                    # copy() keeps flags and order and hands out new UIDs.
                    async for msg in old.messages():
                        await old.copy(msg.uid, new)
                await mailbox_set.delete_mailbox(aside)
                # UIDVALIDITY is 16 bits of wall-clock seconds + 16 random
                # bits, so a fresh mailbox can (1 in 65536) repeat it: again.
                if new.uid_validity != old_validity:
                    return new.uid_validity

    # -- lifecycle ---------------------------------------------------------------

    async def stop(self) -> None:
        self._server.close()
        await self.drop_connections()
        await self._server.wait_closed()


async def _set_user(config: _FakeImapConfig, login: Login, user: str, password: str) -> None:
    hashed = await Passwords(config).hash_password(password)
    # Identity.set() refuses to assign roles unless the caller is an admin; a
    # plain user needs none.
    identity = Identity(user, login, None, frozenset())
    await identity.set(UserMetadata(config, user, password=hashed))


@asynccontextmanager
async def start_imap_server(
    *,
    user: str = IMAP_USER,
    password: str = IMAP_PASSWORD,
    tls: bool = False,
    host: str = LOCALHOST,
) -> AsyncIterator[FakeImapServer]:
    """Run pymap's IMAP server on *host* and a free port for the block.

    The user's INBOX starts empty (pymap's demo data is never loaded) and the
    first appended message gets UID 101 (pymap's dict backend starts there,
    not at 1). *tls* turns on implicit TLS (IMAPS) with :func:`self_signed_cert`.
    """
    # Namespace stands in for pymap's command-line arguments; only these two
    # are read when every other setting is passed explicitly below.
    args = Namespace(passlib_cfg=None, proxy_protocol=None)
    config = _FakeImapConfig(
        args,
        host=host,
        port=0,
        demo_data=False,  # an empty INBOX: the demo messages are opt-in anyway
        demo_user=user,
        demo_password=password,
        # No STARTTLS: aioimaplib cannot use it, and with it advertised pymap
        # would refuse LOGIN on non-loopback connections until TLS is up.
        tls_enabled=False,
        # Given explicitly so pymap does not read CERT_FILE/KEY_FILE from the
        # environment; unused while tls_enabled is False.
        ssl_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        # Passwords kept in clear text and checked inline: the default
        # PBKDF2 with 500 000 rounds in a thread pool costs ~0.3 s per LOGIN.
        hash_context=Cleartext(),
        cpu_subsystem=Subsystem.for_asyncio(),
        invalid_user_sleep=0.0,  # fail bad logins at once
        reject_dnsbl=False,
    )
    login = Login(config)
    await _set_user(config, login, user, password)

    imap_server = IMAPServer(login, config)
    # pymap's IMAPService wraps the connection callback in a PROXY-protocol
    # reader that also builds the per-connection SocketInfo pymap needs; with
    # the no-op protocol it reads nothing from the socket.
    callback = ProxyProtocolReader(config.proxy_protocol).get_callback(imap_server)
    writers: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Remember writers so drop_connections()/stop() can cut clients off;
        # IMAPService itself keeps no handle on them.
        writers.add(writer)
        await callback(reader, writer)

    cert = self_signed_cert() if tls else None
    # We start the listener ourselves instead of IMAPService.start(): it binds
    # the configured port and keeps the Server object private, and we want
    # port 0 plus the real port back.
    server = await asyncio.start_server(
        on_connect,
        host=host,
        port=0,
        ssl=cert.server_context() if cert is not None else None,
    )
    port = server.sockets[0].getsockname()[1]
    fake = FakeImapServer(
        host=host,
        port=port,
        user=user,
        password=password,
        tls=tls,
        cert=cert,
        config=config,
        login=login,
        server=server,
        writers=writers,
    )
    try:
        yield fake
    finally:
        await fake.stop()


# --------------------------------------------------------------------------
# SMTP: aiosmtpd Controller
# --------------------------------------------------------------------------


class SmtpMode(enum.StrEnum):
    """How the fake SMTP server handles TLS."""

    #: Plaintext only; ``STARTTLS`` is *not* offered in the EHLO reply. A
    #: client set to ``start_tls=True`` must refuse to send here.
    PLAIN = "plain"
    #: ``STARTTLS`` offered (self-signed cert) and, by default, required
    #: before ``MAIL`` (``530`` otherwise), so a recorded message proves the
    #: client upgraded.
    STARTTLS = "starttls"
    #: Implicit TLS from the first byte (SMTPS, usually port 465).
    SMTPS = "smtps"


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted SMTP transaction."""

    #: Envelope sender; ``""`` for the null sender ``MAIL FROM:<>``.
    mail_from: str
    rcpt_tos: tuple[str, ...]
    #: The DATA payload as received (CRLF line ends, dot-stuffing removed).
    raw: bytes
    message: EmailMessage
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    #: True if the transaction ran over TLS (implicit or after STARTTLS).
    tls: bool
    #: The user name that authenticated, or None without AUTH.
    auth_user: str | None
    peer: tuple[str, int] | None


class _RecordingHandler:
    """aiosmtpd handler: accepts everything and records it.

    aiosmtpd's Controller runs the server on its own thread and event loop,
    so records are guarded by a lock and waiters on the test's loop are woken
    with call_soon_threadsafe.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[ReceivedMail] = []
        self.reject_recipients: set[str] = set()
        self._waiter_loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        self._waiter_loop = loop
        self._arrived = asyncio.Event()
        return self._arrived

    async def handle_RCPT(  # aiosmtpd looks hooks up by this exact name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self.reject_recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd looks hooks up by this exact name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content
        if raw is None:  # only when decode_data=True, which we never set
            content = envelope.content
            raw = content.encode("utf-8") if isinstance(content, str) else content or b""
        transport = server.transport
        # The transport after STARTTLS, or the listening TLS transport under
        # SMTPS, exposes an ssl_object; a plaintext one does not.
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        auth_user: str | None = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            auth_user = session.auth_data.login.decode("utf-8", "replace")
        record = ReceivedMail(
            # aiosmtpd keeps MAIL FROM:<> as the string "<>"; normalise the
            # null sender to "" so tests can check `not mail.mail_from`.
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            message=_parse(raw),
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            tls=tls,
            auth_user=auth_user,
            peer=session.peer if isinstance(session.peer, tuple) else None,
        )
        with self.lock:
            self.received.append(record)
        loop, arrived = self._waiter_loop, self._arrived
        if loop is not None and arrived is not None and not loop.is_closed():
            loop.call_soon_threadsafe(arrived.set)
        return "250 Message accepted for delivery"


class _EphemeralPortController(Controller):
    """Controller that may bind port 0 and stops without leaking sockets.

    ``Controller.start()`` connects to ``self.port`` once to force aiosmtpd's
    lazy SMTP set-up; with port 0 that would fail, so learn the real port from
    the bound socket first (the server is bound before start() triggers it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every SMTP protocol object created, i.e. one per connection.
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    def factory(self) -> SMTP:
        # SMTP() warns "Requiring AUTH while not requiring TLS" whenever
        # auth_required is set without auth_require_tls, which we do on
        # purpose (PLAIN mode; SMTPS, where aiosmtpd does not count implicit
        # TLS as TLS). Runs on the server thread once per connection; the
        # filter change is process-global but lasts only for this call.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            smtp = cast(SMTP, super().factory())
        self._sessions.add(smtp)
        return smtp

    def stop(self, no_assert: bool = False) -> None:
        # Controller.stop() cancels the tasks and closes the loop, but never
        # closes connections a client left open (or that the server had not
        # yet noticed were gone, e.g. after a failed TLS handshake); their
        # sockets then die in the GC with "ResourceWarning: unclosed". Close
        # them on the server's own thread first.
        if self.loop.is_running():
            closed = threading.Event()

            def close_all() -> None:
                for smtp in list(self._sessions):
                    if smtp.transport is not None:
                        smtp.transport.close()
                closed.set()

            self.loop.call_soon_threadsafe(close_all)
            closed.wait(timeout=2.0)
        super().stop(no_assert)


class FakeSmtpServer:
    """A running aiosmtpd server; create it with :func:`start_smtp_server`."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        mode: SmtpMode,
        username: str | None,
        password: str | None,
        cert: SelfSignedCert | None,
        handler: _RecordingHandler,
        arrived: asyncio.Event,
    ) -> None:
        self.host = host
        self.port = port
        self.mode = mode
        #: Credentials that AUTH accepts; None means AUTH is off.
        self.username = username
        self.password = password
        #: The certificate served in STARTTLS/SMTPS modes, None in PLAIN.
        self.cert = cert
        self._handler = handler
        self._arrived = arrived

    @property
    def messages(self) -> list[ReceivedMail]:
        """A snapshot of everything accepted so far, oldest first."""
        with self._handler.lock:
            return list(self._handler.received)

    @property
    def reject_recipients(self) -> set[str]:
        """Lower-case addresses answered with ``550`` at ``RCPT TO``; mutable."""
        return self._handler.reject_recipients

    def clear(self) -> None:
        with self._handler.lock:
            self._handler.received.clear()

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this server's certificate (None in PLAIN)."""
        return self.cert.client_context() if self.cert is not None else None

    # A built-in default timeout (hence noqa) so a test that forgets one fails
    # instead of hanging the whole session.
    async def wait_for_messages(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[ReceivedMail]:
        """Wait until at least *count* messages were accepted; return them all.

        Raises TimeoutError (with what did arrive) after *timeout* seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Clear before re-checking so a message recorded in between still
            # sets the event and is not missed.
            self._arrived.clear()
            got = self.messages
            if len(got) >= count:
                return got
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"expected {count} message(s) within {timeout}s, got {len(got)}")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass


@asynccontextmanager
async def start_smtp_server(
    mode: SmtpMode | str = SmtpMode.PLAIN,
    *,
    username: str | None = None,
    password: str | None = None,
    require_starttls: bool = True,
    host: str = LOCALHOST,
) -> AsyncIterator[FakeSmtpServer]:
    """Run an aiosmtpd server on *host* and a free port for the block.

    With *username*/*password* the server offers ``AUTH PLAIN LOGIN`` and
    requires it before ``MAIL``. In STARTTLS mode AUTH is only offered after
    the upgrade (aiosmtpd's ``auth_require_tls``); in PLAIN mode it is offered
    in the clear, since the fake exists to test clients, not to be safe. In
    SMTPS mode aiosmtpd would never offer AUTH with ``auth_require_tls`` on
    (it only counts STARTTLS as TLS), so it is off there.
    """
    mode = SmtpMode(mode)
    if (username is None) != (password is None):
        raise ValueError("give both username and password, or neither")
    handler = _RecordingHandler()
    arrived = handler.bind_loop(asyncio.get_running_loop())
    cert = self_signed_cert() if mode is not SmtpMode.PLAIN else None
    implicit_tls: ssl.SSLContext | None = None

    smtp_kwargs: dict[str, Any] = {
        # Fixed name: SMTP() would otherwise call socket.getfqdn().
        "server_hostname": "smtp.test",
        # Records raw bytes; decode_data=True would hand us str.
        "decode_data": False,
    }
    if mode is SmtpMode.STARTTLS and cert is not None:
        smtp_kwargs["tls_context"] = cert.server_context()
        smtp_kwargs["require_starttls"] = require_starttls
    elif mode is SmtpMode.SMTPS and cert is not None:
        implicit_tls = cert.server_context()
    if username is not None and password is not None:
        expected = LoginPassword(username.encode("utf-8"), password.encode("utf-8"))

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
        ) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and auth_data == expected
            # handled=False: aiosmtpd then answers a failure with "535 5.7.8".
            # The default (True) means "the authenticator already replied",
            # so the client would wait for a response that never comes.
            # auth_data is kept on the session; handle_DATA reads it back.
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

        smtp_kwargs["authenticator"] = authenticator
        smtp_kwargs["auth_required"] = True
        smtp_kwargs["auth_require_tls"] = mode is SmtpMode.STARTTLS

    controller = _EphemeralPortController(
        handler,
        hostname=host,
        port=0,
        ssl_context=implicit_tls,
        **smtp_kwargs,
    )
    # start()/stop() block on a thread handshake; keep the test loop free.
    await asyncio.to_thread(controller.start)
    try:
        yield FakeSmtpServer(
            host=host,
            port=controller.port,
            mode=mode,
            username=username,
            password=password,
            cert=cert,
            handler=handler,
            arrived=arrived,
        )
    finally:
        await asyncio.to_thread(controller.stop)


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest_asyncio.fixture
async def imap_server() -> AsyncIterator[FakeImapServer]:
    """A fresh plaintext pymap server with an empty INBOX for each test."""
    async with start_imap_server() as server:
        yield server


@pytest_asyncio.fixture
async def smtp_server(request: pytest.FixtureRequest) -> AsyncIterator[FakeSmtpServer]:
    """A fresh recording SMTP server for each test.

    PLAIN mode without AUTH by default; parametrise indirectly with a
    :class:`SmtpMode` or a dict of :func:`start_smtp_server` arguments::

        @pytest.mark.parametrize("smtp_server", [SmtpMode.SMTPS], indirect=True)
    """
    param: object = getattr(request, "param", SmtpMode.PLAIN)
    kwargs: dict[str, Any] = dict(param) if isinstance(param, dict) else {"mode": param}
    async with start_smtp_server(**kwargs) as server:
        yield server
