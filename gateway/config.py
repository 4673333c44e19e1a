"""Configuration: TOML, ``${ENV}`` interpolation, pydantic validation.

Where the file comes from: ``--config``, else ``$SOULGATE_CONFIG``, else
``config/soulgate.toml`` in the working directory if it exists, else the
built-in defaults (embedded Postgres, console channel) so that ``soulgate chat``
works with no file at all.

Interpolation is done on parsed string values, not on the file text, so a
secret containing quotes cannot change the TOML structure. Every problem is
reported with its key path, all at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .errors import ConfigError

__all__ = [
    "AdminConfig",
    "Config",
    "DatabaseConfig",
    "DeliveryConfig",
    "HttpConfig",
    "ModelConfig",
    "PluginsConfig",
    "RouteConfig",
    "WorkersConfig",
    "config_from_mapping",
    "find_config_file",
    "format_validation_error",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path("config/soulgate.toml")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    instance_name: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)


class DatabaseConfig(_Section):
    #: ``postgresql://user:pass@host/db``; empty → embedded Postgres (pgserver)
    url: SecretStr = SecretStr("")
    #: where the embedded Postgres keeps its data; empty → the user's data dir
    data_dir: str = ""
    pool_min: int = Field(default=1, ge=1)
    pool_max: int = Field(default=10, ge=1)
    connect_timeout: float = Field(default=10.0, gt=0)


class AdminConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    #: bearer token; empty → one is generated, stored in the database and printed at first start
    token: SecretStr = SecretStr("")
    max_body_bytes: int = Field(default=1_048_576, gt=0)


class HttpConfig(_Section):
    """The public listener on which adapters mount webhooks."""

    #: None → on when an adapter mounts a route
    enabled: bool | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, gt=0)


class WorkersConfig(_Section):
    dispatch: int = Field(default=4, ge=1, le=256)
    delivery: int = Field(default=4, ge=1, le=256)
    lease_seconds: float = Field(default=60.0, gt=0)
    #: attempts at a turn (crashes included) before the inbox row is failed
    max_turn_attempts: int = Field(default=3, ge=1)
    #: fallback wake-up when no notification arrives
    idle_poll_seconds: float = Field(default=2.0, gt=0)


class DeliveryConfig(_Section):
    max_attempts: int = Field(default=8, ge=1)
    ttl_seconds: float = Field(default=86_400.0, gt=0)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)


class PluginsConfig(_Section):
    #: extra plugin modules to import (beside installed entry points)
    modules: list[str] = Field(default_factory=list)
    #: plugin names not to load
    disabled: list[str] = Field(default_factory=list)
    #: seconds one hook call may take before it counts as failed
    hook_timeout: float = Field(default=30.0, gt=0)
    #: ``[plugins.config.<name>]`` tables, validated by each plugin's own model
    config: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RouteConfig(_Section):
    """One ``[[routes]]`` entry; the most specific match wins."""

    agent: str
    channel: str | None = None
    account: str | None = None
    conversation: str | None = None
    require_mention: bool = True
    allowed_senders: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(BaseModel):
    """``[models.<alias>]``: a litellm model string and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class AgentsConfig(_Section):
    soul_dir: str = "soul"
    default: str = "assistant"
    #: optional embedding model alias (from ``[models]``) for memory recall
    embedding_model: str | None = None


class Config(_Section):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    #: ``[channels.<channel>.<account>]``, validated by each channel plugin's model
    channels: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    #: where this config was read from (None: built-in defaults)
    source: str | None = None
    #: the directory relative paths (soul_dir, data_dir) are resolved against
    base_dir: str = "."

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def _interpolate(value: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable ${{{name}}} is not set")
            return ""
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else k, env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, each starting with its dotted key path."""
    out = []
    for err in exc.errors():
        parts: list[str] = [prefix] if prefix else []
        for loc in err["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1] if parts else ''}[{loc}]"]
            else:
                parts.append(str(loc))
        key = ".".join(parts) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{key}: {msg}")
    return out


def find_config_file(explicit: str | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("SOULGATE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(
    path: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read, interpolate and validate; raises :class:`ConfigError` listing every problem."""
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    source: Path | None = Path(path) if path is not None else find_config_file()
    if source is not None:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        _set_path(data, key, value)
    return config_from_mapping(data, env=env, source=source)


def config_from_mapping(
    data: dict[str, Any], *, env: dict[str, str] | None = None, source: Path | None = None
) -> Config:
    """Interpolate and validate an already-parsed config (tests, the plugin test kit)."""
    env = dict(os.environ) if env is None else env
    problems: list[str] = []
    data = _interpolate(data, "", env, problems)
    for reserved in ("source", "base_dir"):
        if reserved in data:
            problems.append(f"{reserved}: unknown key")
    if source is None:
        base = Path.cwd()
    elif source.resolve().parent.name == "config":
        base = source.resolve().parent.parent  # config/soulgate.toml: paths relative to the repo
    else:
        base = source.resolve().parent
    try:
        cfg = Config.model_validate(
            {**data, "source": str(source) if source else None, "base_dir": str(base)}
        )
    except ValidationError as exc:
        problems.extend(format_validation_error(exc))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
