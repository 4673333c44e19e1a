"""The only module that imports botbuilder: token validation in, proactive sends out.

Everything else in ``adapters.teams`` speaks Bot Framework *JSON*; replacing
botbuilder-python (archived, support ended 2025-12-31) with the Microsoft 365
Agents SDK means rewriting this file only. Its surface is :class:`BotFramework`
(``authenticate``, ``send``, ``close``); it raises the exceptions of ``errors``
and ``gateway``'s delivery errors.

What it works around in botbuilder 4.17 (see tests/test_fake_teams.py):

* ``CloudAdapter.process`` answers 500 for most bad tokens (expired, unknown
  key, no header, not a JWT, ...). We call ``authenticate_request`` ourselves and
  turn *every* failure into :class:`AuthRejected` (→ 401), except a failure to
  fetch the signing keys (:class:`AuthUnavailable` → 503, the platform retries).
* The OpenID/JWKS refresh inside the validator is a blocking ``requests.get``
  without a timeout. Validation therefore runs on a small dedicated thread pool
  (each call on a fresh event loop in its worker thread) and is awaited with a
  timeout, so the gateway's loop never blocks on it.
* botbuilder builds new credentials (a new MSAL app, an empty token cache) for
  every turn, and msrest asks them for a token synchronously on the event loop.
  :class:`_CachedCredentials` keeps one credentials object per audience and
  fetches/refreshes its token in a thread before each use, so the synchronous
  call then hits MSAL's cache.
* ``continue_conversation`` builds a new ``ConnectorClient`` (and with it a new
  ``requests`` session) for every send, so every message opened a new connection to
  the Bot Connector, a TLS handshake each against the real service.
  :class:`_KeptConnectors` keeps one client per service URL and audience, as long as
  its credentials are the current ones.
* ``continue_conversation`` runs a synthetic activity with a made-up id; clearing
  that id makes ``send_activity`` post to the conversation (the thread, for a
  channel conversation id carrying ``;messageid=``) instead of "replying" to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from botbuilder.core import TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ConversationReference
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import (
    CertificateServiceClientCredentialsFactory,
    ClaimsIdentity,
    ConnectorFactory,
    ManagedIdentityServiceClientCredentialsFactory,
    PasswordServiceClientCredentialFactory,
    ServiceClientCredentialsFactory,
)
from msrest.exceptions import ClientRequestError, HttpOperationError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from gateway import OutcomeUnknown, PermanentDeliveryError, RetryAfter, TransientDeliveryError

from .config import TeamsConfig
from .errors import AuthRejected, AuthUnavailable, BadActivity

__all__ = ["BotFramework", "default_credentials_factory"]

log = logging.getLogger("soulgate.adapters.teams")
_TRANSIENT = frozenset({408, 412, 500, 502, 503, 504})
_PERMANENT = frozenset({400, 403, 404, 405, 413})


class _Settings:
    """The attribute bag ``ConfigurationBotFrameworkAuthentication`` reads with getattr."""

    def __init__(self, cfg: TeamsConfig) -> None:
        ep = cfg.endpoints
        self.APP_ID = cfg.app_id or None
        self.APP_PASSWORD = cfg.app_password.get_secret_value() or None
        self.APP_TYPE = cfg.app_type
        self.APP_TENANTID = cfg.tenant_id or None
        # Setting any TO_* value selects botbuilder's "parameterized" authentication,
        # which uses only these values; all of them default to Microsoft's public cloud.
        self.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL = ep.to_bot_from_channel_openid_metadata_url
        self.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL = ep.to_bot_from_emulator_openid_metadata_url
        self.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER = ep.to_bot_from_channel_token_issuer
        self.TO_CHANNEL_FROM_BOT_LOGIN_URL = ep.to_channel_from_bot_login_url
        self.TO_CHANNEL_FROM_BOT_OAUTH_SCOPE = ep.to_channel_from_bot_oauth_scope
        self.OAUTH_URL = ep.oauth_url
        self.VALIDATE_AUTHORITY = ep.validate_authority


def default_credentials_factory(cfg: TeamsConfig) -> ServiceClientCredentialsFactory:
    """botbuilder's own factory for the configured credential kind."""
    tenant = cfg.tenant_id if cfg.app_type != "MultiTenant" else None
    if cfg.app_type == "UserAssignedMSI":
        return ManagedIdentityServiceClientCredentialsFactory(cfg.app_id or None)
    if cfg.certificate_thumbprint:
        key = Path(cfg.certificate_key_file).expanduser().read_text()
        public = (
            Path(cfg.certificate_public_file).expanduser().read_text() if cfg.certificate_public_file else None
        )
        return CertificateServiceClientCredentialsFactory(
            cfg.certificate_thumbprint, key, cfg.app_id, tenant, public
        )
    return PasswordServiceClientCredentialFactory(
        cfg.app_id or None, cfg.app_password.get_secret_value() or None, tenant
    )


