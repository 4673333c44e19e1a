-- Admission in one round trip (issue 9, ingress benchmark). Before, a webhook's
-- admission was five statements (BEGIN, insert the keys, insert the row, NOTIFY,
-- COMMIT); the call below is one, and runs in that statement's own transaction.
-- The wake-up NOTIFY is sent by the caller after the commit (storage/notify.py:
-- a NOTIFY inside the transaction serializes commits).
--
-- Returns the id of the inbox row that owns the event: p_id when it was stored now,
-- the earlier row's id when one of its natural keys was already known (a duplicate;
-- nothing is written then, not even the keys that were new).
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
        -- Some key belongs to an earlier event: take back the ones just written (same
        -- transaction, so no other session ever saw them) and name the owner. Each
        -- statement of a plpgsql function sees rows committed before it started, so an
        -- owner that committed while our insert waited on its key is found.
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
