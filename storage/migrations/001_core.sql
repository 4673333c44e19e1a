-- Core tables of the durable pipeline: inbox -> (turn) -> outbox, plus history and audit.
CREATE EXTENSION IF NOT EXISTS vector;

-- Every natural key an inbound event may arrive under. A duplicate is any
-- event one of whose keys is already here; the row that owns the key wins.
CREATE TABLE inbox_keys (
    channel   text NOT NULL,
    account   text NOT NULL,
    key       text NOT NULL,
    inbox_id  uuid NOT NULL,
    PRIMARY KEY (channel, account, key)
);

CREATE TABLE inbox (
    id               uuid PRIMARY KEY,
    seq              bigserial UNIQUE,               -- FIFO order
    channel          text NOT NULL,
    account          text NOT NULL,
    external_id      text NOT NULL,
    conversation_key text NOT NULL,
    envelope         jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'claimed', 'done', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    claim_token      uuid,
    claimed_by       text,
    lease_until      timestamptz,
    received_at      timestamptz NOT NULL,
    admitted_at      timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    error            text,
    UNIQUE (channel, account, external_id)
);
-- Only live rows are indexed for claiming, so finished history never sits in the hot path.
CREATE INDEX inbox_live ON inbox (seq) WHERE status IN ('pending', 'claimed');
CREATE INDEX inbox_live_conv ON inbox (conversation_key, seq) WHERE status IN ('pending', 'claimed');

CREATE TABLE outbox (
    id                  bigserial PRIMARY KEY,
    inbox_id            uuid,                       -- NULL for proactive sends
    seq                 int NOT NULL DEFAULT 0,     -- chunk number within the turn
    channel             text NOT NULL,
    account             text NOT NULL,
    destination         text NOT NULL,              -- ordering unit: the conversation key
    address             jsonb NOT NULL,
    body                jsonb NOT NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sending', 'sent', 'dead', 'unknown')),
    attempts            int NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    claim_token         uuid,
    lease_until         timestamptz,
    platform_message_id text,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    UNIQUE (inbox_id, seq)
);
CREATE INDEX outbox_live ON outbox (next_attempt_at, id) WHERE status IN ('pending', 'sending');
CREATE INDEX outbox_live_dest ON outbox (destination, id) WHERE status IN ('pending', 'sending');
CREATE INDEX outbox_dead ON outbox (id) WHERE status IN ('dead', 'unknown');

CREATE TABLE conversations (
    key          text PRIMARY KEY,
    channel      text NOT NULL,
    account      text NOT NULL,
    external_id  text NOT NULL,
    thread       text,
    kind         text NOT NULL,
    title        text,
    reply_to     jsonb NOT NULL,                    -- last known address, for proactive sends
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id               bigserial PRIMARY KEY,
    conversation_key text NOT NULL,
    role             text NOT NULL,
    content          text NOT NULL,
    inbox_id         uuid,
    meta             jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conv ON messages (conversation_key, id);

CREATE TABLE audit (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    kind             text NOT NULL,
    plugin           text,
    inbox_id         uuid,
    conversation_key text,
    detail           jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_kind ON audit (kind, id);

-- Generic cell rate (GCRA) buckets shared by all instances: tat is the
-- theoretical arrival time of the next send.
CREATE TABLE rate_buckets (
    key  text PRIMARY KEY,
    tat  timestamptz NOT NULL
);

-- Small durable state for adapters (poll offsets, IMAP watermarks) and the gateway.
CREATE TABLE kv_state (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per LLM call (filled by the agents package).
CREATE TABLE agent_runs (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    inbox_id        uuid,
    conversation_key text,
    agent           text NOT NULL,
    model           text,
    fallback_reason text,
    input_tokens    int,
    output_tokens   int,
    latency_ms      double precision,
    cost_usd        double precision,
    success         boolean NOT NULL,
    error           text,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX agent_runs_conv ON agent_runs (conversation_key, id);
