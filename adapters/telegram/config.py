"""``[channels.telegram.<account>]``: one table per bot."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["DEFAULT_API_BASE", "TelegramConfig"]

DEFAULT_API_BASE = "https://api.telegram.org"
#: what the cloud Bot API lets a bot download (getFile); a local Bot API server allows more
CLOUD_DOWNLOAD_LIMIT = 20 * 1024 * 1024
_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]{1,100}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what setWebhook accepts as secret_token


class TelegramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the token from @BotFather, usually ``"${TELEGRAM_TOKEN}"``
    token: SecretStr
    #: ``polling``: long polling, no public URL needed; ``webhook``: Telegram posts to ``webhook_url``
    mode: Literal["polling", "webhook"] = "polling"
    #: the Bot API server; change it for a self-hosted telegram-bot-api server (or a test double)
    api_base: str = DEFAULT_API_BASE
    #: seconds one getUpdates long poll may wait for news
    poll_timeout: int = Field(default=25, ge=1, le=50)
    #: the public HTTPS URL Telegram posts updates to (webhook mode), e.g.
    #: ``https://bot.example.com/telegram/main``; a reverse proxy forwards it to ``webhook_path``
    webhook_url: str | None = None
    #: the path on the gateway's public listener; default ``/telegram/<account>``
    webhook_path: str | None = None
    #: checked against X-Telegram-Bot-Api-Secret-Token; default: derived from the token
    webhook_secret: SecretStr | None = None
    #: when set, only these Telegram user ids are answered (see also ``allowed_chat_ids``)
    allowed_user_ids: list[int] = Field(default_factory=list)
    #: when set, only messages in these chats are answered (a private chat's id is the user's id)
    allowed_chat_ids: list[int] = Field(default_factory=list)
    #: ``ignore``: an edited message is not a new request; ``answer``: it is answered like a new one
    edited_messages: Literal["ignore", "answer"] = "ignore"
    #: what to do when a send's outcome is unknown (timeout after the request left); see docs
    delivery_policy: Literal["never_lost", "never_twice"] = "never_lost"
    #: largest attachment a plugin may download through this bot, in bytes
    max_download_bytes: int = Field(default=CLOUD_DOWNLOAD_LIMIT, ge=1)
    #: seconds an API call (other than the long poll) may take
    request_timeout: int = Field(default=30, ge=1, le=600)

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not _TOKEN.match(value.get_secret_value()):
            # never echo the value: it is a secret, even when malformed
            raise ValueError("must look like 123456789:AA... (the token @BotFather gave you)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _SECRET.match(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("api_base", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

    @field_validator("webhook_path")
    @classmethod
    def _path_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^/[A-Za-z0-9._~/-]*$", value):
            raise ValueError("must be a URL path starting with /")
        return value

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> TelegramConfig:
        if self.mode == "webhook" and not self.webhook_url:
            raise ValueError("mode = \"webhook\" needs webhook_url (the public HTTPS URL of this bot)")
        return self

    @property
    def bot_id(self) -> str:
        """The bot's numeric id: the part of the token before the colon (not secret)."""
        return self.token.get_secret_value().split(":", 1)[0]
