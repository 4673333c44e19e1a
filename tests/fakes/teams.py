"""A fake of the Microsoft Bot Framework services, on 127.0.0.1, for Teams tests.

It lets botbuilder's *real* ``CloudAdapter`` + ``ConfigurationBotFrameworkAuthentication``
(real JWT validation, real MSAL client-credentials flow, real msrest connector client)
run without the internet. One ``FakeTeams`` serves, on random free ports:

* inbound auth (what Bot Framework uses to sign the activities it POSTs to the bot):
  an OpenID metadata document and a JWKS with a locally generated RSA key whose entry
  carries ``endorsements`` (the channel ids, e.g. ``"msteams"``), plus
  :meth:`FakeTeams.mint_token` to sign tokens the validator will accept or refuse;
* the outbound token service (what the bot asks for a token before calling the
  connector): an MSAL-compatible tenant discovery document and a
  ``/{tenant}/oauth2/v2.0/token`` client-credentials endpoint, over HTTPS with a
  throw-away CA (see "Outbound token" below for why HTTPS);
* the Bot Connector service (the ``serviceUrl``): send, reply, update, delete, create
  conversation, members, hosted attachments; every call is recorded with its decoded
  conversation id; fault injection (429 with Retry-After, 412, 502, 504, 500, ...);
  optional enforcement of Teams' per-conversation rate limits.

Module helpers build realistic Teams activities (personal, groupChat, channel thread,
mentions, attachments, conversationUpdate) and POST them with a bearer token.

Why a thread: botbuilder 4.17 does two *synchronous* ``requests`` calls on the event
loop thread: the OpenID/JWKS refresh in ``JwtTokenExtractor`` (``_OpenIdMetadata._refresh``)
and the MSAL token fetch in ``AppCredentials.signed_session`` (msrest calls it from its
async pipeline without an executor). If the fake served on the test's event loop, those
calls would block the very loop that must answer them: a deadlock (``requests`` has no
default timeout). So the fake runs its own loop on a daemon thread; its state is guarded
by a lock, and tests read it with copies or ``await fake.wait_for_activities(...)``.

Pointing botbuilder at the fake
-------------------------------
``ConfigurationBotFrameworkAuthentication(config, credentials_factory=...)`` reads these
attributes with ``getattr(config, NAME, None)`` (botbuilder/integration/aiohttp/
configuration_bot_framework_authentication.py). If *any* of the ``TO_*``/``OAUTH_URL``/
``CALLER_ID`` ones is set, ``BotFrameworkAuthenticationFactory`` builds the
"parameterized" authentication, which uses only the configured URLs; otherwise it uses
the public-cloud constants (login.botframework.com, login.microsoftonline.com).
:meth:`FakeTeams.bot_config` returns an object with all of them set:

* ``TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL`` = :attr:`FakeTeams.openid_metadata_url`.
  Note the spelling: ``OPENID``, not ``OPEN_ID``. A misspelled name is silently ignored
  (getattr default ``None``) and the validator then calls ``requests.get(None)``.
  ``AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL`` is the public
  default and is *not* consulted on this path; patching it is unnecessary.
* ``TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL`` = :attr:`FakeTeams.emulator_openid_metadata_url`
  (used when a token's ``iss`` is one of the Azure AD issuers the Emulator uses; set it
  so that such a token is validated locally too instead of reaching Microsoft).
* ``TO_BOT_FROM_CHANNEL_TOKEN_ISSUER`` = ``"https://api.botframework.com"`` (the only
  issuer accepted; a ``None`` here would make every token fail).
* ``TO_CHANNEL_FROM_BOT_LOGIN_URL`` = :attr:`FakeTeams.login_url`,
  ``TO_CHANNEL_FROM_BOT_OAUTH_SCOPE`` = ``"https://api.botframework.com"`` (an audience
  string, never contacted), ``OAUTH_URL`` = the fake (user-token service; not used
  unless OAuth prompts are), ``VALIDATE_AUTHORITY`` = ``False``.
* ``APP_ID``, ``APP_PASSWORD``, ``APP_TYPE`` ("MultiTenant"; "SingleTenant" also needs
  ``APP_TENANTID``).

The OpenID URLs contain a random nonce because ``JwtTokenExtractor.metadataCache`` is a
process-wide dict keyed by URL that keeps keys for a day: without the nonce a later fake
reusing a port would be validated against an earlier fake's keys. For the same reason,
call :meth:`FakeTeams.add_signing_key` before the first validation.

Outbound token: why a credentials factory is needed
---------------------------------------------------
With the stock factory, a login URL that is not under login.microsoftonline.com becomes
``_PrivateCloudAppCredentials`` -> ``MicrosoftAppCredentials`` -> MSAL
``ConfidentialClientApplication(client_id, secret, authority=<login url>)``. botbuilder
keeps the ``validate_authority`` flag on the credentials object but never passes it (nor
``instance_discovery``) to MSAL, so:

* an ``http://127.0.0.1`` login URL makes MSAL raise ``ValueError`` (MSAL only accepts
  https authorities);
* an ``https://127.0.0.1`` one makes MSAL run *instance discovery against
  https://login.microsoftonline.com/common/discovery/instance* before anything else:
  an internet call that no configuration setting can turn off.

:class:`LoopbackCredentialFactory` is the smallest workaround: a
``PasswordServiceClientCredentialFactory`` subclass (same app-id checks) whose
credentials are the real ``MicrosoftAppCredentials`` (real token acquisition and caching
logic) with the MSAL app pre-built with ``instance_discovery=False``,
``validate_authority=False``, ``azure_region=False`` and an HTTP client that trusts only
the fake's CA and ignores proxy/CA environment variables. It refuses non-loopback login
URLs. Our adapter should therefore accept an optional ``ServiceClientCredentialsFactory``
and pass it to ``ConfigurationBotFrameworkAuthentication(credentials_factory=...)``.

:func:`loopback_only_network` (enabled by the ``fake_teams`` fixture) blocks and records
any DNS lookup or connection to a non-loopback address, so a test fails loudly instead
of quietly reaching Microsoft.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import ipaddress
import itertools
import json
import math
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import jwt
import pytest
import requests
from aiohttp import web
from botframework.connector.auth import (
    MicrosoftAppCredentials,
    PasswordServiceClientCredentialFactory,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm
from msal import ConfidentialClientApplication

__all__ = [
    "BOT_FRAMEWORK_ISSUER",
    "BOT_FRAMEWORK_SCOPE",
    "DEFAULT_APP_ID",
    "DEFAULT_APP_PASSWORD",
    "DEFAULT_TENANT_ID",
    "TEAMS_LIMITS",
    "BotFrameworkTestConfig",
    "FakeTeams",
    "LoopbackAppCredentials",
    "LoopbackCredentialFactory",
    "PostResult",
    "RecordedCall",
    "TokenRequest",
    "channel_message",
    "conversation_update",
    "fake_teams",
    "file_download_attachment",
    "group_chat_message",
    "inline_image_attachment",
    "loopback_only_network",
    "mention_entity",
    "personal_message",
    "post_activity",
    "start_fake_teams",
]

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
# Audience the bot asks tokens for when calling the connector; MSAL appends "/.default".
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com"
DEFAULT_APP_ID = "5e1f0c2a-7d4b-4c1e-9a53-0b0b0b0b0b07"
DEFAULT_APP_PASSWORD = "fake-teams-client-secret"
DEFAULT_TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_BOT_NAME = "Soul"
# Teams' documented per-bot-per-conversation limits: (max operations, window seconds).
TEAMS_LIMITS: tuple[tuple[int, float], ...] = ((7, 1.0), (60, 30.0), (1800, 3600.0))
# MSAL/Entra convention for the token endpoint under an authority.
_TOKEN_PATH = "/oauth2/v2.0/token"


# --------------------------------------------------------------------------- keys & TLS


@functools.cache
def _rsa_key(slot: str) -> rsa.RSAPrivateKey:
    """One 2048-bit key per slot name, cached per process: generation costs ~50 ms and
    the fakes' URLs are unique anyway, so sharing key material between fakes is safe."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _tls_material() -> tuple[bytes, bytes, bytes]:
    """(CA cert PEM, leaf cert PEM, leaf key PEM) for 127.0.0.1/localhost.

    A separate CA and leaf (rather than one self-signed cert) keep OpenSSL's strict
    verification modes happy: the leaf is a proper end-entity with an IP SAN."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _rsa_key("tls-ca")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "soulgate fake-teams CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = _rsa_key("tls-leaf")
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False)
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        leaf_cert.public_bytes(serialization.Encoding.PEM),
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


# --------------------------------------------------------------------------- network guard


def _is_loopback_host(host: object) -> bool:
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    if text.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only_network() -> Iterator[list[str]]:
    """Refuse DNS lookups and TCP/UDP connections to anything but loopback.

    Yields the list of refused targets ("host:port"). Patches ``socket.getaddrinfo``
    (requests/urllib3, aiohttp's threaded resolver and asyncio all resolve through it)
    and ``socket.socket.connect``/``connect_ex`` (for IP literals that skip DNS, such as
    Azure's IMDS 169.254.169.254). Process-wide while active: fine inside one pytest
    process, nest-safe (restores in LIFO order)."""
    blocked: list[str] = []
    original_getaddrinfo = socket.getaddrinfo
    own_connect = socket.socket.__dict__.get("connect")
    own_connect_ex = socket.socket.__dict__.get("connect_ex")
    base_connect = socket.socket.connect
    base_connect_ex = socket.socket.connect_ex

    def guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback_host(host):
            blocked.append(f"{host}:{port}")
            raise socket.gaierror(socket.EAI_NONAME, f"fake_teams: blocked lookup of {host}")
        return original_getaddrinfo(host, port, *args, **kwargs)

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback_host(address[0]):
            blocked.append(f"{address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"fake_teams: blocked connection to {address!r}")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        _check(sock, address)
        base_connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        _check(sock, address)
        return base_connect_ex(sock, address)

    socket.getaddrinfo = guarded_getaddrinfo
    # setattr: the socket methods are C slots inherited by the Python class; assigning
    # on the class shadows them, deleting the attribute afterwards restores them.
    setattr(socket.socket, "connect", guarded_connect)  # noqa: B010
    setattr(socket.socket, "connect_ex", guarded_connect_ex)  # noqa: B010
    try:
        yield blocked
    finally:
        socket.getaddrinfo = original_getaddrinfo
        for name, own in (("connect", own_connect), ("connect_ex", own_connect_ex)):
            if own is None:
                delattr(socket.socket, name)
            else:
                setattr(socket.socket, name, own)


# --------------------------------------------------------------------------- outbound creds


def _pinned_session(ca_file: str) -> requests.Session:
    """A requests session that trusts only the fake's CA.

    ``trust_env = False`` matters: with it on, requests lets ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE`` override ``session.verify`` and honours ``HTTPS_PROXY``, either of
    which would break (or reroute) calls to 127.0.0.1."""
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_file
    return session


class LoopbackAppCredentials(MicrosoftAppCredentials):
    """botbuilder's own ``MicrosoftAppCredentials`` with a loopback-safe MSAL app.

    ``MicrosoftAppCredentials.get_access_token`` (scope + "/.default", cache lookup,
    ``acquire_token_for_client``, PermissionError on failure) stays as is; we only
    pre-fill ``self.app``, which its private app builder returns when set."""

    app: Any  # the MSAL application (None until the first token request)

    def __init__(
        self,
        app_id: str,
        password: str,
        *,
        authority: str,
        ca_file: str,
        oauth_scope: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(app_id, password, tenant_id, oauth_scope)
        self.oauth_endpoint = authority
        self._ca_file = ca_file

    def get_access_token(self, force_refresh: bool = False) -> str:
        if self.app is None:
            # Built lazily, like botbuilder does: the constructor already performs the
            # (synchronous) tenant discovery request.
            self.app = ConfidentialClientApplication(
                client_id=self.microsoft_app_id,
                client_credential=self.microsoft_app_password,
                authority=self.oauth_endpoint,
                validate_authority=False,
                instance_discovery=False,  # no call to login.microsoftonline.com
                azure_region=False,  # no IMDS region probe, ignore MSAL_FORCE_REGION
                http_client=_pinned_session(self._ca_file),
            )
        token: str = super().get_access_token(force_refresh)
        return token


class LoopbackCredentialFactory(PasswordServiceClientCredentialFactory):
    """Credentials factory for tests: same app-id checks as botbuilder's password
    factory, tokens from the fake over a pinned HTTPS session, never the internet."""

    def __init__(
        self,
        app_id: str,
        password: str,
        *,
        ca_file: str,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(app_id, password, tenant_id)
        self._ca_file = ca_file

    async def create_credentials(
        self,
        app_id: str,
        oauth_scope: str,
        login_endpoint: str,
        validate_authority: bool,
    ) -> MicrosoftAppCredentials:
        if await self.is_authentication_disabled():
            return MicrosoftAppCredentials.empty()
        if not await self.is_valid_app_id(app_id):
            # Same message as botbuilder's factory, so behaviour matches production.
            raise Exception("Invalid app_id")
        parts = urlsplit(login_endpoint or "")
        if parts.scheme != "https" or not _is_loopback_host(parts.hostname):
            raise ValueError(
                f"LoopbackCredentialFactory only talks to https://127.0.0.1, got {login_endpoint!r}"
            )
        path = parts.path
        if path.lower().endswith(_TOKEN_PATH):
            path = path[: -len(_TOKEN_PATH)]
        # Single-tenant bots name their tenant; otherwise keep the login URL's tenant
        # segment (botframework.com for multi-tenant bots).
        tenant = self.tenant_id or path.strip("/") or "botframework.com"
        return LoopbackAppCredentials(
            app_id,
            self.password,
            authority=f"https://{parts.netloc}/{tenant}",
            ca_file=self._ca_file,
            oauth_scope=oauth_scope,
            tenant_id=self.tenant_id,
        )


@dataclass
class BotFrameworkTestConfig:
    """The configuration object ``ConfigurationBotFrameworkAuthentication`` reads with
    ``getattr``; attribute names are botbuilder's, spelled exactly."""

    APP_ID: str
    APP_PASSWORD: str
    TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL: str
    TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL: str
    TO_CHANNEL_FROM_BOT_LOGIN_URL: str
    OAUTH_URL: str
    APP_TYPE: str = "MultiTenant"
    APP_TENANTID: str | None = None
    TO_BOT_FROM_CHANNEL_TOKEN_ISSUER: str = BOT_FRAMEWORK_ISSUER
    TO_CHANNEL_FROM_BOT_OAUTH_SCOPE: str = BOT_FRAMEWORK_SCOPE
    VALIDATE_AUTHORITY: bool = False
    CALLER_ID: str | None = None
    CHANNEL_SERVICE: str | None = None


# --------------------------------------------------------------------------- records


def _client_port(request: web.Request) -> int | None:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return int(peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None


@dataclass(frozen=True)
class RecordedCall:
    """One request to the fake connector (accepted or not)."""

    method: str
    # send | reply | update | delete | create_conversation | members | attachment | unknown
    kind: str
    raw_path: str  # as sent, still percent-encoded (";" arrives as %3B)
    conversation_id: str | None  # decoded
    activity_id: str | None  # the replied-to / updated / deleted activity
    body: Any
    authorization: str | None
    status: int
    response_id: str | None
    at: float  # time.monotonic()
    #: the client's TCP port: calls with the same one came over one kept-alive connection
    client_port: int | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def activity(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    @property
    def type(self) -> str | None:
        return self.activity.get("type")

    @property
    def text(self) -> str | None:
        return self.activity.get("text")


@dataclass(frozen=True)
class TokenRequest:
    """One request to the fake token endpoint (client secret not kept)."""

    tenant: str
    grant_type: str | None
    client_id: str | None
    scope: str | None
    secret_ok: bool
    status: int
    form: Mapping[str, str]


@dataclass(frozen=True)
class PostResult:
    status: int
    body: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None
    body: Any
    kinds: frozenset[str] | None


@dataclass
class _Key:
    kid: str
    private_key: rsa.RSAPrivateKey
    endorsements: list[str]


_V3_ROUTE = re.compile(
    r"/v3/conversations(?:/(?P<conv>[^/]+)"
    r"(?:/(?P<sub>activities|members)(?:/(?P<item>[^/]+))?)?)?/?$"
)
_ATTACHMENT_ROUTE = re.compile(r"/v3/attachments/(?P<att>[^/]+)(?:/views/(?P<view>[^/]+))?/?$")


# --------------------------------------------------------------------------- the fake


class FakeTeams:
    """Bot Framework auth, token and connector services on 127.0.0.1 (own thread)."""

    def __init__(
        self,
        *,
        app_id: str = DEFAULT_APP_ID,
        app_password: str = DEFAULT_APP_PASSWORD,
        bot_name: str = DEFAULT_BOT_NAME,
        tenant_id: str = DEFAULT_TENANT_ID,
        channel_id: str = "msteams",
        endorsements: Sequence[str] | None = None,
        require_outbound_token: bool = True,
        enforce_limits: bool = False,
        limits: Sequence[tuple[int, float]] = TEAMS_LIMITS,
        token_lifetime: int = 3599,
    ) -> None:
        self.app_id = app_id
        self.app_password = app_password
        self.bot_name = bot_name
        self.bot_id = f"28:{app_id}"  # how Teams addresses a bot
        self.tenant_id = tenant_id
        self.channel_id = channel_id
        self.require_outbound_token = require_outbound_token
        self.enforce_limits = enforce_limits
        self.limits = tuple(limits)
        self.token_lifetime = token_lifetime
        # Unique per fake: see the module docstring about JwtTokenExtractor.metadataCache.
        self._nonce = secrets.token_hex(6)
        self.primary_kid = f"fake-teams-{self._nonce}"
        self._keys: dict[str, _Key] = {}
        self.add_signing_key(
            self.primary_kid,
            endorsements if endorsements is not None else [channel_id],
            _slot="primary",
        )
        # Members returned by GET /v3/conversations/{id}/members, per decoded id.
        self.members: dict[str, list[dict[str, Any]]] = {}
        self.blocked_connections: list[str] = []

        self._lock = threading.Lock()
        self._calls: list[RecordedCall] = []
        self._token_requests: list[TokenRequest] = []
        self._discovery_requests = 0
        self._issued_tokens: set[str] = set()
        self._faults: list[_Fault] = []
        self._windows: dict[str, deque[float]] = {}
        self._throttled: dict[str, int] = {}
        self._blobs: dict[str, tuple[bytes, str, bool]] = {}
        self._ids = itertools.count(int(time.time() * 1000))

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._tmpdir: str | None = None
        self._http_port = 0
        self._https_port = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeTeams:
        """Bind both listeners and serve on a daemon thread; returns when ready."""
        if self._thread is not None:
            raise RuntimeError("FakeTeams already started")
        self._tmpdir = tempfile.mkdtemp(prefix="fake-teams-")
        ca_pem, cert_pem, key_pem = _tls_material()
        for name, data in (("ca.pem", ca_pem), ("cert.pem", cert_pem), ("key.pem", key_pem)):
            with open(os.path.join(self._tmpdir, name), "wb") as fh:
                fh.write(data)
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(os.path.join(self._tmpdir, "cert.pem"), os.path.join(self._tmpdir, "key.pem"))
        # Bind here (port 0 = the OS picks a free port) so the ports are known before the
        # thread starts and nothing can grab them in between.
        http_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        https_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for sock in (http_sock, https_sock):
            sock.bind(("127.0.0.1", 0))
        self._http_port = http_sock.getsockname()[1]
        self._https_port = https_sock.getsockname()[1]

        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def startup() -> None:
            runner = web.AppRunner(self._build_app(), access_log=None)
            await runner.setup()
            await web.SockSite(runner, http_sock).start()
            await web.SockSite(runner, https_sock, ssl_context=ssl_ctx).start()
            self._runner = runner

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(startup())
            except BaseException as exc:  # surfaced to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-teams", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            http_sock.close()
            https_sock.close()
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> FakeTeams:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- addresses

    @property
    def base_url(self) -> str:
        """Plain-HTTP origin (OpenID, JWKS, connector, files)."""
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def https_base_url(self) -> str:
        """HTTPS origin (the MSAL authority); trust :attr:`ca_file` to call it."""
        return f"https://127.0.0.1:{self._https_port}"

    @property
    def service_url(self) -> str:
        """The ``serviceUrl`` to put in activities; shaped like Teams' regional URLs
        (``https://smba.trafficmanager.net/amer/``), trailing slash included."""
        return f"{self.base_url}/amer/"

    @property
    def openid_metadata_url(self) -> str:
        return f"{self.base_url}/{self._nonce}/v1/.well-known/openidconfiguration"

    @property
    def emulator_openid_metadata_url(self) -> str:
        return f"{self.base_url}/{self._nonce}/emulator/v2.0/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/{self._nonce}/v1/.well-known/keys"

    @property
    def login_url(self) -> str:
        """Value for ``TO_CHANNEL_FROM_BOT_LOGIN_URL`` (multi-tenant shape)."""
        return f"{self.https_base_url}/botframework.com{_TOKEN_PATH}"

    @property
    def ca_file(self) -> str:
        if self._tmpdir is None:
            raise RuntimeError("FakeTeams not started")
        return os.path.join(self._tmpdir, "ca.pem")

    # ----------------------------------------------------------------- botbuilder wiring

    def bot_config(self, **overrides: Any) -> BotFrameworkTestConfig:
        """A configuration object for ``ConfigurationBotFrameworkAuthentication``."""
        values: dict[str, Any] = {
            "APP_ID": self.app_id,
            "APP_PASSWORD": self.app_password,
            "TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL": self.openid_metadata_url,
            "TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL": self.emulator_openid_metadata_url,
            "TO_CHANNEL_FROM_BOT_LOGIN_URL": self.login_url,
            "OAUTH_URL": f"{self.base_url}/oauth",
        }
        values.update(overrides)
        return BotFrameworkTestConfig(**values)

    def credentials_factory(
        self,
        *,
        app_id: str | None = None,
        password: str | None = None,
        tenant_id: str | None = None,
    ) -> LoopbackCredentialFactory:
        return LoopbackCredentialFactory(
            self.app_id if app_id is None else app_id,
            self.app_password if password is None else password,
            ca_file=self.ca_file,
            tenant_id=tenant_id,
        )

    # ----------------------------------------------------------------- inbound tokens

    def add_signing_key(self, kid: str, endorsements: Iterable[str], *, _slot: str | None = None) -> str:
        """Publish another key in the JWKS (e.g. one not endorsed for "msteams").
        Call it before the bot validates its first token (botbuilder caches the JWKS)."""
        self._keys[kid] = _Key(kid, _rsa_key(_slot or f"extra:{kid}"), list(endorsements))
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key in self._keys.values():
            jwk = RSAAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
            jwk.update({"kid": key.kid, "x5t": key.kid, "use": "sig", "endorsements": key.endorsements})
            keys.append(jwk)
        return {"keys": keys}

    def mint_token(
        self,
        *,
        audience: str | None = None,
        issuer: str = BOT_FRAMEWORK_ISSUER,
        service_url: str | None = None,
        expires_in: float = 3600,
        kid: str | None = None,
        include_kid: bool = True,
        untrusted_key: bool = False,
        omit_claims: Iterable[str] = (),
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A Bot Framework -> bot token, signed RS256 like the real ones.

        Defaults give a valid token for this fake's app and service URL. Bad variants:
        ``audience="other"``, ``issuer="https://evil.example"``, ``expires_in=-600``
        (botbuilder allows 300 s of clock skew, so -60 is still accepted),
        ``kid="unknown"`` (header names a key that is not in the JWKS; signed with the
        primary key), ``untrusted_key=True`` (known kid, signed by a key not in the JWKS),
        ``include_kid=False``, ``omit_claims=("serviceurl",)``.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "serviceurl": service_url if service_url is not None else self.service_url,
            "nbf": now - 5,
            "exp": now + int(expires_in),
            "iss": issuer,
            "aud": audience if audience is not None else self.app_id,
        }
        claims.update(extra_claims or {})
        for name in omit_claims:
            claims.pop(name, None)
        kid = self.primary_kid if kid is None else kid
        known = self._keys.get(kid)
        if untrusted_key:
            signer = _rsa_key("untrusted")
        else:
            signer = known.private_key if known else self._keys[self.primary_kid].private_key
        headers: dict[str, Any] = {"typ": "JWT", "x5t": kid}
        if include_kid:
            headers["kid"] = kid
        return jwt.encode(claims, signer, algorithm="RS256", headers=headers)

    async def post_activity(
        self,
        url: str,
        activity: Mapping[str, Any],
        *,
        token: str | None = None,
        authorization: str | None = None,
        request_timeout: float = 30.0,
    ) -> PostResult:
        """POST like Bot Framework does. Without ``token``/``authorization`` a valid
        token for the activity's ``serviceUrl`` is minted."""
        if token is None and authorization is None:
            token = self.mint_token(service_url=activity.get("serviceUrl"))
        return await post_activity(
            url, activity, token=token, authorization=authorization, request_timeout=request_timeout
        )

    # activity builders bound to this fake (service URL, bot id/name, tenant)
    def personal_message(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return personal_message(text, **self._builder_defaults(kwargs))

    def group_chat_message(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return group_chat_message(text, **self._builder_defaults(kwargs))

    def channel_message(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return channel_message(text, **self._builder_defaults(kwargs))

    def conversation_update(self, **kwargs: Any) -> dict[str, Any]:
        return conversation_update(**self._builder_defaults(kwargs))

    def _builder_defaults(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("service_url", self.service_url)
        kwargs.setdefault("bot_app_id", self.app_id)
        kwargs.setdefault("bot_name", self.bot_name)
        kwargs.setdefault("tenant_id", self.tenant_id)
        return kwargs

    # ----------------------------------------------------------------- hosted content

    def host_attachment(self, data: bytes, content_type: str = "image/png") -> str:
        """Bytes served at ``{serviceUrl}v3/attachments/{id}/views/original``; like
        Teams' inline images, fetching them needs the bot's bearer token."""
        att_id = f"0-eus-d1-{secrets.token_hex(16)}"
        with self._lock:
            self._blobs[att_id] = (data, content_type, True)
        return f"{self.service_url}v3/attachments/{att_id}/views/original"

    def host_file(self, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Bytes at a pre-authenticated URL, like a Teams file's ``downloadUrl``."""
        file_id = secrets.token_hex(16)
        with self._lock:
            self._blobs[file_id] = (data, content_type, False)
        return f"{self.base_url}/files/{file_id}?tempauth={secrets.token_urlsafe(12)}"

    # ----------------------------------------------------------------- inspection

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    @property
    def activities(self) -> list[RecordedCall]:
        """Accepted send/reply/update calls (the bot's visible output)."""
        return [c for c in self.calls if c.ok and c.kind in ("send", "reply", "update")]

    def activities_in(self, conversation_id: str) -> list[RecordedCall]:
        return [c for c in self.activities if c.conversation_id == conversation_id]

    @property
    def token_requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._token_requests)

    @property
    def tenant_discovery_requests(self) -> int:
        """How many times MSAL fetched the authority's OpenID document (once per MSAL
        application, i.e. once per credentials object)."""
        with self._lock:
            return self._discovery_requests

    @property
    def throttled(self) -> dict[str, int]:
        """429s produced by limit enforcement, per conversation id."""
        with self._lock:
            return dict(self._throttled)

    async def wait_for_activities(
        self,
        count: int = 1,
        *,
        conversation_id: str | None = None,
        within: float = 5.0,
    ) -> list[RecordedCall]:
        """Poll until ``count`` accepted activities were recorded (optionally in one
        conversation); returns them. Raises TimeoutError listing what was seen."""
        deadline = time.monotonic() + within
        while True:
            found = self.activities
            if conversation_id is not None:
                found = [c for c in found if c.conversation_id == conversation_id]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                seen = [(c.method, c.kind, c.conversation_id, c.status) for c in self.calls]
                raise TimeoutError(f"expected {count} activities, got {len(found)}; calls={seen}")
            await asyncio.sleep(0.01)

    def reset(self) -> None:
        """Forget recorded calls, pending faults and rate windows (tokens stay valid)."""
        with self._lock:
            self._calls.clear()
            self._token_requests.clear()
            self._discovery_requests = 0
            self._faults.clear()
            self._windows.clear()
            self._throttled.clear()

    # ----------------------------------------------------------------- fault injection

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        body: Any = None,
        kinds: Iterable[str] | None = None,
    ) -> None:
        """Answer the next ``times`` connector calls (of ``kinds``, default any) with
        ``status``. 429 gets ``Retry-After: 1`` unless ``retry_after`` says otherwise."""
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(_Fault(status, times, retry_after, body, frozenset(kinds) if kinds else None))

    def revoke_tokens(self) -> None:
        """Make every token issued so far unacceptable to the connector (401)."""
        with self._lock:
            self._issued_tokens.clear()

    # ----------------------------------------------------------------- the aiohttp app

    def _build_app(self) -> web.Application:
        app = web.Application()
        nonce = self._nonce
        app.router.add_get(f"/{nonce}/v1/.well-known/openidconfiguration", self._openid)
        app.router.add_get(f"/{nonce}/emulator/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_get(f"/{nonce}/v1/.well-known/keys", self._keys_handler)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._tenant_doc)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/files/{file_id}", self._file)
        app.router.add_route("*", "/{tail:.*}", self._connector)
        return app

    async def _openid(self, request: web.Request) -> web.Response:
        # Only jwks_uri is read by botbuilder; the rest mirrors the real document and
        # deliberately points at loopback only.
        return web.json_response(
            {
                "issuer": BOT_FRAMEWORK_ISSUER,
                "authorization_endpoint": f"{self.base_url}/v1/auth",
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _keys_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _tenant_doc(self, request: web.Request) -> web.Response:
        # MSAL's tenant discovery (authority + /v2.0/.well-known/openid-configuration).
        # It requires https endpoints, hence the HTTPS listener.
        tenant = request.match_info["tenant"]
        origin = self.https_base_url
        with self._lock:
            self._discovery_requests += 1
        return web.json_response(
            {
                "issuer": f"{origin}/{tenant}/v2.0",
                "authorization_endpoint": f"{origin}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{origin}/{tenant}{_TOKEN_PATH}",
                "jwks_uri": f"{origin}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant = form.get("grant_type")
        client_id = form.get("client_id")
        scope = form.get("scope")
        secret_ok = secrets.compare_digest(form.get("client_secret", "").encode(), self.app_password.encode())
        status, payload = 200, {}
        if grant != "client_credentials":
            status, payload = 400, _aad_error("unsupported_grant_type", 70003, grant)
        elif client_id != self.app_id:
            status, payload = 400, _aad_error("unauthorized_client", 700016, client_id)
        elif not secret_ok:
            status, payload = 401, _aad_error("invalid_client", 7000215, "bad secret")
        elif scope != f"{BOT_FRAMEWORK_SCOPE}/.default":
            status, payload = 400, _aad_error("invalid_scope", 1002012, scope)
        else:
            token = f"fake-teams-access-{secrets.token_urlsafe(24)}"
            payload = {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        redacted = {k: ("***" if k == "client_secret" else v) for k, v in form.items()}
        with self._lock:
            if status == 200:
                self._issued_tokens.add(payload["access_token"])
            self._token_requests.append(
                TokenRequest(tenant, grant, client_id, scope, secret_ok, status, redacted)
            )
        return web.json_response(payload, status=status)

    async def _file(self, request: web.Request) -> web.Response:
        with self._lock:
            blob = self._blobs.get(request.match_info["file_id"])
        if blob is None or blob[2]:
            return web.Response(status=404)
        return web.Response(body=blob[0], content_type=blob[1])

    async def _connector(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        method = request.method
        auth = request.headers.get("Authorization")
        body: Any = None
        text = await request.text()
        if text:
            try:
                body = json.loads(text)
            except ValueError:
                body = text

        kind, conv, item = "unknown", None, None
        att = _ATTACHMENT_ROUTE.search(raw_path)
        route = _V3_ROUTE.search(raw_path)
        if att:
            kind, item = "attachment", unquote(att["att"])
        elif route:
            conv = unquote(route["conv"]) if route["conv"] else None
            item = unquote(route["item"]) if route["item"] else None
            sub = route["sub"]
            kind = {
                ("POST", None): "create_conversation",
                ("POST", "activities"): "reply" if item else "send",
                ("PUT", "activities"): "update",
                ("DELETE", "activities"): "delete",
                ("GET", "members"): "members",
            }.get((method, sub), "unknown")
            if kind == "create_conversation" and conv is not None:
                kind = "unknown"
            if kind in ("update", "delete") and item is None:
                kind = "unknown"

        def finish(
            status: int,
            payload: Any = None,
            *,
            response_id: str | None = None,
            headers: Mapping[str, str] | None = None,
            raw: bytes | None = None,
            content_type: str = "application/json",
        ) -> web.Response:
            call = RecordedCall(
                method,
                kind,
                raw_path,
                conv,
                item,
                body,
                auth,
                status,
                response_id,
                time.monotonic(),
                _client_port(request),
            )
            with self._lock:
                self._calls.append(call)
            if raw is not None:
                return web.Response(status=status, body=raw, content_type=content_type)
            if payload is None:
                return web.Response(status=status, headers=headers)
            return web.json_response(payload, status=status, headers=headers)

        if kind == "unknown":
            return finish(404, _bf_error("NotFound", f"no fake route for {method} {raw_path}"))

        # 1. authentication, as the real connector does before anything else
        if self.require_outbound_token:
            token = auth[7:] if auth and auth.startswith("Bearer ") else None
            with self._lock:
                known = token is not None and token in self._issued_tokens
            if not known:
                return finish(401, {"message": "Authorization has been denied for this request."})

        # 2. injected faults
        fault = self._take_fault(kind)
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = _fmt_seconds(fault.retry_after)
            payload = (
                fault.body
                if fault.body is not None
                else _bf_error(_FAULT_CODES.get(fault.status, "ServiceError"), f"injected {fault.status}")
            )
            return finish(fault.status, payload, headers=headers)

        # 3. Teams' per-conversation rate limits
        if self.enforce_limits and conv is not None and kind != "members":
            wait = self._rate_check(conv)
            if wait is not None:
                return finish(
                    429,
                    _bf_error("TooManyRequests", "rate limit exceeded"),
                    headers={"Retry-After": _fmt_seconds(wait)},
                )

        # 4. the operation itself
        if kind == "attachment":
            with self._lock:
                blob = self._blobs.get(item or "")
            if blob is None:
                return finish(404, _bf_error("NotFound", "unknown attachment"))
            return finish(200, raw=blob[0], content_type=blob[1])
        if kind == "members":
            members = self.members.get(conv or "", [])
            if item is None:
                return finish(200, members)
            for member in members:
                if member.get("id") == item or member.get("aadObjectId") == item:
                    return finish(200, member)
            return finish(404, _bf_error("MemberNotFoundInConversation", "no such member"))
        if kind in ("send", "reply", "update") and not isinstance(body, dict):
            return finish(400, _bf_error("BadArgument", "activity body must be JSON"))
        if kind == "delete":
            return finish(200)
        if kind == "update":
            return finish(200, {"id": item}, response_id=item)
        new_id = str(next(self._ids))
        if kind == "create_conversation":
            conv_id = f"a:fake-{secrets.token_hex(8)}"
            payload = {"id": conv_id, "activityId": new_id, "serviceUrl": self.service_url}
            return finish(201, payload, response_id=conv_id)
        return finish(201, {"id": new_id}, response_id=new_id)

    def _take_fault(self, kind: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.kinds is None or kind in fault.kinds):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _rate_check(self, conversation_id: str) -> float | None:
        """Sliding windows keyed by the full decoded conversation id (a channel thread's
        ``;messageid=`` suffix makes it its own key). Refused calls are not counted.
        Returns seconds to wait when over a limit, else records the call."""
        now = time.monotonic()
        longest = max(window for _, window in self.limits)
        with self._lock:
            stamps = self._windows.setdefault(conversation_id, deque())
            while stamps and now - stamps[0] >= longest:
                stamps.popleft()
            for limit, window in self.limits:
                recent = [t for t in stamps if now - t < window]
                if len(recent) >= limit:
                    self._throttled[conversation_id] = self._throttled.get(conversation_id, 0) + 1
                    return max(0.001, recent[-limit] + window - now)
            stamps.append(now)
        return None


_FAULT_CODES = {
    429: "TooManyRequests",
    412: "PreconditionFailed",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def _bf_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _aad_error(error: str, code: int, detail: object) -> dict[str, Any]:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: fake-teams refused ({detail!r}).",
        "error_codes": [code],
    }


def _fmt_seconds(seconds: float) -> str:
    # Retry-After is whole seconds on the wire.
    return str(max(1, math.ceil(seconds)))


# --------------------------------------------------------------------------- activities


def mention_entity(bot_app_id: str, bot_name: str = DEFAULT_BOT_NAME) -> dict[str, Any]:
    """The entity Teams attaches when the bot is @mentioned; its ``text`` is the exact
    substring of the message text to strip."""
    return {
        "type": "mention",
        "text": f"<at>{bot_name}</at>",
        "mentioned": {"id": f"28:{bot_app_id}", "name": bot_name},
    }


def inline_image_attachment(content_url: str) -> dict[str, Any]:
    """A pasted image as Teams delivers it in chats (fetching needs the bot token)."""
    return {"contentType": "image/*", "contentUrl": content_url}


def file_download_attachment(
    name: str,
    download_url: str,
    *,
    file_type: str | None = None,
    unique_id: str | None = None,
) -> dict[str, Any]:
    """A file shared with the bot in a personal chat (``downloadUrl`` is pre-authed)."""
    return {
        "contentType": "application/vnd.microsoft.teams.file.download.info",
        "contentUrl": f"https://contoso-my.sharepoint.com/personal/user/Documents/{name}",
        "name": name,
        "content": {
            "downloadUrl": download_url,
            "uniqueId": unique_id or str(uuid.uuid4()),
            "fileType": file_type or name.rsplit(".", 1)[-1],
        },
    }


def _base_activity(
    *,
    activity_type: str,
    service_url: str,
    bot_app_id: str,
    bot_name: str,
    tenant_id: str,
    conversation: dict[str, Any],
    channel_data: dict[str, Any],
    user_id: str,
    user_name: str,
    user_aad_id: str,
    activity_id: str | None,
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "type": activity_type,
        "id": activity_id or str(int(now.timestamp() * 1000)),
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "localTimestamp": now.isoformat(),
        "localTimezone": "Etc/UTC",
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": user_id, "name": user_name, "aadObjectId": user_aad_id},
        "conversation": conversation,
        "recipient": {"id": f"28:{bot_app_id}", "name": bot_name},
        "channelData": channel_data,
        "locale": "en-US",
    }


def _message(
    text: str,
    base: dict[str, Any],
    *,
    mention: bool,
    bot_app_id: str,
    bot_name: str,
    attachments: Sequence[Mapping[str, Any]],
    html: bool,
) -> dict[str, Any]:
    entities: list[dict[str, Any]] = [
        {
            "type": "clientInfo",
            "locale": "en-US",
            "country": "US",
            "platform": "Web",
            "timezone": "Etc/UTC",
        }
    ]
    if mention:
        entity = mention_entity(bot_app_id, bot_name)
        if entity["text"] not in text:
            text = f"{entity['text']} {text}"
        entities.insert(0, entity)
    all_attachments = [dict(a) for a in attachments]
    if html:
        # Teams clients also send the message as HTML; mentions become spans.
        rendered = text.replace(
            f"<at>{bot_name}</at>",
            f'<span itemscope="" itemtype="http://schema.skype.com/Mention" itemid="0">{bot_name}</span>',
        )
        all_attachments.append({"contentType": "text/html", "content": f"<p>{rendered}</p>"})
    base.update({"text": text, "textFormat": "plain", "entities": entities, "attachments": all_attachments})
    return base


def personal_message(
    text: str,
    *,
    service_url: str,
    bot_app_id: str = DEFAULT_APP_ID,
    bot_name: str = DEFAULT_BOT_NAME,
    tenant_id: str = DEFAULT_TENANT_ID,
    user_id: str = "29:1Ab2Cd3Ef4personalUserId",
    user_name: str = "Megan Bowen",
    user_aad_id: str = "00000000-0000-0000-0000-00000000a11c",
    conversation_id: str | None = None,
    activity_id: str | None = None,
    mention: bool = False,
    attachments: Sequence[Mapping[str, Any]] = (),
    html: bool = True,
) -> dict[str, Any]:
    """A 1:1 chat message (conversationType "personal", id "a:...")."""
    base = _base_activity(
        activity_type="message",
        service_url=service_url,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        tenant_id=tenant_id,
        conversation={
            "conversationType": "personal",
            "tenantId": tenant_id,
            "id": conversation_id or "a:1personalChatIdFakeTeams0001",
        },
        channel_data={"tenant": {"id": tenant_id}},
        user_id=user_id,
        user_name=user_name,
        user_aad_id=user_aad_id,
        activity_id=activity_id,
    )
    return _message(
        text,
        base,
        mention=mention,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        attachments=attachments,
        html=html,
    )


def group_chat_message(
    text: str,
    *,
    service_url: str,
    bot_app_id: str = DEFAULT_APP_ID,
    bot_name: str = DEFAULT_BOT_NAME,
    tenant_id: str = DEFAULT_TENANT_ID,
    user_id: str = "29:1Ab2Cd3Ef4groupUserId",
    user_name: str = "Adele Vance",
    user_aad_id: str = "00000000-0000-0000-0000-00000000ade1",
    conversation_id: str = "19:fakegroupchat0001@thread.v2",
    chat_name: str | None = None,
    activity_id: str | None = None,
    mention: bool = True,
    attachments: Sequence[Mapping[str, Any]] = (),
    html: bool = True,
) -> dict[str, Any]:
    """A group chat message (conversationType "groupChat", id "19:...@thread.v2")."""
    conversation: dict[str, Any] = {
        "isGroup": True,
        "conversationType": "groupChat",
        "tenantId": tenant_id,
        "id": conversation_id,
    }
    if chat_name:
        conversation["name"] = chat_name
    base = _base_activity(
        activity_type="message",
        service_url=service_url,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        tenant_id=tenant_id,
        conversation=conversation,
        channel_data={"tenant": {"id": tenant_id}},
        user_id=user_id,
        user_name=user_name,
        user_aad_id=user_aad_id,
        activity_id=activity_id,
    )
    return _message(
        text,
        base,
        mention=mention,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        attachments=attachments,
        html=html,
    )


def channel_message(
    text: str,
    *,
    service_url: str,
    bot_app_id: str = DEFAULT_APP_ID,
    bot_name: str = DEFAULT_BOT_NAME,
    tenant_id: str = DEFAULT_TENANT_ID,
    user_id: str = "29:1Ab2Cd3Ef4channelUserId",
    user_name: str = "Alex Wilber",
    user_aad_id: str = "00000000-0000-0000-0000-00000000a1e8",
    team_id: str = "19:fakeTeamGeneral0001@thread.tacv2",
    team_name: str = "Contoso",
    team_aad_group_id: str = "00000000-0000-0000-0000-0000000007ea",
    channel_id: str = "19:fakeChannel0001@thread.tacv2",
    channel_name: str = "General",
    activity_id: str | None = None,
    thread_root_id: str | None = None,
    mention: bool = True,
    attachments: Sequence[Mapping[str, Any]] = (),
    html: bool = True,
) -> dict[str, Any]:
    """A channel message inside a thread: conversation id ``<channel>;messageid=<root>``.

    ``thread_root_id`` defaults to the activity's own id (the message that starts the
    thread). Channels deliver only messages that @mention the bot, so ``mention``
    defaults to True."""
    activity_id = activity_id or str(int(time.time() * 1000))
    root = thread_root_id or activity_id
    base = _base_activity(
        activity_type="message",
        service_url=service_url,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        tenant_id=tenant_id,
        conversation={
            "isGroup": True,
            "conversationType": "channel",
            "tenantId": tenant_id,
            "id": f"{channel_id};messageid={root}",
        },
        channel_data={
            "teamsChannelId": channel_id,
            "teamsTeamId": team_id,
            "channel": {"id": channel_id, "name": channel_name},
            "team": {"id": team_id, "name": team_name, "aadGroupId": team_aad_group_id},
            "tenant": {"id": tenant_id},
        },
        user_id=user_id,
        user_name=user_name,
        user_aad_id=user_aad_id,
        activity_id=activity_id,
    )
    if thread_root_id and thread_root_id != activity_id:
        base["replyToId"] = thread_root_id
    return _message(
        text,
        base,
        mention=mention,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        attachments=attachments,
        html=html,
    )


def conversation_update(
    *,
    service_url: str,
    bot_app_id: str = DEFAULT_APP_ID,
    bot_name: str = DEFAULT_BOT_NAME,
    tenant_id: str = DEFAULT_TENANT_ID,
    members_added: Sequence[Mapping[str, Any]] | None = None,
    conversation_type: str = "personal",
    conversation_id: str | None = None,
    team_id: str = "19:fakeTeamGeneral0001@thread.tacv2",
    user_id: str = "29:1Ab2Cd3Ef4personalUserId",
    user_name: str = "Megan Bowen",
    user_aad_id: str = "00000000-0000-0000-0000-00000000a11c",
) -> dict[str, Any]:
    """``conversationUpdate`` with ``membersAdded`` (default: the bot itself, i.e. the
    app was just installed). ``conversation_type`` is personal, groupChat or channel."""
    added = [dict(m) for m in members_added] if members_added is not None else [{"id": f"28:{bot_app_id}"}]
    conversation: dict[str, Any] = {"conversationType": conversation_type, "tenantId": tenant_id}
    channel_data: dict[str, Any] = {"tenant": {"id": tenant_id}}
    if conversation_type == "personal":
        conversation["id"] = conversation_id or "a:1personalChatIdFakeTeams0001"
    elif conversation_type == "groupChat":
        conversation.update(isGroup=True, id=conversation_id or "19:fakegroupchat0001@thread.v2")
    else:
        conversation.update(isGroup=True, id=conversation_id or team_id)
        channel_data.update(
            eventType="teamMemberAdded",
            team={"id": team_id, "name": "Contoso"},
        )
    base = _base_activity(
        activity_type="conversationUpdate",
        service_url=service_url,
        bot_app_id=bot_app_id,
        bot_name=bot_name,
        tenant_id=tenant_id,
        conversation=conversation,
        channel_data=channel_data,
        user_id=user_id,
        user_name=user_name,
        user_aad_id=user_aad_id,
        activity_id=None,
    )
    base["membersAdded"] = added
    return base


async def post_activity(
    url: str,
    activity: Mapping[str, Any],
    *,
    token: str | None = None,
    authorization: str | None = None,
    request_timeout: float = 30.0,
) -> PostResult:
    """POST an activity as JSON. ``token`` becomes ``Authorization: Bearer <token>``;
    ``authorization`` sets the header verbatim (for malformed cases); neither sends none."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if authorization is not None:
        headers["Authorization"] = authorization
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.post(url, data=json.dumps(activity), headers=headers) as resp,
    ):
        body = await resp.text()
        return PostResult(resp.status, body, dict(resp.headers))


# --------------------------------------------------------------------------- entry points


@contextlib.asynccontextmanager
async def start_fake_teams(*, guard_network: bool = True, **options: Any) -> AsyncIterator[FakeTeams]:
    """``async with start_fake_teams(...) as fake:``; options go to :class:`FakeTeams`.
    With ``guard_network`` non-loopback traffic is refused and listed in
    ``fake.blocked_connections``."""
    fake = FakeTeams(**options)
    await asyncio.to_thread(fake.start)
    try:
        if guard_network:
            with loopback_only_network() as blocked:
                fake.blocked_connections = blocked
                yield fake
        else:
            yield fake
    finally:
        await asyncio.to_thread(fake.stop)


@pytest.fixture
def fake_teams() -> Iterator[FakeTeams]:
    """A started :class:`FakeTeams` with the network guard on.

    Synchronous on purpose: the fake has its own loop, so the fixture works with any
    event-loop scope. Fails the test at teardown if anything tried to leave loopback
    (clear ``fake.blocked_connections`` when a test provokes that on purpose)."""
    with FakeTeams() as fake, loopback_only_network() as blocked:
        fake.blocked_connections = blocked
        yield fake
        if blocked:
            pytest.fail(f"network access outside 127.0.0.1 was attempted: {blocked}")
