"""Errors a plugin or adapter may raise or catch; all importable from ``gateway``."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "GatewayError",
    "OutcomeUnknown",
    "PermanentDeliveryError",
    "PluginError",
    "RetryAfter",
    "TransientDeliveryError",
]


class GatewayError(Exception):
    """Base of every error soulgate raises on purpose."""


class ConfigError(GatewayError):
    """The configuration (or a SOUL file, or a plugin's config table) is invalid.

    ``problems`` lists every problem found, each already prefixed with its key
    path or ``file:line``, so ``soulgate check`` can print them all at once.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PluginError(GatewayError):
    """A plugin failed inside a hook; names the plugin and the hook, like pluggy does."""

    def __init__(self, plugin: str, hook: str, cause: BaseException | str) -> None:
        self.plugin = plugin
        self.hook = hook
        self.cause = cause
        what = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"plugin {plugin!r} failed in hook {hook!r}: {what}")


class DeliveryError(GatewayError):
    """An adapter's ``send`` failed; the subclass tells the delivery worker what to do."""


class TransientDeliveryError(DeliveryError):
    """Try again later with backoff (5xx, connection refused before the request left)."""


class RetryAfter(TransientDeliveryError):
    """The platform said 429: wait ``seconds`` before the next send to this destination."""

    def __init__(self, seconds: float, message: str = "") -> None:
        self.seconds = max(0.0, float(seconds))
        super().__init__(message or f"rate limited, retry after {self.seconds:g}s")


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help (chat not found, bot blocked, bad request): dead-letter now."""


class OutcomeUnknown(DeliveryError):
    """The request left but no answer came (timeout): the message may or may not be posted.

    On a channel configured ``never_twice`` the row is parked as ``unknown``
    instead of being sent again; on ``never_lost`` it is retried.
    """
