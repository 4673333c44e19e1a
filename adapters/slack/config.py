"""The ``[channels.slack.<account>]`` table: one Slack app installation per account."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["DEFAULT_API_BASE_URL", "SlackConfig"]

DEFAULT_API_BASE_URL = "https://slack.com/api/"


class SlackConfig(BaseModel):
    """Settings of one Slack account (a bot token in one workspace).

    Secrets are ``SecretStr`` so they never show in logs, ``soulgate check`` or
    the admin API.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: "http": Events API on the gateway's public listener; "socket": Socket Mode (no public URL)
    mode: Literal["http", "socket"] = "http"
    #: bot token, ``xoxb-…`` (OAuth & Permissions page)
    bot_token: SecretStr
    #: signing secret (Basic Information page); required in HTTP mode
    signing_secret: SecretStr | None = None
    #: app-level token with ``connections:write``, ``xapp-…``; required in Socket Mode
    app_token: SecretStr | None = None
    #: the Events API request path on the public listener; default ``/slack/<account>/events``
    path: str | None = None
    #: Slack Web API base URL; change it only for a proxy or a test server
    api_base_url: str = DEFAULT_API_BASE_URL
    #: seconds a Web API call may take; a post that times out has an unknown outcome
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    #: answer a top-level channel / group-DM message in a thread under it
    reply_in_thread: bool = True
    #: the same for direct messages (a DM usually reads better without threads)
    reply_in_thread_dm: bool = False
    #: per-conversation override of ``reply_in_thread``: ``{ C0123 = false }``
    reply_in_thread_channels: dict[str, bool] = Field(default_factory=dict)
    #: a reply in a thread the bot takes part in counts as addressed to it (no mention needed)
    thread_replies_addressed: bool = True

    #: allow-lists of Slack ids; empty = everyone. Others are ignored and audited.
    allowed_teams: list[str] = Field(default_factory=list)
    allowed_channels: list[str] = Field(default_factory=list)
    allowed_users: list[str] = Field(default_factory=list)

    #: reaction put on the user's message while the answer is being prepared; "" = none
    ack_reaction: str = "eyes"
    #: take the reaction away once the answer is posted
    remove_ack_reaction: bool = True

    #: after a post whose outcome is unknown (timeout, dropped connection): never post
    #: twice (park it, the default) or never lose it (post again, maybe twice)
    delivery_policy: Literal["never_twice", "never_lost"] = "never_twice"
    #: longest text of one message; longer answers are split (Slack advises <= 4000)
    max_message_chars: int = Field(default=4000, ge=200, le=4000)
    #: seconds between two posts to one channel, shared by all instances (Slack: ~1/s; the 5% over
    #: it absorbs the jitter between a post's slot and its arrival, which a strict 1.0 s turns into 429s)
    post_interval_seconds: float = Field(default=1.05, ge=0.0, le=60.0)
    #: the bot's user id; normally learnt from ``auth.test`` at start
    bot_user_id: str | None = None
    #: hosts the bot token may be sent to when a plugin downloads an inbound file
    file_hosts: list[str] = Field(default_factory=lambda: ["files.slack.com"])
    #: largest inbound file a plugin may download, in bytes
    max_download_bytes: int = Field(default=20_000_000, ge=1)

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("xoxb-", "xoxp-")):
            raise ValueError("must be a Slack bot token (xoxb-…)")
        return v

    @field_validator("app_token")
    @classmethod
    def _app_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (xapp-…)")
        return v

    @field_validator("signing_secret")
    @classmethod
    def _signing_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("ack_reaction")
    @classmethod
    def _reaction(cls, v: str) -> str:
        name = v.strip().strip(":")  # ":eyes:" as typed in Slack means "eyes"
        if any(c.isspace() or c == ":" for c in name):
            raise ValueError("must be one reaction name such as \"eyes\" (or \"\" for none)")
        return name

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or any(c in v for c in "{}? #")):
            raise ValueError("must be an absolute URL path such as /slack/events")
        return v

    @field_validator("api_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://slack.com/api/")
        return v if v.endswith("/") else v + "/"  # the SDK appends the method name

    @model_validator(mode="after")
    def _mode_needs_its_secret(self) -> SlackConfig:
        if self.mode == "http" and self.signing_secret is None:
            raise ValueError("signing_secret is required when mode = \"http\"")
        if self.mode == "socket" and self.app_token is None:
            raise ValueError("app_token is required when mode = \"socket\"")
        return self

    def events_path(self, account: str) -> str:
        return self.path or f"/slack/{account}/events"

    def thread_replies(self, channel: str, direct: bool) -> bool:
        """Whether a top-level message in ``channel`` is answered in a thread under it."""
        if direct:
            return self.reply_in_thread_channels.get(channel, self.reply_in_thread_dm)
        return self.reply_in_thread_channels.get(channel, self.reply_in_thread)
