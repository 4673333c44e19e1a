"""Why an inbound Teams request is refused; SDK-free so the webhook code needs no botbuilder."""

from __future__ import annotations

__all__ = ["AuthRejected", "AuthUnavailable", "BadActivity"]


class BadActivity(ValueError):
    """The activity lacks what every Teams activity has (conversation, from, serviceUrl) → 400."""


class AuthRejected(Exception):
    """The request is not from Bot Framework for this bot → 401."""


class AuthUnavailable(Exception):
    """The signing keys could not be fetched in time → 503 (Bot Framework retries)."""
