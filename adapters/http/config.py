"""``[channels.http.<account>]``: one table per client system (its keys, its agents)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["MIN_KEY_LENGTH", "HttpChannelConfig"]

#: shorter keys can be guessed; `openssl rand -hex 24` gives 48 characters
MIN_KEY_LENGTH = 16


class HttpChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: bearer keys a client sends as ``Authorization: Bearer <key>``; the key picks the account
    api_keys: list[SecretStr] = Field(min_length=1)
    #: the SOUL agents this account may call (its "models"); empty = every loaded agent
    agents: list[str] = Field(default_factory=list)
    #: seconds a request waits for its answer before 504 (the turn itself goes on)
    reply_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        seen: set[str] = set()
        for i, key in enumerate(keys):
            value = key.get_secret_value()
            # never echo a key, not even a malformed one: name its position instead
            if len(value) < MIN_KEY_LENGTH:
                raise ValueError(f"key {i + 1} is shorter than {MIN_KEY_LENGTH} characters "
                                 "(generate one with `openssl rand -hex 24`)")
            if any(c.isspace() for c in value) or not value.isprintable():
                raise ValueError(f"key {i + 1} contains spaces or control characters")
            if value in seen:
                raise ValueError(f"key {i + 1} is listed twice")
            seen.add(value)
        return keys

    @field_validator("agents")
    @classmethod
    def _agents(cls, agents: list[str]) -> list[str]:
        for name in agents:
            if not name.strip():
                raise ValueError("an agent name may not be empty")
        return agents
