"""``[channels.email.<account>]``: one table per mailbox, with ``.imap`` and ``.smtp`` sub-tables.

Only pydantic here: the gateway validates every configured table at start and
in ``soulgate check`` without importing aioimaplib or aiosmtplib.
"""

from __future__ import annotations

import re
import ssl
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["EmailConfig", "ImapSettings", "SmtpSettings", "domain_of", "is_address"]

_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$|^[^@\s<>\"]+@localhost$")
_DOMAIN = re.compile(r"^@?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")
_HOST = re.compile(r"^[A-Za-z0-9._:\[\]-]+$")
MiB = 1024 * 1024


def is_address(value: str) -> bool:
    return bool(_ADDRESS.match(value))


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def _folder(value: str | None) -> str | None:
    # aioimaplib sends names as given; non-ASCII names would need modified UTF-7 (RFC 3501 5.1.3)
    if value is not None and (not value.strip() or not value.isascii() or any(c in value for c in "\r\n")):
        raise ValueError("must be a non-empty ASCII folder name (e.g. \"INBOX\" or \"Processed\")")
    return value


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the server's host name or address
    host: str
    #: the port; default by ``tls``
    port: int | None = Field(default=None, ge=1, le=65535)
    #: ``login``: user and password; ``xoauth2``: ``password`` holds an OAuth2 access token
    auth: Literal["login", "xoauth2"] = "login"
    #: check the server's certificate (turn off only for a test server)
    verify_tls: bool = True
    #: a PEM file of CA certificates to trust instead of the system's (a private CA)
    ca_file: str | None = None
    #: seconds any single command may take before the connection counts as dead
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    @field_validator("host")
    @classmethod
    def _host_shape(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError("must be a host name or IP address, without scheme or port")
        return value

    def tls_context(self) -> ssl.SSLContext:
        """Certificate checks on (the system's CAs, or ``ca_file``) unless ``verify_tls = false``."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class ImapSettings(_Server):
    """``[channels.email.<account>.imap]``: where the requests arrive."""

    #: ``implicit``: TLS from the first byte (port 993); ``none``: plaintext (port 143, only on a
    #: trusted network). aioimaplib has no STARTTLS, so there is no ``starttls`` mode.
    tls: Literal["implicit", "none"] = "implicit"
    #: the login name
    user: str
    #: the password (or the OAuth2 token with ``auth = "xoauth2"``); keep it in the environment
    password: SecretStr
    #: the folder to watch
    mailbox: str = "INBOX"
    #: wait for new mail with IMAP IDLE when the server offers it (else poll)
    idle: bool = True
    #: seconds before an IDLE is ended and re-issued (servers drop IDLE after 30 minutes)
    idle_renew_seconds: float = Field(default=300.0, ge=1, le=1740)
    #: seconds between polls without IDLE; with IDLE a poll also runs at every renewal
    poll_interval_seconds: float = Field(default=60.0, ge=0.1, le=86400)

    @field_validator("tls", mode="before")
    @classmethod
    def _no_starttls(cls, value: object) -> object:
        if value == "starttls":
            raise ValueError("aioimaplib cannot do STARTTLS: use \"implicit\" (port 993) or, on a "
                             "trusted network only, \"none\" (port 143)")
        return value

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        return _folder(value) or value

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.tls == "implicit" else 143)


class SmtpSettings(_Server):
    """``[channels.email.<account>.smtp]``: where the answers leave."""

    #: ``implicit``: TLS from the first byte (port 465); ``starttls``: plaintext greeting then
    #: STARTTLS, refusing to go on if the server does not offer it (port 587); ``none``: plaintext
    #: (port 25, only on a trusted network). Never a silent downgrade.
    tls: Literal["implicit", "starttls", "none"] = "starttls"
    #: the login name; unset = no AUTH (a relay that trusts this host)
    user: str | None = None
    #: the password (or OAuth2 token); keep it in the environment
    password: SecretStr | None = None
    #: the name sent with EHLO; default: the domain of ``address``
    helo_name: str | None = None

    @model_validator(mode="after")
    def _credentials(self) -> SmtpSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError("set both user and password, or neither (no SMTP AUTH)")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"implicit": 465, "starttls": 587, "none": 25}[self.tls]


class EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the bot's address: the From of every answer; mail from it is never answered
    address: str
    #: the display name in From (``"Example Support" <support@example.org>``)
    display_name: str | None = None
    imap: ImapSettings
    smtp: SmtpSettings
    #: answer only these senders: addresses (``alice@example.org``) or domains
    #: (``example.org``); empty = anyone. Others are audited and not answered.
    allowed_senders: list[str] = Field(default_factory=list)
    #: trust ``From`` only when the Authentication-Results header added by this server (its
    #: authserv-id) shows DMARC pass, or DKIM/SPF pass for the From domain; unset = not checked
    trusted_authserv_id: str | None = None
    #: move handled mail into this folder (created if missing); unset = leave it in place
    processed_folder: str | None = None
    #: set \\Seen on handled mail (only for people looking at the mailbox; progress is kept in Postgres)
    mark_seen: bool = True
    #: mail already in the mailbox when an account starts for the first time:
    #: ``skip`` it, or ``answer`` it
    backlog: Literal["skip", "answer"] = "skip"
    #: at most this many mails from one sender are answered per ``rate_window_seconds``
    max_per_sender: int = Field(default=20, ge=1)
    #: at most this many mails in one thread are answered per ``rate_window_seconds``
    max_per_thread: int = Field(default=10, ge=1)
    #: the window of the two caps above, in seconds
    rate_window_seconds: float = Field(default=3600.0, gt=0, le=366 * 86_400)  # at most a year
    #: larger mails are not fetched: kept in the mailbox and reported like unreadable ones
    max_message_bytes: int = Field(default=25 * MiB, ge=1024)
    #: attachments larger than this are listed but their bytes are not kept
    max_attachment_bytes: int = Field(default=10 * MiB, ge=0)
    #: days the kept attachments' bytes stay fetchable (``fetch_attachment``) after the mail came
    keep_attachments_days: float = Field(default=30.0, gt=0, le=36_500)
    #: at most this many attachments of one mail are kept
    max_attachments: int = Field(default=20, ge=0)
    #: the raw message is kept in the inbox row (``raw.source``) up to this size
    keep_source_bytes: int = Field(default=256 * 1024, ge=0)
    #: remove quoted history and signatures from the text the agent sees
    strip_quotes: bool = True
    #: what to do when a send's outcome is unknown (timeout during DATA); see docs
    delivery_policy: Literal["never_lost", "never_twice"] = "never_lost"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not is_address(value.strip()):
            raise ValueError("must be a plain address like support@example.org")
        return value.strip()

    @field_validator("allowed_senders")
    @classmethod
    def _senders(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            v = value.strip().lower()
            if not (is_address(v) or _DOMAIN.match(v)):
                raise ValueError(f"{value!r} is neither an address nor a domain")
            out.append(v.lstrip("@"))
        return out

    @field_validator("processed_folder")
    @classmethod
    def _processed(cls, value: str | None) -> str | None:
        return _folder(value)

    @model_validator(mode="after")
    def _folders_differ(self) -> EmailConfig:
        if self.processed_folder is not None and self.processed_folder == self.imap.mailbox:
            raise ValueError("processed_folder must differ from imap.mailbox")
        return self

    @property
    def domain(self) -> str:
        return domain_of(self.address)
