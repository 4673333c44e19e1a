"""pgvector recall through the HNSW indexes of migration 004 (storage/memories.py).

The HNSW path must give the same answers as an exact search: for a user who owns
most rows (the index answers), for users who own few (the index, scanning the
nearest rows of everybody, starves and the exact search takes over), and for
rows of another embedding size (skipped, not an error). Planner settings force
the index where a small table would otherwise be scanned.
"""

from __future__ import annotations

import math
import random

import asyncpg

from storage import Database, MemoryRepo
from storage.memories import HNSW_DIMS, _nearest_sql

MODEL = "emb"


def unit(rng: random.Random, dim: int) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def forced_index(url: str) -> Database:
    """A pool whose sessions prefer any index scan over scanning and sorting (tiny tables)."""
    conn = await asyncpg.connect(url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        for setting in ("enable_seqscan", "enable_sort", "enable_bitmapscan"):
            await conn.execute(f'ALTER DATABASE "{name}" SET {setting} = off')
    finally:
        await conn.close()
    database = Database(url)
    await database.connect()
    return database


async def test_every_indexed_size_has_its_hnsw_index(db: Database) -> None:
    rows = await db.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'memories'")
    defs = {r["indexname"]: r["indexdef"] for r in rows}
    for dim in HNSW_DIMS:
        definition = defs[f"memories_hnsw_{dim}"]
        assert "USING hnsw" in definition and f"vector({dim})" in definition
        assert f"vector_dims(embedding) = {dim}" in definition and "vector_cosine_ops" in definition


async def test_recall_query_can_use_the_index(soulgate_database_url: str) -> None:
    forced = await forced_index(soulgate_database_url)
    try:
        for dim in sorted(HNSW_DIMS):
            query = [0.0] * dim
            query[0] = 1.0
            plan = await forced.fetch("EXPLAIN " + _nearest_sql(dim), "u", query, MODEL, 10)
            assert f"memories_hnsw_{dim}" in "\n".join(r[0] for r in plan)
        exact = await forced.fetch("EXPLAIN " + _nearest_sql(None), "u", [1.0, 0.0], MODEL, 10, 2)
        assert "hnsw" not in "\n".join(r[0] for r in exact)
    finally:
        await forced.close()


async def test_hnsw_recall_matches_exact_for_big_and_small_users(soulgate_database_url: str, db: Database) -> None:
    rng, dim = random.Random(3), 384
    repo = MemoryRepo(db)
    owners = ["big"] * 150 + ["small"] * 4 + ["medium"] * 20
    stored: dict[str, list[tuple[int, list[float]]]] = {}
    for n, owner in enumerate(owners):
        vec = unit(rng, dim)
        memory_id, _ = await repo.add(owner, f"fact {n}", embedding=vec, embedding_model=MODEL)
        stored.setdefault(owner, []).append((memory_id, vec))
    forced = await forced_index(soulgate_database_url)
    try:
        forced_repo = MemoryRepo(forced)
        for owner, limit in (("big", 10), ("small", 10), ("medium", 8)):
            for _ in range(3):
                query = unit(rng, dim)
                expected = sorted(stored[owner], key=lambda item: -cosine(item[1], query))[:limit]
                got = await forced_repo.search_vector(owner, query, MODEL, limit, min_score=-1.0)
                assert [g["id"] for g in got] == [i for i, _ in expected]
                assert all(math.isclose(g["score"], cosine(v, query), abs_tol=1e-4)
                           for g, (_, v) in zip(got, expected, strict=True))
    finally:
        await forced.close()


async def test_min_score_limit_and_other_sizes(db: Database) -> None:
    repo = MemoryRepo(db)
    near, far = [1.0, 0.0] + [0.0] * 382, [0.0, 1.0] + [0.0] * 382
    near_id, _ = await repo.add("u", "near", embedding=near, embedding_model=MODEL)
    await repo.add("u", "far", embedding=far, embedding_model=MODEL)
    small_id, _ = await repo.add("u", "another size", embedding=[1.0, 0.5], embedding_model=MODEL)
    await repo.add("u", "other model", embedding=near, embedding_model="other")
    await repo.add("someone else", "near too", embedding=near, embedding_model=MODEL)

    got = await repo.search_vector("u", near, MODEL, 5, min_score=0.5)
    assert [(g["id"], g["content"], round(g["score"], 3)) for g in got] == [(near_id, "near", 1.0)]
    both = await repo.search_vector("u", near, MODEL, 5, min_score=-1.0)
    assert [g["content"] for g in both] == ["near", "far"]  # the 2-d row is not compared
    assert [g["content"] for g in await repo.search_vector("u", near, MODEL, 1, min_score=-1.0)] == ["near"]
    assert await repo.search_vector("u", near, MODEL, 0, min_score=-1.0) == []
    [two_d] = await repo.search_vector("u", [1.0, 0.4], MODEL, 5, min_score=0.0)
    assert two_d["id"] == small_id  # a size without an index: exact search
    assert await repo.search_vector("nobody", near, MODEL, 5, min_score=-1.0) == []
