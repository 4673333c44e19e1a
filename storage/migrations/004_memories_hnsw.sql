-- HNSW indexes for pgvector recall (cosine), so a user with many memories is
-- answered in milliseconds instead of by scanning and sorting all of them.
--
-- memories.embedding has no fixed dimension (changing the embedding model needs
-- no migration), and pgvector can only index vectors of one dimension. So each
-- index covers the rows of one common embedding size: the indexed expression
-- casts to that size, and the partial predicate keeps rows of other sizes out
-- (the cast would fail on them). storage/memories.py (HNSW_DIMS) writes its
-- recall query with the same expression and predicate so the planner can use
-- the index; other sizes are recalled by exact search. pgvector indexes at most
-- 2000 dimensions of type vector, so 3072-d models (e.g. text-embedding-3-large
-- without `dimensions`) are recalled by exact search too.
--
-- Empty indexes cost nothing; a row is added to the one index of its size.
-- Built with pgvector's defaults (m = 16, ef_construction = 64).
CREATE INDEX memories_hnsw_384 ON memories
    USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE vector_dims(embedding) = 384;
CREATE INDEX memories_hnsw_768 ON memories
    USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE vector_dims(embedding) = 768;
CREATE INDEX memories_hnsw_1024 ON memories
    USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WHERE vector_dims(embedding) = 1024;
CREATE INDEX memories_hnsw_1536 ON memories
    USING hnsw ((embedding::vector(1536)) vector_cosine_ops) WHERE vector_dims(embedding) = 1536;
