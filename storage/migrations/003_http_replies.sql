-- Request/response channels (the http channel) answer from the process that admitted the
-- request, which need not be the one that ran the turn or delivered its chunks. These
-- triggers notify 'soulgate_http_reply' (payload: the inbox id) when an http turn is
-- committed and when one of its chunks reaches a final status, so the waiting handler
-- sleeps on LISTEN instead of polling. Rows of other channels never fire them (the WHEN
-- clauses are checked before any work is queued).
CREATE OR REPLACE FUNCTION soulgate_http_reply_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'inbox' THEN
        PERFORM pg_notify('soulgate_http_reply', NEW.id::text);
    ELSE
        PERFORM pg_notify('soulgate_http_reply', NEW.inbox_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER inbox_http_reply
    AFTER UPDATE OF status ON inbox FOR EACH ROW
    WHEN (NEW.channel = 'http' AND NEW.status IN ('done', 'failed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION soulgate_http_reply_notify();

CREATE TRIGGER outbox_http_reply
    AFTER UPDATE OF status ON outbox FOR EACH ROW
    WHEN (NEW.channel = 'http' AND NEW.inbox_id IS NOT NULL
          AND NEW.status IN ('sent', 'dead', 'unknown')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION soulgate_http_reply_notify();
