-- Long-term memory per user (the agents package's recall), searched by
-- pgvector cosine similarity when an embedding model is configured and by
-- full-text search otherwise. The embedding column has no fixed dimension so
-- that changing the embedding model needs no migration; rows are compared
-- only with rows embedded by the same model (embedding_model).
CREATE TABLE memories (
    id               bigserial PRIMARY KEY,
    user_key         text NOT NULL,              -- channel:account:sender
    agent            text,
    content          text NOT NULL,
    tsv              tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    embedding        vector,
    embedding_model  text,
    conversation_key text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_user ON memories (user_key, id);
CREATE INDEX memories_tsv ON memories USING gin (tsv);

-- /api/runs and /usage aggregate by these.
CREATE INDEX agent_runs_agent_model ON agent_runs (agent, model);
