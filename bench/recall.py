"""Memory recall benchmark: storage/memories.py's pgvector recall vs a bare query on the same HNSW index.

A database holds ``--rows`` memories (default 30 000; the target is stated for
100 000) of ``--dim`` dimensions (one of the sizes migration 004 indexes),
embedded as clustered random vectors: 1 000 Gaussian centres, each memory a
centre plus Gaussian noise (``--noise`` per coordinate; 1.0 makes neighbours
within a cluster about 0.5 cosine apart, unrelated memories about 0). Queries
are drawn the same way, deterministically (``--seed``). Uniform random vectors
(``--noise`` large) have no neighbourhoods and are the worst case for any ANN index.

90% of the rows belong to one user ("heavy": what HNSW is for), 2 "medium"
users own 2.5% each, and users of 100 memories share the rest. Measured, per
``hnsw.ef_search`` value:

- bare SQL: ``SELECT id … ORDER BY embedding::vector(D) <=> $1 LIMIT 10`` on one
  asyncpg connection, the same HNSW index, no user filter;
- ours: ``MemoryRepo.search_vector`` (pool, user and model filter, score,
  fallback to exact search when the index starves) for each kind of user;
- recall@10 against the exact top 10 (a scan and sort without the index).

Bare and ours alternate query by query, so load changes hit both alike.

    python bench/recall.py                          # ~1-2 minutes on 2 cores
    python bench/recall.py --rows 100000            # the target size (index build takes minutes)
    python bench/recall.py --dim 1536 --ef 40,100,200
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from pgvector.asyncpg import register_vector

from bench._common import (
    embedded_server,
    fmt,
    fresh_database,
    loadavg,
    machine,
    pct,
    quiet_logging,
    server_version,
    table,
)
from storage import Database, MemoryRepo
from storage.memories import HNSW_DIMS, _nearest_sql

MODEL, HEAVY, CENTRES, K = "bench-embed", "heavy", 1000, 10


def population(rows: int) -> list[tuple[str, int]]:
    """(user, memories): 90% heavy, 2 x 2.5% medium, the rest in users of 100."""
    heavy, medium = int(rows * 0.9), int(rows * 0.025)
    light = rows - heavy - 2 * medium
    users = [(HEAVY, heavy), ("medium-1", medium), ("medium-2", medium)]
    users += [(f"light-{i}", 100) for i in range(light // 100)]
    if light % 100:
        users.append((f"light-{light // 100}", light % 100))
    return users


def centres(seed: int, dim: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(CENTRES)]


async def load(url: str, users: list[tuple[str, int]], dim: int, noise: float, seed: int) -> dict[str, float]:
    """Bulk-insert the memories, then build the HNSW index once (as after a restore).

    The migration's index is dropped first and re-created from its own definition:
    100 000 inserts into a live HNSW graph take far longer than one build.
    """
    conn = await asyncpg.connect(url)
    await register_vector(conn)
    timings: dict[str, float] = {}
    try:
        index = f"memories_hnsw_{dim}"
        definition = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = $1", index)
        await conn.execute(f"DROP INDEX {index}")
        await conn.execute("CREATE TEMP TABLE centres (id int PRIMARY KEY, v vector)")
        await conn.executemany("INSERT INTO centres VALUES ($1, $2)", list(enumerate(centres(seed, dim))))
        await conn.execute("CREATE TEMP TABLE owners (first bigint, last bigint, user_key text)")
        first, spans = 1, []
        for user, n in users:
            spans.append((first, first + n - 1, user))
            first += n
        await conn.executemany("INSERT INTO owners VALUES ($1, $2, $3)", spans)
        started = time.perf_counter()
        await conn.execute("SELECT setseed($1)", (seed % 1000) / 1000)
        # One backend, no parallel workers: random_normal() then runs in a fixed order (deterministic).
        await conn.execute("SET max_parallel_workers_per_gather = 0")
        # The correlated subquery (g > 0) makes Postgres draw fresh noise for every row.
        await conn.execute(
            "INSERT INTO memories (user_key, content, embedding, embedding_model)"
            " SELECT o.user_key, 'memory ' || g, c.v + (SELECT array_agg(random_normal(0, $3)::real)"
            "   FROM generate_series(1, $2) WHERE g > 0)::vector, $4"
            " FROM generate_series(1, $1::bigint) g"
            " JOIN owners o ON g BETWEEN o.first AND o.last"
            " JOIN centres c ON c.id = (g * 7919) % $5",
            first - 1, dim, noise, MODEL, CENTRES,
        )
        timings["insert"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '1GB'")  # the graph fits: a fast in-memory build
        await conn.execute(definition)
        timings["index build"] = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE memories")
    finally:
        await conn.close()
    return timings


def queries(seed: int, dim: int, noise: float, n: int) -> list[list[float]]:
    base = centres(seed, dim)
    rng = random.Random(seed + 1)
    return [[x + rng.gauss(0, noise) for x in base[rng.randrange(CENTRES)]] for _ in range(n)]


async def exact_top(conn: asyncpg.Connection, q: list[float], user: str | None, min_score: float = -1.0) -> list[int]:
    """The true top 10 (of those scoring at least ``min_score``): the plain column
    matches no index, so Postgres scans and sorts."""
    if user is None:
        rows = await conn.fetch("SELECT id, embedding <=> $1 AS d FROM memories ORDER BY d, id LIMIT 10", q)
    else:
        rows = await conn.fetch(
            "SELECT id, embedding <=> $3 AS d FROM memories WHERE user_key = $1 AND embedding_model = $2"
            " ORDER BY d, id LIMIT 10", user, MODEL, q)
    return [r["id"] for r in rows if 1 - r["d"] >= min_score]


async def timed(call: Awaitable[list[int]]) -> tuple[float, list[int]]:
    started = time.perf_counter()  # a coroutine starts running only when awaited
    ids = await call
    return time.perf_counter() - started, ids


class Series:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: list[float] = []
        self.hits = self.asked = 0

    def add(self, seconds: float, got: list[int], truth: list[int]) -> None:
        self.seconds.append(seconds)
        self.hits += len(set(got) & set(truth))
        self.asked += len(truth)

    def row(self, ef: int, base: Series | None) -> list[str]:
        ms = [s * 1000 for s in self.seconds]
        ratio = fmt(statistics.median(ms) / statistics.median(s * 1000 for s in base.seconds), 2) if base else ""
        recall = fmt(self.hits / self.asked, 3) if self.asked else "-"
        return [self.name, str(ef), str(len(ms)), fmt(pct(ms, 0.5), 2), fmt(pct(ms, 0.99), 2),
                fmt(statistics.fmean(ms), 2), ratio, recall]


class Run:
    """The queries, their exact answers and the two ways of asking, for one ef_search value."""

    def __init__(self, conn: asyncpg.Connection, args: argparse.Namespace, qs: list[list[float]],
                 truth_all: list[list[int]], truth: dict[str, list[list[int]]], sizes: dict[str, int]) -> None:
        self.conn, self.args, self.qs = conn, args, qs
        self.truth_all, self.truth, self.sizes = truth_all, truth, sizes
        self.bare_sql = (f"SELECT id FROM memories WHERE vector_dims(embedding) = {args.dim}"
                         f" ORDER BY embedding::vector({args.dim}) <=> $1 LIMIT 10")
        self.repo: MemoryRepo | None = None

    async def bare(self, q: list[float]) -> list[int]:
        return [r["id"] for r in await self.conn.fetch(self.bare_sql, q)]

    async def ours(self, user: str, q: list[float]) -> list[int]:
        assert self.repo is not None
        found = await self.repo.search_vector(user, q, MODEL, K, min_score=self.args.min_score)
        return [int(m["id"]) for m in found]

    async def at(self, ef: int, url: str) -> tuple[list[list[str]], Database]:
        name = await self.conn.fetchval("SELECT current_database()")
        await self.conn.execute(f"SET hnsw.ef_search = {ef}")
        # The gateway's pool gets the setting as every new session would (ALTER DATABASE).
        await self.conn.execute(f'ALTER DATABASE "{name}" SET hnsw.ef_search = {ef}')
        db = Database(url, pool_max=2)
        await db.connect(migrate=False)
        self.repo = MemoryRepo(db)
        for q in self.qs[: min(20, len(self.qs))]:  # warm-up: index pages cached, statements prepared
            await self.bare(q)
            await self.ours(HEAVY, q)
        base, mine = Series("bare SQL, same index (no filter)"), Series("search_vector, heavy user (90%)")
        probes = {u: Series(f"search_vector, {u} ({self.sizes[u]} rows)") for u in self.truth if u != HEAVY}
        for i, q in enumerate(self.qs):
            order = [(base, self.bare(q), self.truth_all[i]), (mine, self.ours(HEAVY, q), self.truth[HEAVY][i])]
            for series, call, t in (order if i % 2 else order[::-1]):  # alternate who goes first
                seconds, ids = await timed(call)
                series.add(seconds, ids, t)
            for user, series in probes.items():
                seconds, ids = await timed(self.ours(user, q))
                series.add(seconds, ids, self.truth[user][i])
        return [base.row(ef, None), mine.row(ef, base), *(s.row(ef, base) for s in probes.values())], db


async def measure(url: str, args: argparse.Namespace, users: list[tuple[str, int]]) -> tuple[list[list[str]], dict[str, str]]:
    qs = queries(args.seed, args.dim, args.noise, args.queries)
    sizes = dict(users)
    probes = [u for u in ("medium-1", "light-0") if u in sizes]
    conn = await asyncpg.connect(url)
    await register_vector(conn)
    try:
        truth_all = [await exact_top(conn, q, None) for q in qs]
        truth = {u: [await exact_top(conn, q, u, args.min_score) for q in qs] for u in [HEAVY, *probes]}
        exact = Series("exact scan, heavy user (no index)")
        for q, t in zip(qs[:10], truth[HEAVY][:10], strict=True):
            seconds, ids = await timed(exact_top(conn, q, HEAVY, args.min_score))
            exact.add(seconds, ids, t)
        run = Run(conn, args, qs, truth_all, truth, sizes)
        rows: list[list[str]] = []
        plans: dict[str, str] = {}
        for ef in args.ef:
            ef_rows, db = await run.at(ef, url)
            rows += ef_rows
            if not plans:
                plans = await explain(db, qs[0], args.dim, [HEAVY, *probes])
            await db.close()
        exact_row = exact.row(0, None)
        rows.append([exact_row[0], "-", *exact_row[2:]])
        return rows, plans
    finally:
        await conn.close()


async def explain(db: Database, q: list[float], dim: int, users: list[str]) -> dict[str, str]:
    """Which index the recall query's first statement used for each kind of user."""
    out = {}
    for user in users:
        lines = [r[0] for r in await db.fetch("EXPLAIN " + _nearest_sql(dim), user, q, MODEL, K)]
        scan = next((ln.strip() for ln in lines if " on memories" in ln), lines[0].strip())
        out[user] = scan.split("  (cost")[0]
    return out


