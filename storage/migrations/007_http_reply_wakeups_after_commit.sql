-- The http channel's reply wake-ups move out of the writing transactions (issue 9).
-- The triggers of migration 003 called pg_notify inside every http turn commit and every
-- http delivery; a transaction that notifies takes a database-wide lock at commit and
-- keeps it through the WAL flush, so those commits ran one at a time. The gateway now
-- sends the same wake-up after the commit (storage/notify.py; storage/turns.py and
-- storage/outbox.py). During a rolling upgrade an older instance's http turns wake
-- nobody; the waiting handlers find them by their periodic re-check.
DROP TRIGGER IF EXISTS inbox_http_reply ON inbox;
DROP TRIGGER IF EXISTS outbox_http_reply ON outbox;
DROP FUNCTION IF EXISTS soulgate_http_reply_notify();
