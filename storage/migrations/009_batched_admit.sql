-- Concurrent admissions share one statement (issue 9, ingress benchmark). Webhooks
-- that arrive while an admission is on its way to Postgres wait for it and then go
-- together (storage/admission.py): one round trip, one transaction and one WAL flush
-- for the group instead of one each. The outcome per event is what soulgate_admit
-- (migration 005) gives for it alone, which stays for single events and for the
-- retry of a group that failed.
--
-- Row r of the group is (p_ids[r], p_channels[r], ...); its natural keys are the
-- p_keys[i] with p_key_rows[i] = r (each row's keys distinct). Returns one
-- (admitted_id, owner_id) per row: owner_id = admitted_id when the row was stored,
-- the earlier row's id for a duplicate (an earlier event, or an earlier row of the
-- same group sharing a key), NULL when the owner took its key back under us.
CREATE OR REPLACE FUNCTION soulgate_admit_batch(
    p_ids uuid[], p_channels text[], p_accounts text[], p_external_ids text[],
    p_conversation_keys text[], p_envelopes text[], p_received_at timestamptz[],
    p_key_rows int[], p_keys text[]
) RETURNS TABLE (admitted_id uuid, owner_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    winners int[];
    loser int;
    stored int;
BEGIN
    -- Every key of the group in one insert, in key order: two groups that share keys
    -- lock them in the same order, so they wait for each other instead of deadlocking.
    -- Within the group the earlier row takes a shared key.
    INSERT INTO inbox_keys (channel, account, key, inbox_id)
        SELECT p_channels[u.r], p_accounts[u.r], u.k, p_ids[u.r]
        FROM unnest(p_key_rows, p_keys) AS u(r, k)
        ORDER BY p_channels[u.r], p_accounts[u.r], u.k, u.r
        ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS stored = ROW_COUNT;
    IF stored = cardinality(p_keys) THEN
        -- The common case, no duplicate: every row is stored, in the order they arrived
        -- (seq keeps a conversation's order).
        INSERT INTO inbox (id, channel, account, external_id, conversation_key, envelope, received_at)
            SELECT a.id, a.channel, a.account, a.external_id, a.conversation_key, a.envelope::jsonb, a.received_at
            FROM unnest(p_ids, p_channels, p_accounts, p_external_ids, p_conversation_keys, p_envelopes,
                        p_received_at) WITH ORDINALITY
                 AS a(id, channel, account, external_id, conversation_key, envelope, received_at, r)
            ORDER BY a.r;
        RETURN QUERY SELECT x, x FROM unnest(p_ids) AS x;
        RETURN;
    END IF;

    -- Some key was known: the rows that got all their keys are stored.
    SELECT coalesce(array_agg(need.r ORDER BY need.r), '{}') INTO winners
        FROM (SELECT u.r, count(*) AS n FROM unnest(p_key_rows) AS u(r) GROUP BY u.r) AS need
        JOIN (SELECT u.r, count(*) AS n
                FROM unnest(p_key_rows, p_keys) AS u(r, k)
                JOIN inbox_keys k ON k.channel = p_channels[u.r] AND k.account = p_accounts[u.r]
                                 AND k.key = u.k AND k.inbox_id = p_ids[u.r]
                GROUP BY u.r) AS got
          ON got.r = need.r AND got.n = need.n;

    IF cardinality(winners) < cardinality(p_ids) THEN
        -- The rows that missed a key (duplicates, as a rule) take back the keys they did
        -- write (no other session saw them), then try again one at a time, in order, as
        -- they would have alone: a row that lost a key only to a group-mate that was
        -- itself a duplicate is new after all. This path is rare (retries, one event
        -- under two names); its locks are not globally ordered, and a deadlock there
        -- fails the group, which storage/admission.py then admits event by event.
        DELETE FROM inbox_keys k
            USING unnest(p_key_rows, p_keys) AS u(r, key)
            WHERE u.r <> ALL(winners) AND k.channel = p_channels[u.r] AND k.account = p_accounts[u.r]
              AND k.key = u.key AND k.inbox_id = p_ids[u.r];
        FOR loser IN SELECT s FROM generate_subscripts(p_ids, 1) AS s WHERE s <> ALL(winners) ORDER BY s LOOP
            INSERT INTO inbox_keys (channel, account, key, inbox_id)
                SELECT p_channels[loser], p_accounts[loser], u.k, p_ids[loser]
                FROM unnest(p_key_rows, p_keys) AS u(r, k) WHERE u.r = loser ORDER BY u.k
                ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS stored = ROW_COUNT;
            IF stored = (SELECT count(*) FROM unnest(p_key_rows) AS u(r) WHERE u.r = loser) THEN
                winners := winners || loser;
            ELSE
                DELETE FROM inbox_keys k
                    USING unnest(p_key_rows, p_keys) AS u(r, key)
                    WHERE u.r = loser AND k.channel = p_channels[loser] AND k.account = p_accounts[loser]
                      AND k.key = u.key AND k.inbox_id = p_ids[loser];
            END IF;
        END LOOP;
    END IF;

    INSERT INTO inbox (id, channel, account, external_id, conversation_key, envelope, received_at)
        SELECT p_ids[w], p_channels[w], p_accounts[w], p_external_ids[w], p_conversation_keys[w],
               p_envelopes[w]::jsonb, p_received_at[w]
        FROM unnest(winners) AS w ORDER BY w;

    -- A new statement, so it sees an owner that committed while our insert waited on its key.
    RETURN QUERY
        SELECT p_ids[r],
               CASE WHEN r = ANY(winners) THEN p_ids[r] ELSE (
                   SELECT k.inbox_id FROM inbox_keys k
                       JOIN unnest(p_key_rows, p_keys) AS u(rr, key)
                         ON u.rr = r AND k.channel = p_channels[r] AND k.account = p_accounts[r]
                            AND k.key = u.key
                       WHERE k.inbox_id <> p_ids[r]
                       LIMIT 1)
               END
        FROM generate_subscripts(p_ids, 1) AS r;
END
$$;