async def amain(args: argparse.Namespace) -> None:
    server = await asyncio.to_thread(embedded_server, args.data_dir)
    pg = await server_version(server)
    users = population(args.rows)
    async with fresh_database(server) as url:
        db = Database(url)
        await db.connect()  # migrations, the HNSW indexes of 004 included
        await db.close()
        conn = await asyncpg.connect(url)
        vector_version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        await conn.close()
        timings = await load(url, users, args.dim, args.noise, args.seed)
        print(f"loaded {args.rows} memories: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
              flush=True)
        rows, plans = await measure(url, args, users)
    notes = [
        f"machine: {machine()}; load average {loadavg()}; PostgreSQL {pg} (embedded, pgserver), pgvector {vector_version}",
        f"data: {args.rows} memories, {args.dim} dims, {CENTRES} clusters, noise {args.noise}/coordinate, seed {args.seed};"
        f" {len(users)} users; index built in {timings['index build']:.0f}s (m=16, ef_construction=64)",
        "ratio: median latency / median of the bare query (target <= 1.5 for the heavy user);"
        f" recall@10 vs an exact scan (target >= 0.95); min_score {args.min_score}",
        "medium/light users own too small a share for the HNSW scan (it sees ef_search rows of everybody):"
        " search_vector then runs the exact search, which is why their recall is 1.0",
        "first statement's plan: " + "; ".join(f"{u}: {p}" for u, p in plans.items()),
    ]
    header = ["query", "ef_search", "n", "p50 ms", "p99 ms", "mean ms", "ratio", "recall@10"]
    print(table("soulgate memory recall benchmark — top-10 cosine, HNSW vs bare SQL", header, rows, notes),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=30_000, help="memories stored (target: 100000)")
    parser.add_argument("--dim", type=int, default=384, choices=sorted(HNSW_DIMS))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="40,100", help="hnsw.ef_search values to measure (comma-separated)")
    parser.add_argument("--noise", type=float, default=1.0, help="per-coordinate noise around a cluster centre")
    parser.add_argument("--min-score", type=float, default=0.25, help="the agents' default memory.min_score")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", help="embedded Postgres data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    args.ef = [int(x) for x in args.ef.split(",") if x.strip()]
    if not args.ef or any(not 1 <= e <= 1000 for e in args.ef):
        parser.error("--ef takes values between 1 and 1000 (pgvector's range)")
    quiet_logging()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
