"""Outbound details: aiogram errors → the delivery worker's errors, rate-limit buckets."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)

from gateway import (
    DeliveryError,
    OutcomeUnknown,
    PermanentDeliveryError,
    RateLimit,
    RetryAfter,
    TransientDeliveryError,
)

__all__ = ["delivery_error", "is_parse_error", "rate_limits_for", "scrubber"]

#: Telegram's documented limits (https://core.telegram.org/bots/faq): about 1 message per second
#: in a chat, 20 per minute in a group, 30 per second for the whole bot. A GCRA bucket
#: (interval I, burst b) lets through up to b + ceil(W / I) - 1 messages in any window W, and
#: a send may reach Telegram some milliseconds after its slot (the event loop, the network):
#: each bucket keeps that count under the limit with a slot or ~5% of slack to spare.
PER_CHAT_INTERVAL = 1.05  # a strict 1.0 s is broken by any send that arrives early relative to the last
PER_GROUP_INTERVAL, PER_GROUP_BURST = 60 / 19, 1  # 19 in any minute (3 + 20 - 1 = 22 got 429s)
PER_BOT_INTERVAL, PER_BOT_BURST = 1 / 28, 1  # 28/s (a burst of 30 on top of 30/s allowed 59 in 1 s)


def rate_limits_for(bot_id: str, chat_id: int) -> list[RateLimit]:
    """Most specific first: on a 429 the delivery worker holds back the first bucket."""
    limits = [RateLimit(f"telegram:{bot_id}:chat:{chat_id}", PER_CHAT_INTERVAL, 1)]
    if chat_id < 0:  # groups, supergroups and channels have negative ids
        limits.append(RateLimit(f"telegram:{bot_id}:group:{chat_id}", PER_GROUP_INTERVAL, PER_GROUP_BURST))
    limits.append(RateLimit(f"telegram:{bot_id}:bot", PER_BOT_INTERVAL, PER_BOT_BURST))
    return limits


def is_parse_error(exc: BaseException) -> bool:
    """Telegram refused our HTML ("Bad Request: can't parse entities: ...")."""
    return isinstance(exc, TelegramBadRequest) and "can't parse entities" in exc.message.lower()


def scrubber(token: str) -> Callable[[str], str]:
    """Hide the token in error texts: Bot API URLs contain it, and errors end up in logs and audit."""
    def scrub(text: str) -> str:
        return text.replace(token, "<token>")
    return scrub


def delivery_error(exc: BaseException, scrub: Callable[[str], str] = str) -> DeliveryError:
    """How the delivery worker should treat a failed Bot API call."""
    text = scrub(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TelegramRetryAfter):  # aiogram never retries a 429 itself
        return RetryAfter(exc.retry_after, text)
    if isinstance(exc, TelegramEntityTooLarge):  # before NetworkError: it subclasses it
        return PermanentDeliveryError(text)
    if isinstance(exc, TelegramNetworkError):
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientConnectorError):
            return TransientDeliveryError(text)  # no connection: the request never left
        return OutcomeUnknown(text)  # timeout or cut connection: Telegram may have posted it
    if isinstance(exc, ClientDecodeError):  # an answer came but made no sense: posted or not?
        return OutcomeUnknown(text)
    if isinstance(exc, TelegramServerError):
        return TransientDeliveryError(text)
    if isinstance(exc, TelegramForbiddenError | TelegramNotFound | TelegramBadRequest):
        # blocked by the user, kicked from the group, chat gone, a bad request: retrying cannot help
        return PermanentDeliveryError(text)
    if isinstance(exc, TelegramAPIError):  # 401 (token revoked), 409, others: maybe fixed later
        return TransientDeliveryError(text)
    return TransientDeliveryError(text)
