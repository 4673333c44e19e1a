-- Fewer index entries per inbox write (issue 9, dequeue benchmark). A row is written
-- three times (admitted, claimed, done) and, because its status changes each time,
-- every write adds an entry to every index of the table. Two of them guarded nothing
-- that is not guarded already and served no query:
--   * UNIQUE (seq): seq comes from its own sequence; claims read the partial indexes;
--   * UNIQUE (channel, account, external_id): every admission stores external_id as
--     one of its keys in inbox_keys (primary key channel, account, key) first, and a
--     duplicate key stores no inbox row (soulgate_admit, migration 005).
ALTER TABLE inbox DROP CONSTRAINT IF EXISTS inbox_seq_key;
ALTER TABLE inbox DROP CONSTRAINT IF EXISTS inbox_channel_account_external_id_key;
