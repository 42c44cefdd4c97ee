-- 0016 the site's vectors searched by the database where it has pgvector (the `pgvector/pgvector` image that WIBOT
-- sites run): kb_chunks gains `embedding_vector`, a halfvec(1024) the database derives from `embedding` (whoever
-- writes the chunk: ingestion, an attachment, an adopted n8n table), and an HNSW index (cosine) over the site's
-- chunks only, so that a conversation's attachments are never in the graph another user's message walks.
-- halfvec, not vector: mistral-embed's 1024 dimensions in 2 KiB instead of 4, an index half the size (more of it
-- in shared buffers), and a recall measured against float32's (bench/knowledge.py). A chunk of another dimension
-- (another embedding model) gets NULL: not in the index, found by full text only (a question's vector of another
-- dimension is logged `kb_dimension_mismatch`).
--
-- On a server without the extension (Debian's PostgreSQL packages) this does nothing and chat keeps its
-- in-process index. The extension needs a superuser to be created (it is not "trusted"): where the migrating
-- role cannot, a superuser runs `CREATE EXTENSION vector;` and `make migrate` again, which calls
-- wibot_kb_vectors() after every run, so the column and the index come then.
-- m = 24, ef_construction = 100 rather than pgvector's 16 / 64: at 100,000 chunks, recall@5 against exact search
-- 0.99 -> 1.0 on structured queries and 0.32 -> 0.55 on the hashed-word ones (ef_search 100), for a build 2.2
-- times as long (79 -> 174 s on 2 cores) and the same index size (bench/RESULTS.md).
-- depends: 0015-settled-charge

CREATE OR REPLACE FUNCTION wibot_kb_vectors() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
            RETURN 'unavailable';
        END IF;
        BEGIN
            CREATE EXTENSION IF NOT EXISTS vector;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgvector is available but this role may not create it: CREATE EXTENSION vector as a superuser';
            RETURN 'not_installed';
        END;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'kb_chunks'::regclass AND attname = 'embedding_vector' AND NOT attisdropped
    ) THEN
        EXECUTE 'ALTER TABLE kb_chunks ADD COLUMN embedding_vector halfvec(1024) GENERATED ALWAYS AS ('
             || 'CASE WHEN cardinality(embedding) = 1024 THEN embedding::halfvec(1024) END) STORED';
    END IF;
    -- The graph of a large corpus is built in memory when it fits (pgvector warns and slows down otherwise).
    PERFORM set_config('maintenance_work_mem', '512MB', true);
    EXECUTE 'CREATE INDEX IF NOT EXISTS idx_kb_site_chunks_hnsw ON kb_chunks '
         || 'USING hnsw (embedding_vector halfvec_cosine_ops) WITH (m = 24, ef_construction = 100) '
         || 'WHERE conversation_id IS NULL';
    RETURN 'pgvector';
END $$;

SELECT wibot_kb_vectors();