class _CachedCredentials(ServiceClientCredentialsFactory):
    """One credentials object (hence one MSAL token cache) per audience, warmed off-loop."""

    def __init__(self, inner: ServiceClientCredentialsFactory) -> None:
        self._inner = inner
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._lock = asyncio.Lock()
        # botbuilder builds its MSAL app lazily and unguarded: one warmer at a time, so
        # concurrent first sends share one token request instead of racing.
        self._warming = threading.Lock()

    async def is_valid_app_id(self, app_id: str) -> bool:
        return bool(await self._inner.is_valid_app_id(app_id))

    async def is_authentication_disabled(self) -> bool:
        return bool(await self._inner.is_authentication_disabled())

    async def create_credentials(
        self, app_id: str, oauth_scope: str, login_endpoint: str, validate_authority: bool
    ) -> Any:
        key = (app_id, oauth_scope, login_endpoint, validate_authority)
        async with self._lock:
            creds = self._cache.get(key)
            if creds is None:
                creds = await self._inner.create_credentials(
                    app_id, oauth_scope, login_endpoint, validate_authority
                )
                self._cache[key] = creds
        if getattr(creds, "microsoft_app_id", None):
            # MSAL answers from its cache until the token nears expiry; when it must
            # ask the token service, that blocking call happens here, in a thread.
            await asyncio.to_thread(self._warm, creds)
        return creds

    def _warm(self, creds: Any) -> None:
        with self._warming:
            creds.get_access_token()

    def forget(self) -> None:
        """Drop cached credentials (the connector refused our token)."""
        self._cache.clear()

    @property
    def cached(self) -> int:
        # Not __len__: botbuilder tests the factory for truth, and an empty cache
        # would make it fall back to its own factory.
        return len(self._cache)


class _KeptConnectors(ConnectorFactory):
    """botbuilder's connector factory, but a client (and its kept-alive connections) is reused.

    botbuilder's own factory is still asked each time: it looks the credentials up (our
    :class:`_CachedCredentials`, which refreshes the token in a thread) and builds a client,
    which costs no connection until it sends. That client is kept when there is none yet
    for the service URL and audience, or when the credentials changed (``forget`` after a
    401); otherwise the kept one, with its connections, does the send.
    """

    def __init__(self, inner: ConnectorFactory, kept: dict[tuple[str, str | None], ConnectorClient]) -> None:
        self._inner = inner
        self._kept = kept

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        fresh = await self._inner.create(service_url, audience)
        key = (service_url, audience)
        kept = self._kept.get(key)
        if kept is not None and kept.config.credentials is fresh.config.credentials:
            return kept
        self._kept[key] = fresh
        return fresh


class _Authentication(ConfigurationBotFrameworkAuthentication):
    """botbuilder's authentication, handing out :class:`_KeptConnectors`."""

    def __init__(self, settings: Any, credentials_factory: ServiceClientCredentialsFactory) -> None:
        super().__init__(settings, credentials_factory=credentials_factory)
        self.connectors: dict[tuple[str, str | None], ConnectorClient] = {}

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        return _KeptConnectors(super().create_connector_factory(claims_identity), self.connectors)


