"""Bundled plugin ``time``: the current time in a time zone, as ``/time`` and as the tool ``current_time``.

Zones are IANA names (``Europe/Berlin``), matched without regard to case; an
unknown one gets an answer that suggests close names instead of an error.
Config (``[plugins.config.time]``): ``default_timezone`` (default ``UTC``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, field_validator

from gateway import Command, CommandContext, Skill, Tool, ToolContext, hookimpl

__all__ = ["TimeConfig", "UnknownZone", "describe", "find_zone"]

SOULGATE_PLUGIN_API = "1.0"
PLUGIN = "time"


class UnknownZone(ValueError):
    """Not an IANA time zone name; the message suggests close ones."""


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    # Reading the zone database walks the file system: once per process is enough.
    names = available_timezones() | {"UTC"}
    return {n.lower(): n for n in names}


def find_zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (any case); raises :class:`UnknownZone`."""
    wanted = name.strip()
    known = _zones()
    canonical = known.get(wanted.lower())
    if canonical is None:
        import difflib  # only to suggest names for an unknown zone

        close = difflib.get_close_matches(wanted.lower(), list(known), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(f'`{known[c]}`' for c in close)}?" if close else ""
        raise UnknownZone(
            f"Unknown time zone `{wanted}`.{hint} Use an IANA name such as `Europe/Berlin` or "
            "`America/New_York`."
        )
    try:
        return ZoneInfo(canonical)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # listed but unreadable: broken tzdata
        raise UnknownZone(f"Time zone `{canonical}` cannot be read: {exc}") from None


def describe(zone: ZoneInfo, at: datetime | None = None) -> dict[str, Any]:
    """The time ``at`` (default now) in ``zone``, as the tool returns it."""
    local = (at or datetime.now(UTC)).astimezone(zone)
    offset = local.strftime("%z")
    return {
        "timezone": zone.key,
        "iso": local.isoformat(timespec="seconds"),
        "date": local.date().isoformat(),
        "time": local.strftime("%H:%M"),
        "weekday": local.strftime("%A"),
        "abbreviation": local.tzname(),
        "utc_offset": f"{offset[:3]}:{offset[3:]}",
    }


class TimeConfig(BaseModel):
    """``[plugins.config.time]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the zone for ``/time`` without an argument and the tool without ``timezone``
    default_timezone: str = "UTC"

    @field_validator("default_timezone")
    @classmethod
    def _known(cls, value: str) -> str:
        return find_zone(value).key


def _config(services: Any) -> TimeConfig:
    cfg = services.plugin_config(PLUGIN)
    return cfg if isinstance(cfg, TimeConfig) else TimeConfig()


async def _command(ctx: CommandContext) -> str:
    try:
        zone = find_zone(ctx.args or _config(ctx.services).default_timezone)
    except UnknownZone as exc:
        return str(exc)
    d = describe(zone)
    return (f"It is **{d['time']}** on {d['weekday']}, {d['date']} in {d['timezone']} "
            f"({d['abbreviation']}, UTC{d['utc_offset']}).")


async def _tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("timezone") or _config(ctx.services).default_timezone
    if not isinstance(name, str):
        return {"error": "timezone must be a string such as 'Europe/Berlin'"}
    try:
        return describe(find_zone(name))
    except UnknownZone as exc:
        return {"error": str(exc)}


@hookimpl
def soulgate_config_model() -> type[BaseModel]:
    return TimeConfig


@hookimpl
def soulgate_skills() -> list[Skill]:
    return [
        Command("time", "the current time, here or in a time zone", _command, usage="[ZONE]"),
        Tool(
            "current_time",
            "The current date and time in a time zone (IANA name such as 'Europe/Berlin'). "
            "Without a zone: the gateway's default zone.",
            _tool,
            parameters={
                "type": "object",
                "properties": {
                    "timezone": {"type": "string", "description": "IANA time zone, e.g. 'Asia/Tokyo'"},
                },
            },
        ),
    ]
