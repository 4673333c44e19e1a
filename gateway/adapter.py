"""The channel adapter contract.

An adapter is the only place that speaks a platform's protocol. It turns
platform events into :class:`~gateway.envelope.Envelope` objects, hands them to
``ctx.admit`` (which returns only after the inbox commit, so the adapter may
then acknowledge the platform), and sends rendered replies when the delivery
worker asks it to. Adapters come from plugins through the ``soulgate_adapters``
hook, built-in ones exactly like third-party ones.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

from .envelope import Attachment, Envelope, Reply, ReplyAddress

if TYPE_CHECKING:
    from .services import Services

__all__ = [
    "TYPING_SHOWN",
    "Adapter",
    "AdapterContext",
    "AdapterSpec",
    "AdmitResult",
    "DeliveryPolicy",
    "RateLimit",
    "SendResult",
    "WebHandler",
]

DeliveryPolicy = Literal["never_twice", "never_lost"]
WebHandler = Callable[[Any], Awaitable[Any]]  # aiohttp.web.Request -> aiohttp.web.StreamResponse

#: ``Reply.meta`` key the gateway sets (to True) on the last chunk of a turn during which
#: ``typing`` was called: whichever instance sends that chunk can then clear a hint that
#: does not expire by itself (Slack's reaction), though another instance showed it.
TYPING_SHOWN = "typing_shown"


@dataclass(frozen=True, slots=True)
class AdmitResult:
    """What ``ctx.admit`` did: ``created`` is False for a duplicate (already in the inbox)."""

    inbox_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the platform answered to a send."""

    platform_message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One outbound limit: at most ``burst`` sends at once, then one per ``interval`` seconds.

    ``key`` names the bucket; buckets live in Postgres, so every gateway
    instance shares them (a bot's 30/s is 30/s for all instances together).
    """

    key: str
    interval: float
    burst: int = 1


class AdapterContext(Protocol):
    """What the gateway offers an adapter while it runs."""

    instance_id: str
    log: logging.Logger
    #: what plugins get (store, objects other plugins provide, config); for adapters that
    #: need more than admitting, e.g. the http channel waiting for a reply another instance delivers
    services: Services

    async def admit(self, envelope: Envelope) -> AdmitResult:
        """Store the envelope durably; returns after the commit. Idempotent per natural key."""
        ...

    async def remember_conversation(self, envelope: Envelope) -> None:
        """Store a conversation and its reply address without admitting a message.

        For platform events that prove the bot can reach a conversation but
        carry nothing to answer (Teams ``conversationUpdate`` on install), so
        proactive sends can name that conversation later. ``text`` is ignored.
        """
        ...

    def add_route(self, method: str, path: str, handler: WebHandler) -> None:
        """Mount a webhook handler on the public HTTP listener (before ``start`` returns)."""
        ...

    def leadership(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold cluster-wide leadership of ``name`` (e.g. a poller) until the block exits.

        Waits until this instance is the leader. If the database connection that
        holds the lock dies, the block is cancelled (another instance may lead
        now). Most pollers want :meth:`run_as_leader`, which handles that.
        """
        ...

    async def run_as_leader(
        self, name: str, body: Callable[[], Awaitable[None]], *,
        on_error: Callable[[Exception], None] | None = None,
        backoff: float = 2.0, max_backoff: float = 30.0,
    ) -> None:
        """Run ``body()`` whenever this instance holds cluster-wide leadership of ``name``.

        The loop every poller needs (one instance polls a Telegram bot or an
        IMAP mailbox; the others stand by): wait to become the leader, run
        ``body()``; when the lock is lost (its database connection died), ``body``
        is cancelled and the instance waits to lead again; when ``body`` raises,
        ``on_error(exc)`` is called (default: the error is logged; give your own to
        record it or to keep secrets out of the log) and it starts over after a
        backoff (``backoff`` seconds, doubling up to ``max_backoff``, with jitter).

        Returns when ``body`` returns (leadership is released: another instance may
        take over) or when the gateway stops. Run it in a task of its own and
        cancel that task to stop: ``body`` is cancelled and leadership released.
        Raises ``ValueError`` for an empty name or ``backoff`` not in (0, max_backoff].
        """
        ...

    def leads(self, name: str) -> bool:
        """Whether :meth:`run_as_leader` of ``name`` is running its body here right now
        (for status pages: "this instance polls the bot")."""
        ...

    async def get_state(self, key: str) -> Any:
        """Adapter state kept in Postgres (poll offsets, IMAP watermarks); None if unset."""
        ...

    async def set_state(self, key: str, value: Any, *, expires_in: float | None = None) -> None:
        """Store adapter state (JSON-serializable). With ``expires_in`` (seconds) it reads as
        unset after that long and is deleted later: for state kept per message or per thread,
        which would otherwise grow forever. ``ValueError`` unless it is positive (or None)."""
        ...

    async def audit(self, kind: str, detail: dict[str, Any], envelope: Envelope | None = None) -> None:
        """Write an audit row (ignored senders, rejected requests, unparsable input)."""
        ...

    def ticks(self, interval: float) -> AsyncIterator[None]:
        """Yield every ``interval`` seconds until the gateway stops (for poll loops)."""
        ...


class Adapter(abc.ABC):
    """Base class for a channel adapter; one instance per configured account."""

    #: the channel name, e.g. ``"telegram"``; the config table is ``[channels.<channel>.<account>]``
    channel: ClassVar[str]
    #: what to do when a send's outcome is unknown (timeout after the request left)
    delivery_policy: DeliveryPolicy = "never_lost"
    #: how many attempts the delivery worker makes before dead-lettering
    max_attempts: int | None = None

    def __init__(self, account: str) -> None:
        self.account = account

    async def bind(self, ctx: AdapterContext) -> None:  # noqa: B027 - optional hook, default does nothing
        """Take the context that sending may need; called once at gateway start, in every role.

        Called on every adapter before any turn runs or anything is sent, and
        before :meth:`start`. A ``--role worker`` gateway never calls ``start``
        but sends through the adapter, so keep what ``send``, ``typing`` and
        ``fetch_attachment`` use from here (``get_state``/``set_state``, ``audit``,
        ``log``, ``services``). This context refuses to receive: ``admit``,
        ``remember_conversation``, ``add_route``, ``leadership`` and
        ``run_as_leader`` raise ``RuntimeError`` (that is ``start``'s job).
        """

    @abc.abstractmethod
    async def start(self, ctx: AdapterContext) -> None:
        """Start receiving (mount webhook routes, spawn pollers). Must not block for long."""

    async def stop(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Stop receiving; in-flight admits finish first."""

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release what sending holds (HTTP sessions, connection pools).

        Called once at gateway shutdown, after :meth:`stop` and after in-flight
        sends were drained, on every adapter, started or not: a ``--role worker``
        gateway sends through adapters it never starts. So open sending
        resources lazily, on first use in the running loop, not in ``__init__``.
        """

    @abc.abstractmethod
    async def send(self, address: ReplyAddress, reply: Reply) -> SendResult:
        """Send one chunk (already rendered by :meth:`render`) to ``address``.

        Raise :class:`~gateway.errors.RetryAfter`, ``TransientDeliveryError``,
        ``PermanentDeliveryError`` or ``OutcomeUnknown`` to steer the retry.
        """

    def render(self, reply: Reply) -> list[Reply]:
        """Split a Markdown reply into the chunks ``send`` will post, in order.

        Called once when the turn commits, so chunk boundaries are stable across
        retries. The default keeps the reply whole.
        """
        return [reply]

    def rate_limits(self, address: ReplyAddress) -> list[RateLimit]:
        """The buckets a send to ``address`` must pass; none by default."""
        return []

    async def typing(self, address: ReplyAddress) -> None:  # noqa: B027 - optional
        """Show a "working on it" hint (typing action, reaction); best effort.

        Called half a second into a turn, then every 4 s until the turn has run. A hint
        that lasts (a reaction) is for ``send`` to clear: the last chunk of such a turn
        carries ``reply.meta[TYPING_SHOWN]``, and another instance may send it. A turn that
        sends nothing calls :meth:`clear_typing` instead.
        """

    async def clear_typing(self, address: ReplyAddress) -> None:  # noqa: B027 - optional
        """Take back a lasting "working on it" hint: the turn it was shown for sends nothing."""

    async def fetch_attachment(self, attachment: Attachment, *, max_bytes: int | None = None) -> bytes:
        """The bytes of an inbound attachment (``attachment.ref``), downloaded on demand.

        Raises ``ValueError`` when it is larger than ``max_bytes`` (or the adapter's own
        cap) or cannot be fetched; ``NotImplementedError`` if the channel has no files.
        """
        raise NotImplementedError(f"channel {self.channel!r} cannot fetch attachments")

    def status(self) -> dict[str, Any]:
        """A small JSON-able state summary for ``/api/status``. Never include secrets."""
        return {}


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """How a plugin offers a channel: its name, config schema, and a factory.

    The gateway builds one adapter per ``[channels.<channel>.<account>]``
    table, validating the table with ``config_model`` first.

    ``config_loader`` may stand in for ``config_model``: a function returning the
    model, called only when a table of this channel is validated. With it (and a
    ``factory`` that imports the adapter when called), a plugin module that
    offers a channel imports nothing heavy until someone configures the channel.
    """

    channel: str
    factory: Callable[[str, Any], Adapter]
    config_model: type[BaseModel] | None = None
    description: str = ""
    config_loader: Callable[[], type[BaseModel]] | None = None

    def load_config_model(self) -> type[BaseModel] | None:
        """``config_model``, or what ``config_loader`` returns (imported on first use)."""
        if self.config_model is None and self.config_loader is not None:
            return self.config_loader()
        return self.config_model

    def validate(self, raw_config: dict[str, Any]) -> Any:
        """The account's table validated by the config model (raises pydantic's ValidationError)."""
        model = self.load_config_model()
        if model is None:
            return raw_config
        return model.model_validate(raw_config)

    def build(self, account: str, raw_config: dict[str, Any]) -> Adapter:
        return self.factory(account, self.validate(raw_config))

