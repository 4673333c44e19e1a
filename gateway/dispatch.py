"""Dispatch: claim an inbox row, run its turn outside any transaction, commit the outcome.

A turn is: inbound filters → slash command or routed responder → reply
transforms → render into chunks → one transaction (outbox rows, inbox done,
history, audit, runs). A plugin that fails gives the user a short generic
error reply; infrastructure trouble (the database) releases the row so it is
retried; a crash leaves the row claimed until its lease expires and another
worker takes it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from storage import ClaimedTurn, LostClaim, PendingChunk, TurnRecord, commit_turn

from .adapter import TYPING_SHOWN
from .claims import Claimer
from .envelope import Envelope, Reply
from .errors import PluginError
from .persist import persist
from .router import parse_command, resolve_route
from .skills import CommandContext
from .turn import Turn, TurnResult

if TYPE_CHECKING:
    from .runtime import Gateway

__all__ = ["GENERIC_ERROR", "Dispatcher"]

log = logging.getLogger("soulgate.dispatch")
GENERIC_ERROR = "Sorry, something went wrong while handling your message. Please try again later."
HISTORY_LIMIT = 50


@dataclass(slots=True)
class TypingHint:
    """Whether a turn showed the "working on it" hint, so that a lasting one gets cleared.

    ``closed`` once the turn has run: no further hint starts, and the one being sent
    (``calling``) is awaited, so no instance can clear it before it was shown.
    """

    shown: bool = False
    closed: bool = False
    calling: bool = False


class Dispatcher:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    # -- worker loop ---------------------------------------------------------------

    async def worker(self, name: str) -> None:
        cfg = self.gw.config.workers
        wake = self.gw.wakeups.inbox
        claim: ClaimedTurn | None = None
        chained = False  # the last commit looked for a next row already (and found none)
        inbox = self.gw.store.inbox
        claimer: Claimer[ClaimedTurn] = Claimer(lambda token: inbox.reclaim(token, cfg.lease_seconds))
        while claim is not None or not self.gw.stopping.is_set():
            if claim is None:
                if not chained:
                    wake.clear()  # before claiming, so a notify during the claim is not lost
                    try:
                        claim = await claimer.claim(partial(inbox.claim, name, cfg.lease_seconds))
                    except Exception as exc:
                        self.gw.note_db_trouble(exc)
                        await asyncio.sleep(min(cfg.idle_poll_seconds, 1.0))
                        continue
                    self.gw.note_db_ok()
                if claim is None:
                    chained = False
                    with suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), cfg.idle_poll_seconds)
                    continue
                wake.set()  # there may be more: let one more idle worker look (see WakeOne)
            self.gw.inflight += 1
            try:
                next_for = None if self.gw.stopping.is_set() else name
                committed, claim = await self.run_claimed(claim, next_for=next_for)
                chained = committed and next_for is not None and claim is None
            finally:
                self.gw.inflight -= 1

    async def run_claimed(
        self, claim: ClaimedTurn, *, next_for: str | None = None
    ) -> tuple[bool, ClaimedTurn | None]:
        """Run the turn and commit it; returns whether it was committed and, with ``next_for``
        (a worker name), the next row the commit claimed for that worker (see ``commit_turn``)."""
        lease = self.gw.config.workers.lease_seconds
        next_token = uuid.uuid4()  # the same for every try of the commit (see commit_turn)
        renewer = asyncio.create_task(self._renew(claim, lease))
        hint = TypingHint()
        typing = asyncio.create_task(self._typing(claim.envelope, hint))
        started = asyncio.get_running_loop().time()
        following: ClaimedTurn | None = None
        committed = False
        try:
            record = await self.build_record(claim)
            await self._typing_over(claim, record, hint, typing)
            # The turn has run: a database blip now must not make it run again.
            following = await persist(
                lambda: commit_turn(self.gw.store.db, claim, record, ttl_seconds=self.gw.config.delivery.ttl_seconds,
                                    claim_next=None if next_for is None else (next_for, lease),
                                    next_token=next_token),
                within=lease, on_trouble=self.gw.note_db_trouble,
            )
            committed = True
            self.gw.metrics.turns.labels(record.status).inc()
        except LostClaim:
            log.warning("lease on %s was lost; another worker owns the turn", claim.inbox_id)
        except asyncio.CancelledError:
            raise  # the row stays claimed; its lease expires and another worker takes it
        except Exception as exc:
            log.exception("turn %s could not be committed; it will be retried", claim.inbox_id)
            self.gw.note_db_trouble(exc)
            error = f"{type(exc).__name__}: {exc}"
            with suppress(Exception):  # given back as soon as the database answers, not after the lease
                await persist(lambda: self.gw.store.inbox.release(claim, error), within=lease)
        finally:
            renewer.cancel()
            typing.cancel()
            self.gw.metrics.turn_seconds.observe(asyncio.get_running_loop().time() - started)
        return committed, following

    async def _renew(self, claim: ClaimedTurn, lease: float) -> None:
        while True:
            await asyncio.sleep(lease / 3)
            with suppress(Exception):
                await self.gw.store.inbox.renew(claim, lease)

    async def _typing(self, env: Envelope, hint: TypingHint) -> None:
        adapter = self.gw.adapters.get((env.channel, env.account))
        if adapter is None or not env.addressed:
            return
        await asyncio.sleep(0.5)  # quick answers need no typing hint
        while not hint.closed:
            hint.shown = hint.calling = True  # before the call: a hint that may have been shown counts
            try:
                with suppress(Exception):
                    await adapter.typing(env.reply_to)
            finally:
                hint.calling = False
            if hint.closed:
                return
            await asyncio.sleep(4.0)

    async def _typing_over(
        self, claim: ClaimedTurn, record: TurnRecord, hint: TypingHint, typing: asyncio.Task[None]
    ) -> None:
        """The turn has run: stop the hint, and make sure a lasting one (a Slack reaction) is
        taken back, by whichever instance sends the turn's last chunk (``TYPING_SHOWN`` on it),
        or here and now when the turn sends nothing."""
        hint.closed = True
        if hint.calling:  # let it land first: otherwise the answer could overtake it
            await asyncio.wait({typing}, timeout=5.0)
        if not hint.shown:
            return
        if record.chunks:
            last = record.chunks[-1]
            record.chunks[-1] = replace(last, reply=replace(last.reply, meta={**last.reply.meta, TYPING_SHOWN: True}))
            return
        env = claim.envelope
        adapter = self.gw.adapters.get((env.channel, env.account))
        if adapter is not None:
            with suppress(Exception):
                await asyncio.wait_for(adapter.clear_typing(env.reply_to), 10.0)

    # -- one turn ----------------------------------------------------------------

    async def build_record(self, claim: ClaimedTurn) -> TurnRecord:
        """Run the turn and collect what it produced (nothing is written here)."""
        env = claim.envelope
        record = TurnRecord()
        if claim.attempts > self.gw.config.workers.max_turn_attempts:
            record.status, record.error = "failed", f"gave up after {claim.attempts - 1} attempts"
            record.audit.append(("turn_failed", None, {"attempts": claim.attempts - 1}))
            await self._add_replies(record, env, [Reply(text=GENERIC_ERROR)])
            return record

        filtered, dropped_by = await self.gw.plugins.call_chain(
            "soulgate_inbound", "envelope", env, envelope=env, services=self.gw.services
        )
        if dropped_by is not None:
            record.audit.append(("inbound_dropped", dropped_by, {"external_id": env.external_id}))
            return record
        if isinstance(filtered, Envelope):
            env = record.envelope = filtered

        command = parse_command(env.text)
        if command is not None:
            replies = await self._run_command(env, *command, record)
            await self._add_replies(record, env, replies)
            return record

        route = resolve_route(env, self.gw.config.routes, self.gw.config.agents.default)
        if env.conversation.kind != "direct" and route.require_mention and not env.addressed:
            return record  # group chatter not meant for us
        if route.allowed_senders and env.sender.id not in route.allowed_senders:
            record.audit.append(("sender_not_allowed", None, {"sender": env.sender.id}))
            return record
        result = await self._respond(env, route, record)
        record.history.append(("user", env.text, {"sender": env.sender.id}))
        for entry in result.history:
            record.history.append((entry.role, entry.content, entry.meta))
        if not result.history:
            record.history.extend(("assistant", r.text, {}) for r in result.replies)
        record.audit.extend((a.kind, a.plugin, a.detail) for a in result.audit)
        record.runs.extend(result.runs)
        await self._add_replies(record, env, result.replies)
        return record

    async def _run_command(
        self, env: Envelope, name: str, args: str, mention: str | None, record: TurnRecord
    ) -> list[Reply]:
        if mention is not None and not env.addressed:
            return []  # "/cmd@other_bot": the adapter found no mention of us, so not ours
        found = self.gw.skills.commands.get(name)
        if found is None:
            if not env.addressed and env.conversation.kind != "direct":
                return []  # probably another bot's command
            return [Reply(text=f"Unknown command `/{name}`. Send /help for the list of commands.")]
        plugin, cmd = found
        ctx = CommandContext(envelope=env, command=name, args=args, services=self.gw.services, plugin=plugin)
        record.audit.append(("command", plugin, {"command": name}))
        try:
            result = await asyncio.wait_for(cmd.handler(ctx), self.gw.plugins.hook_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err: BaseException = exc
            if isinstance(exc, TimeoutError):
                err = PluginError(plugin, f"command /{name}", "timed out")
            await self.gw.plugins.report(plugin, f"command /{name}", err, env)
            return [Reply(text=GENERIC_ERROR)]
        if result is None:
            return []
        return [result if isinstance(result, Reply) else Reply(text=str(result))]

    async def _respond(self, env: Envelope, route: object, record: TurnRecord) -> TurnResult:
        plugin, responder = self.gw.responder
        history = tuple(await self.gw.services.history(env.conversation_key, HISTORY_LIMIT))
        turn = Turn(envelope=env, route=route, history=history, services=self.gw.services)  # type: ignore[arg-type]
        try:
            result = await asyncio.wait_for(responder.respond(turn), self.gw.config.workers.lease_seconds * 5)
            if not isinstance(result, TurnResult):
                raise TypeError(f"respond() returned {type(result).__name__}, not TurnResult")
            return result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.gw.plugins.report(plugin, "respond", exc, env)
            return TurnResult(replies=[Reply(text=GENERIC_ERROR)])

    async def _add_replies(self, record: TurnRecord, env: Envelope, replies: list[Reply]) -> None:
        adapter = self.gw.adapters.get((env.channel, env.account))
        for reply in replies:
            reply, _ = await self.gw.plugins.call_chain(
                "soulgate_reply", "reply", reply, envelope=env, services=self.gw.services
            )
            if not isinstance(reply, Reply) or not (reply.text.strip() or reply.attachments):
                continue
            if reply.in_reply_to is None:
                reply = Reply(text=reply.text, attachments=reply.attachments, in_reply_to=env.id, meta=reply.meta)
            chunks = adapter.render(reply) if adapter is not None else [reply]
            for chunk in chunks:
                record.chunks.append(
                    PendingChunk(
                        seq=len(record.chunks), address=env.reply_to,
                        destination=env.conversation_key, reply=chunk,
                    )
                )
