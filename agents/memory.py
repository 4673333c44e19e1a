"""Long-term memory per user: facts an agent (or the user) stores and recalls later.

Recall uses pgvector cosine similarity when ``[agents] embedding_model`` names a
model, and Postgres full-text search when none does (or when the embedding
model is down, so recall degrades instead of failing). A memory stored while no
embedding was possible is embedded the next time its user's memories are
searched by vector. The SQL lives in :mod:`storage.memories`; embedding calls go
through :mod:`agents.llm` and are accounted like every other LLM call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gateway import Envelope, Services

from .llm import LLM, LLMUnavailable, runs_from_attempts

__all__ = ["MAX_MEMORIES_PER_USER", "MAX_MEMORY_CHARS", "Memory", "MemoryInputError", "user_key"]

log = logging.getLogger("soulgate.agents.memory")

MAX_MEMORY_CHARS = 2000
MAX_MEMORIES_PER_USER = 1000
_BACKFILL = 32


class MemoryInputError(ValueError):
    """Bad input for a memory operation; the message is meant for the user."""


def user_key(envelope: Envelope) -> str:
    """Whose memories: one person on one channel account (a Slack user is not their Telegram self)."""
    return f"{envelope.channel}:{envelope.account}:{envelope.sender.id}"


class Memory:
    def __init__(self, services: Services, llm: Callable[[], LLM | None]) -> None:
        self._services = services
        self._llm = llm

    @property
    def _repo(self) -> Any:
        return self._services.store.memories

    @property
    def embedding_model(self) -> str | None:
        model: str | None = self._services.config.agents.embedding_model
        return model or None

    def describe(self) -> str:
        model = self.embedding_model
        return f"embeddings ({model})" if model else "full-text search"

    async def _account(self, runs: list[dict[str, Any]] | None, rows: list[dict[str, Any]],
                       envelope: Envelope) -> None:
        if runs is not None:
            runs.extend(rows)
            return
        try:
            await self._services.store.runs.record(rows, conversation_key=envelope.conversation_key)
        except Exception:  # accounting must not turn a stored memory into an error
            log.exception("could not record embedding runs")

    async def _embed(self, texts: list[str], envelope: Envelope, agent: str | None,
                     runs: list[dict[str, Any]] | None) -> list[list[float]] | None:
        model, llm = self.embedding_model, self._llm()
        if model is None or llm is None:
            return None
        try:
            vectors, attempt = await llm.embed(model, texts)
        except LLMUnavailable as exc:
            await self._account(runs, runs_from_attempts(agent or "memory", exc.attempts), envelope)
            return None
        await self._account(runs, runs_from_attempts(agent or "memory", [attempt]), envelope)
        return vectors

    async def remember(
        self, envelope: Envelope, text: str, *, agent: str | None = None,
        runs: list[dict[str, Any]] | None = None,
    ) -> tuple[int, bool]:
        """Store a fact about the sender; returns ``(id, created)``."""
        text = " ".join(text.split())
        if not text:
            raise MemoryInputError("there is nothing to remember: the text is empty")
        if len(text) > MAX_MEMORY_CHARS:
            raise MemoryInputError(f"a memory can be at most {MAX_MEMORY_CHARS} characters (this one has {len(text)})")
        key = user_key(envelope)
        if await self._repo.count(key) >= MAX_MEMORIES_PER_USER:
            raise MemoryInputError(f"you already have {MAX_MEMORIES_PER_USER} memories; /forget some first")
        vectors = await self._embed([text], envelope, agent, runs)
        return await self._repo.add(
            key, text, agent=agent, conversation_key=envelope.conversation_key,
            embedding=vectors[0] if vectors else None,
            embedding_model=self.embedding_model if vectors else None,
        )

    async def recall(
        self, envelope: Envelope, query: str, limit: int = 5, *, min_score: float = 0.25,
        agent: str | None = None, runs: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """The sender's memories most related to ``query``, best first (each with a ``score``)."""
        query = " ".join(query.split())[:MAX_MEMORY_CHARS]
        if not query or limit <= 0:
            return []
        key = user_key(envelope)
        model = self.embedding_model
        if model is not None and self._llm() is not None:
            missing = await self._repo.unembedded(key, model, _BACKFILL)
            vectors = await self._embed([query] + [t for _i, t in missing], envelope, agent, runs)
            if vectors is not None:
                await self._repo.set_embeddings(model, [(i, v) for (i, _t), v in zip(missing, vectors[1:], strict=True)])
                return await self._repo.search_vector(
                    key, vectors[0], model, limit, min_score)
            log.warning("embedding model %s unavailable: recalling by full-text search", model)
        return await self._repo.search_text(key, query, limit)

    async def recent(self, envelope: Envelope, limit: int = 20) -> list[dict[str, Any]]:
        return await self._repo.recent(user_key(envelope), limit)

    async def forget(self, envelope: Envelope, ids: list[int]) -> int:
        return int(await self._repo.delete(user_key(envelope), ids))

    async def forget_all(self, envelope: Envelope) -> int:
        return int(await self._repo.delete_all(user_key(envelope)))
