"""Long-term memories per user: full-text and pgvector cosine recall."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .database import Database

__all__ = ["HNSW_DIMS", "MemoryRepo", "fts_query"]

_WORD = re.compile(r"\w+", re.UNICODE)
_COLUMNS = "id, agent, content, conversation_key, created_at"
#: embedding sizes with an HNSW index (storage/migrations/004_memories_hnsw.sql)
HNSW_DIMS = frozenset({384, 768, 1024, 1536})


def _nearest_sql(indexed_dim: int | None) -> str:
    """The ``$4`` memories of user ``$1`` nearest to ``$2`` among those of model ``$3``.

    With ``indexed_dim`` the query names the indexed expression and the index's
    predicate literally (a parameter would not match a partial index in a generic
    plan), so Postgres can walk the HNSW graph. Without it the plain column matches
    no index: Postgres reads the user's rows (memories_user) and sorts them, exactly.
    The size filter also keeps rows of another size, whose distance is an error, out.
    """
    if indexed_dim is not None:
        distance = f"embedding::vector({indexed_dim}) <=> $2"
        size, tiebreak = f"vector_dims(embedding) = {indexed_dim}", ""
    else:  # the size is $5
        distance, size, tiebreak = "embedding <=> $2", "vector_dims(embedding) = $5", ", id DESC"
    return (
        f"SELECT {_COLUMNS}, {distance} AS distance FROM memories"
        f" WHERE user_key = $1 AND embedding_model = $3 AND {size}"
        f" ORDER BY {distance}{tiebreak} LIMIT $4"
    )


def fts_query(text: str, max_words: int = 32) -> str | None:
    """The words of ``text`` OR-ed into a ``to_tsquery`` string (None: no usable word).

    Plain ``websearch_to_tsquery`` ANDs every word, so a question rarely matches
    the sentence that answers it; OR-ing and ranking finds it. Only word
    characters reach the query, so user text cannot inject tsquery syntax.
    """
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:max_words]
    return " | ".join(words) if words else None


def _row(r: Any, score: float | None = None) -> dict[str, Any]:
    out = dict(r)
    out["created_at"] = r["created_at"].isoformat()
    if score is not None:
        out["score"] = float(score)
    return out


class MemoryRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        user_key: str,
        content: str,
        *,
        agent: str | None = None,
        conversation_key: str | None = None,
        embedding: Sequence[float] | None = None,
        embedding_model: str | None = None,
    ) -> tuple[int, bool]:
        """Store a memory; returns ``(id, created)``. The same text twice for a user is one memory,
        so a turn retried after a crash does not store its facts twice."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            # Serialize per user so two concurrent identical inserts cannot both pass the check.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memories:{user_key}")
            existing = await conn.fetchval(
                "SELECT id FROM memories WHERE user_key = $1 AND content = $2 LIMIT 1", user_key, content
            )
            if existing is not None:
                return int(existing), False
            new_id = await conn.fetchval(
                "INSERT INTO memories (user_key, agent, content, conversation_key, embedding, embedding_model)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                user_key, agent, content, conversation_key,
                list(embedding) if embedding is not None else None,
                embedding_model if embedding is not None else None,
            )
            return int(new_id), True

    async def recent(self, user_key: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM memories WHERE user_key = $1 ORDER BY id DESC LIMIT $2",
            user_key, limit,
        )
        return [_row(r) for r in rows]

    async def count(self, user_key: str) -> int:
        rows = await self.db.fetch("SELECT count(*) AS n FROM memories WHERE user_key = $1", user_key)
        return int(rows[0]["n"])

    async def search_text(self, user_key: str, text: str, limit: int) -> list[dict[str, Any]]:
        """Full-text recall, best ``ts_rank`` first."""
        query = fts_query(text)
        if query is None:
            return []
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS}, ts_rank(tsv, q) AS score"
            " FROM memories, to_tsquery('english', $2) AS q"
            " WHERE user_key = $1 AND tsv @@ q ORDER BY score DESC, id DESC LIMIT $3",
            user_key, query, limit,
        )
        return [_row({k: r[k] for k in r.keys() if k != "score"}, r["score"]) for r in rows]

    async def search_vector(
        self, user_key: str, embedding: Sequence[float], model: str, limit: int, min_score: float
    ) -> list[dict[str, Any]]:
        """Cosine recall among the memories embedded by ``model``, most similar first.

        For the sizes in :data:`HNSW_DIMS` the HNSW index answers first. An HNSW scan
        yields only its ``hnsw.ef_search`` nearest rows of *all* users before our
        filter, so a user owning a small share of the table may get fewer rows than
        asked although more exist; then the exact search runs instead. When it
        yields ``limit`` rows they are that user's nearest (as far as HNSW is exact):
        every row of the user closer than them was among the rows it looked at.
        """
        if limit <= 0:
            return []
        vector, dim = list(embedding), len(embedding)
        rows: list[Any] = []
        if dim in HNSW_DIMS:
            rows = await self.db.fetch(_nearest_sql(dim), user_key, vector, model, limit)
        if len(rows) < limit:
            rows = await self.db.fetch(_nearest_sql(None), user_key, vector, model, limit, dim)
        # min_score after the LIMIT: the score falls with the distance, so this keeps the
        # top-`limit` of those above it, and the row count above tells whether HNSW starved.
        kept = sorted((r for r in rows if 1 - r["distance"] >= min_score), key=lambda r: (r["distance"], -r["id"]))
        return [_row({k: r[k] for k in r.keys() if k != "distance"}, 1 - r["distance"]) for r in kept]

    async def unembedded(self, user_key: str, model: str, limit: int) -> list[tuple[int, str]]:
        """Memories of a user not yet embedded by ``model`` (stored before it was configured,
        or while it was down), newest first."""
        rows = await self.db.fetch(
            "SELECT id, content FROM memories WHERE user_key = $1"
            " AND (embedding IS NULL OR embedding_model IS DISTINCT FROM $2) ORDER BY id DESC LIMIT $3",
            user_key, model, limit,
        )
        return [(int(r["id"]), str(r["content"])) for r in rows]

    async def set_embeddings(self, model: str, items: Sequence[tuple[int, Sequence[float]]]) -> None:
        if not items:
            return
        async with self.db.pool.acquire() as conn:
            await conn.executemany(
                "UPDATE memories SET embedding = $2, embedding_model = $3 WHERE id = $1",
                [(memory_id, list(vec), model) for memory_id, vec in items],
            )

    async def delete(self, user_key: str, ids: Sequence[int]) -> int:
        """Delete a user's memories by id (ids of other users are ignored)."""
        async with self.db.pool.acquire() as conn:
            res = await conn.execute(
                "DELETE FROM memories WHERE user_key = $1 AND id = ANY($2::bigint[])", user_key, list(ids)
            )
        return int(res.split()[-1])

    async def delete_all(self, user_key: str) -> int:
        async with self.db.pool.acquire() as conn:
            res = await conn.execute("DELETE FROM memories WHERE user_key = $1", user_key)
        return int(res.split()[-1])