def _run_in_fresh_loop(make: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


def _retry_after(response: Any) -> float:
    raw = (getattr(response, "headers", None) or {}).get("Retry-After")
    if not raw:
        return 1.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return 1.0


def _never_connected(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (safe to repeat)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


class BotFramework:
    """botbuilder, reduced to what the Teams adapter needs."""

    def __init__(self, cfg: TeamsConfig, credentials_factory: ServiceClientCredentialsFactory | None) -> None:
        self.cfg = cfg
        self.credentials = _CachedCredentials(credentials_factory or default_credentials_factory(cfg))
        self._auth = _Authentication(_Settings(cfg), credentials_factory=self.credentials)
        self._adapter = CloudAdapter(self._auth)
        self._pool = ThreadPoolExecutor(cfg.auth_threads, thread_name_prefix="teams-auth")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        kept = list(self._auth.connectors.values())
        self._auth.connectors.clear()
        for client in kept:  # its requests session, and the connections it kept alive
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    # -- inbound --------------------------------------------------------------------

    async def authenticate(self, activity: dict[str, Any], authorization: str | None) -> None:
        """Raise unless ``authorization`` proves Bot Framework sent ``activity`` to this bot."""
        try:
            parsed = Activity().deserialize(activity)
        except Exception as exc:
            raise BadActivity(f"not a Bot Framework activity: {exc}") from exc

        async def check() -> None:
            result = await self._auth.authenticate_request(parsed, authorization)
            identity = result.claims_identity
            if identity is None or not identity.is_authenticated:
                raise PermissionError("no authenticated identity")

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, _run_in_fresh_loop, check)
        try:
            await asyncio.wait_for(future, self.cfg.auth_timeout_seconds)
        except TimeoutError:
            raise AuthUnavailable(
                f"token validation took longer than {self.cfg.auth_timeout_seconds:g}s"
            ) from None
        except requests.RequestException as exc:
            raise AuthUnavailable(f"could not fetch the signing keys: {exc}") from exc
        except Exception as exc:
            # PermissionError is botbuilder's "unauthorized"; everything else (expired,
            # unknown kid, not a JWT, unendorsed key, missing claims) is a bad token too.
            raise AuthRejected(f"{type(exc).__name__}: {exc}") from exc

    # -- outbound -------------------------------------------------------------------

    async def send(self, reference: dict[str, Any], activity: dict[str, Any]) -> str | None:
        """Post ``activity`` to the conversation of ``reference``; returns the new message id."""
        try:
            ref = ConversationReference().deserialize(reference)
            outgoing = Activity().deserialize(activity)
        except Exception as exc:
            raise PermanentDeliveryError(f"not a Teams conversation reference: {exc}") from exc
        if not (ref.conversation and ref.conversation.id and ref.service_url):
            raise PermanentDeliveryError("the conversation reference lacks conversation.id or serviceUrl")
        sent: list[str | None] = []

        async def logic(turn: TurnContext) -> None:
            turn.activity.id = None  # post to the conversation, not "in reply to" a made-up id
            client = turn.turn_state.get(CloudAdapter.BOT_CONNECTOR_CLIENT_KEY)
            if client is not None:
                client.config.connection.timeout = self.cfg.send_timeout_seconds
            response = await turn.send_activity(outgoing)
            sent.append(response.id if response is not None else None)

        try:
            await asyncio.wait_for(
                self._adapter.continue_conversation(ref, logic, bot_app_id=self.cfg.app_id or None),
                self.cfg.send_timeout_seconds + 5,
            )
        except TimeoutError:
            raise OutcomeUnknown("no answer from the Bot Connector in time") from None
        except HttpOperationError as exc:
            raise self._http_error(exc) from exc
        except ClientRequestError as exc:
            inner = exc.inner_exception
            if inner is not None and _never_connected(inner):
                raise TransientDeliveryError(f"cannot reach the Bot Connector: {inner}") from exc
            raise OutcomeUnknown(f"the Bot Connector request failed midway: {inner or exc}") from exc
        except PermissionError as exc:  # the token service refused our credentials
            raise TransientDeliveryError(f"could not get a Bot Framework token: {exc}") from exc
        return sent[0] if sent else None

    def _http_error(self, exc: HttpOperationError) -> Exception:
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        body = (getattr(response, "text", "") or "")[:300]
        what = f"Bot Connector answered {status}: {body}"
        if status == 429:
            return RetryAfter(_retry_after(response), what)
        if status == 401:
            self.credentials.forget()  # a fresh token on the next attempt
            return TransientDeliveryError(what)
        if status in _PERMANENT:
            return PermanentDeliveryError(what)
        if status in _TRANSIENT:
            return TransientDeliveryError(what)
        return TransientDeliveryError(what)
