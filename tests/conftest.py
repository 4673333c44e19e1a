"""Fixtures shared by the storage-level tests (the gateway-level ones come from gateway.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from storage import Database, Store


@pytest_asyncio.fixture
async def store(soulgate_database_url: str) -> AsyncIterator[Store]:
    """The repositories over a fresh, migrated database, as the gateway uses them."""
    db = Database(soulgate_database_url, pool_min=1, pool_max=8)
    await db.connect()
    try:
        yield Store(db)
    finally:
        await db.close()


@pytest_asyncio.fixture
async def db(store: Store) -> Database:
    """The migrated database itself, for tests below the repositories."""
    return store.db
