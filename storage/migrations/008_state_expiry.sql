-- Adapter state that stops mattering after a while expires: kept attachments of mail,
-- the Message-ID map, rate stamps, Slack thread memberships, the roots of multi-chunk
-- Teams posts. Each kind was one row per message or thread, kept forever (kept mail
-- attachments hold their bytes). Rows written without an expiry (poll offsets, IMAP
-- watermarks, the admin token) never expire. Reads treat an expired row as absent; the
-- worker instances delete them in batches (storage/state.py, prune_expired_state).
--
-- Rolling upgrade: an older instance keeps writing rows without an expiry, and keeps
-- an expiry it overwrites (its upsert does not name the column); both are harmless.
ALTER TABLE kv_state ADD COLUMN IF NOT EXISTS expires_at timestamptz;
CREATE INDEX IF NOT EXISTS kv_state_expiry ON kv_state (expires_at) WHERE expires_at IS NOT NULL;
