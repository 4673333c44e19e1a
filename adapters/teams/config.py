"""``[channels.teams.<account>]``: what a Teams bot needs, validated before anything starts.

The ``endpoints`` sub-table carries botbuilder's own setting names (lower-cased):
their defaults are Microsoft's public cloud, and overriding them points the
real validator and token client elsewhere (a sovereign cloud, a test fake).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["ReplyStyle", "TeamsConfig", "TeamsEndpoints"]

ReplyStyle = Literal["thread", "top_level"]


class TeamsEndpoints(BaseModel):
    """Bot Framework URLs; each maps to the botbuilder setting of the same (upper-case) name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: where the channel's signing keys are published (note: OPENID, one word)
    to_bot_from_channel_openid_metadata_url: str = (
        "https://login.botframework.com/v1/.well-known/openidconfiguration"
    )
    #: keys for tokens the Bot Framework Emulator (Azure AD) issues
    to_bot_from_emulator_openid_metadata_url: str = (
        "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
    )
    #: the only ``iss`` accepted on channel tokens
    to_bot_from_channel_token_issuer: str = "https://api.botframework.com"
    #: where the bot gets its own token (the tenant is appended for the public cloud)
    to_channel_from_bot_login_url: str = "https://login.microsoftonline.com/"
    #: the audience the bot asks a token for when calling the connector
    to_channel_from_bot_oauth_scope: str = "https://api.botframework.com"
    #: user-token service (OAuth prompts; unused by soulgate today)
    oauth_url: str = "https://api.botframework.com"
    validate_authority: bool = True


class TeamsConfig(BaseModel):
    """One Teams bot (an Azure Bot registration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the Microsoft App ID of the Azure Bot; empty only with ``insecure_dev_mode``
    app_id: str = ""
    app_password: SecretStr = SecretStr("")
    #: SingleTenant (default for new Azure Bots), MultiTenant, or UserAssignedMSI
    app_type: Literal["SingleTenant", "MultiTenant", "UserAssignedMSI"] = "SingleTenant"
    #: the app's home tenant (SingleTenant and UserAssignedMSI)
    tenant_id: str = ""
    #: certificate credentials instead of a password: thumbprint + PEM private key file
    certificate_thumbprint: str = ""
    certificate_key_file: str = ""
    #: optional public certificate (PEM) sent as x5c, for subject-name/issuer auth
    certificate_public_file: str = ""
    #: tenants whose users may talk to the bot; ``["*"]`` accepts any tenant.
    #: Empty means the app's own tenant (single-tenant apps).
    allowed_tenants: list[str] = Field(default_factory=list)
    #: webhook path on the public listener (the Azure Bot's messaging endpoint)
    path: str = "/api/messages"
    #: accept unauthenticated requests (no app id): local testing only
    insecure_dev_mode: bool = False
    #: channel replies go into the message's thread, or start a new top-level post;
    #: a route's ``options.reply_style`` overrides this per route
    reply_style: ReplyStyle = "thread"
    #: longest message text, in UTF-16 code units (Teams caps the whole activity at ~80-100 KB)
    max_message_chars: int = Field(default=20_000, ge=1_000, le=40_000)
    delivery_policy: Literal["never_twice", "never_lost"] = "never_lost"
    #: a token check that takes longer (OpenID/JWKS fetch) is answered 503
    auth_timeout_seconds: float = Field(default=10.0, gt=0)
    #: threads that run botbuilder's blocking token validation off the event loop
    auth_threads: int = Field(default=4, ge=1, le=32)
    #: after this long without an answer from the connector the outcome is unknown
    send_timeout_seconds: float = Field(default=30.0, gt=0)
    endpoints: TeamsEndpoints = Field(default_factory=TeamsEndpoints)

    @model_validator(mode="after")
    def _check(self) -> TeamsConfig:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if not self.app_id:
            if not self.insecure_dev_mode:
                raise ValueError(
                    "app_id is required (the Azure Bot's Microsoft App ID); without it anyone could "
                    "post activities. Set insecure_dev_mode = true only for local testing"
                )
            return self
        if self.app_type in ("SingleTenant", "UserAssignedMSI") and not self.tenant_id:
            raise ValueError(f"tenant_id is required for app_type {self.app_type}")
        if self.app_type != "UserAssignedMSI":
            has_cert = bool(self.certificate_thumbprint or self.certificate_key_file)
            if has_cert and not (self.certificate_thumbprint and self.certificate_key_file):
                raise ValueError("certificate_thumbprint and certificate_key_file go together")
            if has_cert and not Path(self.certificate_key_file).expanduser().is_file():
                raise ValueError(f"certificate_key_file {self.certificate_key_file!r} is not a file")
            if not has_cert and not self.app_password.get_secret_value():
                raise ValueError("app_password (or certificate_thumbprint + certificate_key_file) is required")
        if self.app_type == "MultiTenant" and not self.allowed_tenants:
            raise ValueError(
                "allowed_tenants is required for a MultiTenant app: list the tenant ids whose users "
                'may use the bot, or ["*"] to accept every tenant'
            )
        return self

    @property
    def auth_disabled(self) -> bool:
        """No app id: botbuilder then skips token validation entirely."""
        return not self.app_id

    def tenant_allowed(self, tenant_id: str | None) -> bool:
        allowed = self.allowed_tenants or ([self.tenant_id] if self.tenant_id else [])
        if not allowed:
            return self.insecure_dev_mode  # dev mode without a list: anyone (it is local)
        if "*" in allowed:
            return True
        return tenant_id is not None and tenant_id.lower() in {t.lower() for t in allowed}
