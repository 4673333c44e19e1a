-- An admission retried with the same id after its first attempt committed (the answer
-- was lost: a connection cut, or storage/admission.py's statement timeout, after the
-- commit) must find its event stored. soulgate_admit (migration 005) took the keys it
-- found under its own id for keys it had just written, deleted them and reported a
-- duplicate without an owner: the stored row lost its keys, so the platform's next
-- retry (a fresh id) was stored a second time and answered twice. A plugin channel
-- that retries ``ctx.admit`` on an error reaches this path; the built-in adapters
-- build a fresh envelope for each attempt.
--
-- soulgate_admit_batch (migration 009) needs no change: such a row finds all its keys
-- under its id, counts as stored, and its insert into inbox fails on the primary key;
-- storage/admission.py then admits the group's events one at a time, through this
-- function.
CREATE OR REPLACE FUNCTION soulgate_admit(
    p_id uuid, p_channel text, p_account text, p_keys text[], p_external_id text,
    p_conversation_key text, p_envelope jsonb, p_received_at timestamptz
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    stored int;
    owner uuid;
BEGIN
    INSERT INTO inbox_keys (channel, account, key, inbox_id)
        SELECT p_channel, p_account, k, p_id FROM unnest(p_keys) AS k
        ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS stored = ROW_COUNT;
    IF stored < cardinality(p_keys) THEN
        -- Stored by an earlier attempt of this same admission: its keys are committed
        -- under this id, and none is ours to take back (a new statement: it sees an
        -- attempt that committed while our insert waited on its key).
        IF EXISTS (SELECT 1 FROM inbox WHERE id = p_id) THEN
            RETURN p_id;
        END IF;
        -- Some key belongs to an earlier event: take back the ones just written (same
        -- transaction, so no other session ever saw them) and name the owner.
        DELETE FROM inbox_keys
            WHERE channel = p_channel AND account = p_account AND key = ANY(p_keys) AND inbox_id = p_id;
        SELECT inbox_id INTO owner FROM inbox_keys
            WHERE channel = p_channel AND account = p_account AND key = ANY(p_keys) AND inbox_id <> p_id
            LIMIT 1;
        RETURN owner;
    END IF;
    INSERT INTO inbox (id, channel, account, external_id, conversation_key, envelope, received_at)
        VALUES (p_id, p_channel, p_account, p_external_id, p_conversation_key, p_envelope, p_received_at);
    RETURN p_id;
END
$$;
