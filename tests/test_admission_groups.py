"""Admissions that arrive together share one statement, and each keeps its own outcome.

storage/admission.py groups the admissions that queue behind the ones in flight
(issue 9, ingress). These tests drive it through ``InboxRepo.admit``, as the
adapters do, against real Postgres: a group stores each new event once, in arrival
order, names the owner of each duplicate (an earlier event or a group-mate), and an
event Postgres refuses fails alone.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from gateway.testing import make_envelope
from storage import Database, Store
from storage.admission import AdmissionBatcher
from storage.database import connection_trouble


async def _count(store: Store, sql: str) -> int:
    return int((await store.db.fetch(sql))[0]["n"])


async def test_a_burst_goes_in_a_few_statements_in_arrival_order(store: Store) -> None:
    admissions = store.inbox.admissions
    envs = [make_envelope(f"m{i}", conversation="one-conv") for i in range(60)]
    results = await asyncio.gather(*(store.inbox.admit(e) for e in envs))
    assert results == [(e.id, True) for e in envs]
    assert admissions.events == 60 and admissions.statements < 20  # grouped, not one each
    # FIFO inside the conversation survives the grouping: claims come in arrival order
    order = []
    while (claim := await store.inbox.claim("w", 30)) is not None:
        order.append(claim.inbox_id)
        await store.db.fetch("UPDATE inbox SET status = 'done' WHERE id = $1", uuid.UUID(claim.inbox_id))
    assert order == [e.id for e in envs]


async def test_duplicates_in_a_group_name_their_owner_and_write_nothing(store: Store) -> None:
    earlier = make_envelope("old", external_id="old-1")
    await store.inbox.admit(earlier)
    new = make_envelope("new", external_id="n-1", alt_ids=("shared",))
    mate = make_envelope("mate", external_id="n-2", alt_ids=("shared",))  # same event, other key (Slack's
    # message + app_mention): the earlier of the group owns it
    retry = make_envelope("old again", external_id="fresh-key", alt_ids=("old-1",))
    plain = make_envelope("plain", external_id="p-1")
    blocker = make_envelope("hold the slot", external_id="b-1")
    slot = store.inbox.admissions
    results = await asyncio.gather(*(store.inbox.admit(e) for e in (blocker, new, mate, retry, plain)))
    assert slot.statements < 5
    assert results == [(blocker.id, True), (new.id, True), (new.id, False), (earlier.id, False), (plain.id, True)]
    # the duplicates took back the keys they wrote: a later event under them is new
    assert await _count(store, "SELECT count(*) AS n FROM inbox_keys WHERE key IN ('n-2', 'fresh-key')") == 0
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == 4
    later = make_envelope("later", external_id="fresh-key")
    assert await store.inbox.admit(later) == (later.id, True)


async def test_an_event_postgres_refuses_fails_alone(store: Store) -> None:
    # a key larger than a btree index entry may be (about 2.7 kB, incompressible) is refused
    huge = make_envelope("huge key", external_id="".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789",
                                                                          k=12_000)))
    good = [make_envelope(f"good {i}") for i in range(8)]
    results = await asyncio.gather(*(store.inbox.admit(e) for e in (good[0], *good[1:4], huge, *good[4:])),
                                   return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and "index row" in str(failed[0])
    assert [r for r in results if not isinstance(r, BaseException)] == [(e.id, True) for e in good]
    # nothing of the refused event is stored, not even its key
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == 8
    assert await _count(store, "SELECT count(*) AS n FROM inbox_keys") == 8
    # the events of the refused group went one at a time, over the lane's own connections
    lane = store.inbox.admissions._lane
    assert lane is not None and lane.opened <= lane.size
    order = []
    while (claim := await store.inbox.claim("w", 30)) is not None:
        order.append(claim.inbox_id)
        await store.db.fetch("UPDATE inbox SET status = 'done' WHERE id = $1", uuid.UUID(claim.inbox_id))
    assert order == [e.id for e in good]  # one conversation: arrival order kept


async def test_crossing_keys_in_concurrent_groups_store_each_key_once(store: Store) -> None:
    # groups in flight together share keys in every order; the keys are locked in one
    # order, so they wait for each other, and each key ends with exactly one owner
    rng = random.Random(7)
    pool = [f"k{i}" for i in range(30)]
    envs = []
    for i in range(150):
        a, b = rng.sample(pool, 2)
        envs.append(make_envelope(f"e{i}", external_id=a, alt_ids=(b,)))
    results = await asyncio.gather(*(store.inbox.admit(e) for e in envs))
    stored = {e.id for e, (owner, created) in zip(envs, results, strict=True) if created}
    assert all(owner in stored for owner, _ in results)  # every duplicate names a stored row
    rows = await store.db.fetch("SELECT key, inbox_id FROM inbox_keys")
    assert {str(r["inbox_id"]) for r in rows} == stored
    # each stored event owns both its keys; each duplicate shares a key with its owner
    by_id = {e.id: {e.external_id, *e.alt_ids} for e in envs}
    owned = {r["key"]: str(r["inbox_id"]) for r in rows}
    for e, (owner, created) in zip(envs, results, strict=True):
        if created:
            assert all(owned[k] == e.id for k in by_id[e.id])
        else:
            assert by_id[e.id] & by_id[owner]
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == len(stored)


async def test_a_connection_lost_mid_statement_fails_every_event_of_its_group(store: Store) -> None:
    store.inbox.admissions = AdmissionBatcher(store.db, lambda: None, max_in_flight=1)
    holder = await store.db.pool.acquire()
    tx = holder.transaction()
    await tx.start()
    try:  # another session holds one of the group's keys, so the group's statement waits on it
        await holder.execute("INSERT INTO inbox_keys VALUES ('fake', 'test', 'held', gen_random_uuid())")
        envs = [make_envelope(f"m{i}") for i in range(5)] + [make_envelope("held", external_id="held")]
        admitting = asyncio.gather(*(store.inbox.admit(e) for e in envs), return_exceptions=True)
        for _ in range(200):
            waiting = await store.db.fetch("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                           " AND query LIKE '%soulgate_admit_batch%'")
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert len(waiting) == 1  # one statement carries all six
        await store.db.fetch("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
        results = await admitting
    finally:
        await tx.rollback()
        await store.db.pool.release(holder)
    assert all(isinstance(r, Exception) and connection_trouble(r) for r in results), results
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == 0
    # the platform retries: the same events then store normally
    again = await asyncio.gather(*(store.inbox.admit(e) for e in envs[:5]))
    assert again == [(e.id, True) for e in envs[:5]]


async def test_a_statement_that_hangs_fails_its_group_in_time_and_the_lane_reconnects(store: Store) -> None:
    # All admissions share two connections: one that hangs (here: waiting on a key another
    # session holds; a dead peer behind a partition looks the same) must not hold them forever.
    store.inbox.admissions = AdmissionBatcher(store.db, lambda: None, max_in_flight=1, timeout=0.5)
    holder = await store.db.pool.acquire()
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute("INSERT INTO inbox_keys VALUES ('fake', 'test', 'held', gen_random_uuid())")
        envs = [make_envelope("held", external_id="held")] + [make_envelope(f"m{i}") for i in range(4)]
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(store.inbox.admit(e) for e in envs), return_exceptions=True)
        took = asyncio.get_running_loop().time() - started
    finally:
        await tx.rollback()
        await store.db.pool.release(holder)
    assert all(isinstance(r, TimeoutError) and connection_trouble(r) for r in results), results
    assert took < 5  # the first statement and the group behind it, 0.5 s each, not "until TCP gives up"
    lane = store.inbox.admissions._lane
    assert lane is not None and lane._idle == []  # the timed-out connections were dropped
    # A timed-out statement's outcome is unknown, as after a lost connection: Postgres may not
    # have heard of the cut before the held key was released. Retried with the same ids (as a
    # plugin channel may) or as the platform retries (fresh ids), each event is stored once.
    again = await asyncio.gather(*(store.inbox.admit(e) for e in envs))
    assert again == [(e.id, True) for e in envs]
    assert lane.opened == 2  # a fresh connection
    redelivered = [make_envelope(e.text, external_id=e.external_id) for e in envs]
    assert await asyncio.gather(*(store.inbox.admit(e) for e in redelivered)) == [(e.id, False) for e in envs]
    assert await _count(store, "SELECT count(*) AS n FROM inbox") == 5
    assert await _count(store, "SELECT count(*) AS n FROM inbox_keys") == 5


@pytest.mark.parametrize("together", [False, True], ids=["alone", "in a group"])
async def test_an_admission_retried_after_its_commit_finds_its_event_stored(store: Store, together: bool) -> None:
    # The first attempt committed but its answer was lost (a cut connection, a timeout): the
    # same envelope comes again. It must not take the stored row's keys for its own, or the
    # platform's next retry would be stored a second time.
    env = make_envelope("hello", external_id="e-1", alt_ids=("alt-1",))
    assert await store.inbox.admit(env) == (env.id, True)
    if together:
        others = [make_envelope(f"other {i}") for i in range(4)]
        results = await asyncio.gather(*(store.inbox.admit(e) for e in (others[0], env, *others[1:])))
        assert results == [(e.id, True) for e in (others[0], env, *others[1:])]
    else:
        assert await store.inbox.admit(env) == (env.id, True)
    assert await _count(store, "SELECT count(*) AS n FROM inbox_keys WHERE key IN ('e-1', 'alt-1')") == 2
    redelivered = make_envelope("hello", external_id="e-1")
    assert await store.inbox.admit(redelivered) == (env.id, False)
    assert await _count(store, "SELECT count(*) AS n FROM inbox WHERE external_id = 'e-1'") == 1


def test_a_batcher_needs_a_slot_and_room() -> None:
    with pytest.raises(ValueError, match="timeout"):
        AdmissionBatcher(None, lambda: None, timeout=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionBatcher(None, lambda: None, max_in_flight=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionBatcher(None, lambda: None, max_group=0)  # type: ignore[arg-type]


async def test_admission_needs_no_pool_connection_and_its_own_close_with_the_database(store: Store) -> None:
    # slow turns may hold every pool connection: webhooks are still admitted and acknowledged
    pool = store.db.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        envs = [make_envelope(f"m{i}") for i in range(10)]
        for env in envs[:5]:  # one after another: the same lane connection each time
            assert await asyncio.wait_for(store.inbox.admit(env), 5) == (env.id, True)
        assert await asyncio.wait_for(asyncio.gather(*(store.inbox.admit(e) for e in envs[5:])), 5) == [
            (e.id, True) for e in envs[5:]]
    finally:
        for conn in held:
            await pool.release(conn)
    db_name = (await store.db.fetch("SELECT current_database() AS n"))[0]["n"]
    count = "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    others = Database(store.db.url)
    await others.connect(migrate=False)
    try:
        assert (await others.fetch(count, db_name))[0]["n"] > pool.get_size()  # the lane's are open
        await store.db.close()  # the pool and the lane's connections
        for _ in range(100):  # a backend leaves pg_stat_activity a moment after its client
            if (await others.fetch(count, db_name))[0]["n"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await others.fetch(count, db_name))[0]["n"] == 0
    finally:
        await others.close()


async def test_a_repo_built_for_another_query_keeps_no_lane(store: Store) -> None:
    # storage/turns.py builds an InboxRepo to reclaim a row after a lost answer; that must not
    # leave a connection lane registered with the database each time
    from storage.inbox import InboxRepo

    lanes = len(store.db._lanes)
    for _ in range(50):
        assert await InboxRepo(store.db).reclaim(uuid.uuid4(), 30) is None
    assert len(store.db._lanes) == lanes


async def test_an_admission_arriving_as_the_senders_finish_is_still_sent(store: Store) -> None:
    # the sender finishes; an admission in the next loop iteration, before the task's
    # done-callbacks run, must still start a sender of its own (it waited forever, or
    # until the next admission, when the slot was counted by the done-callback)
    batcher = AdmissionBatcher(store.db, lambda: None, max_in_flight=1)
    store.inbox.admissions = batcher
    for round_ in range(30):
        first = [make_envelope(f"r{round_} a0")]
        late = make_envelope(f"r{round_} late")

        async def admit_late(env: Any = late) -> tuple[str, bool]:
            # until the sender's task has finished (perhaps before its done-callbacks ran)
            while batcher._senders and not all(t.done() for t in batcher._senders):  # noqa: ASYNC110
                await asyncio.sleep(0)
            return await store.inbox.admit(env)

        results = await asyncio.wait_for(
            asyncio.gather(*(store.inbox.admit(e) for e in first), admit_late()), 5)
        assert results[-1] == (late.id, True)
