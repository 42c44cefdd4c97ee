"""SQL of the knowledge base (tables kb_documents, kb_chunks: migration 0010)."""

# Only one ingestion at a time, whichever process runs it (CLI, route, scheduled sync).
INGEST_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('wibot_kb_ingest'))"

# The site's documents under a folder ($1, relative to the root; '' for all of it).
SITE_DOCUMENTS_SQL = """
SELECT document_id, path, content_hash FROM kb_documents
WHERE conversation_id IS NULL AND ($1 = '' OR path = $1 OR starts_with(path, $1 || '/'))
"""

UPSERT_SITE_DOCUMENT_SQL = """
INSERT INTO kb_documents (source, category, path, content_hash, chunk_count)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (path) WHERE conversation_id IS NULL DO UPDATE
    SET source = EXCLUDED.source, category = EXCLUDED.category, content_hash = EXCLUDED.content_hash,
        chunk_count = EXCLUDED.chunk_count, updated_at = NOW() AT TIME ZONE 'UTC'
RETURNING document_id
"""

# The chunks already indexed for this conversation ($1) and for this user ($2), each by its own index.
INDEXED_CHUNKS_SQL = """
SELECT (SELECT COALESCE(sum(chunk_count), 0) FROM kb_documents WHERE conversation_id = $1) AS conversation,
       (SELECT COALESCE(sum(chunk_count), 0) FROM kb_documents WHERE user_id = $2) AS user_total
"""

# Attachments of one user are indexed one at a time (two requests racing past the caps would both fit).
LOCK_USER_ATTACHMENTS_SQL = "SELECT pg_advisory_xact_lock(hashtext('wibot_kb_user'), $1)"

INSERT_CONVERSATION_DOCUMENT_SQL = """
INSERT INTO kb_documents (source, category, path, content_hash, chunk_count, conversation_id, user_id)
VALUES ($1, 'attachment', $1, $2, $3, $4, $5)
RETURNING document_id
"""

DELETE_CHUNKS_SQL = "DELETE FROM kb_chunks WHERE document_id = $1"
CHUNK_COLUMNS = ["document_id", "position", "content", "embedding"]

DELETE_DOCUMENTS_SQL = "DELETE FROM kb_documents WHERE document_id = ANY($1::bigint[])"

# Every site chunk's vector, for the in-process index; or one document's ($1) after a change. In PostgreSQL's
# binary array form (array_send), read straight into numpy: 100,000 vectors never become 100 million floats.
SITE_VECTORS_SQL = """
SELECT c.document_id, c.chunk_id, array_send(c.embedding) AS embedding
FROM kb_chunks c
WHERE c.conversation_id IS NULL AND ($1::bigint IS NULL OR c.document_id = $1)
ORDER BY c.document_id, c.chunk_id
"""

# pgvector path (index.SiteChunks): each site document's chunks, counted (whoever wrote them) by the
# (document_id, position) key alone; or one document's ($1) after a change.
SITE_CHUNK_COUNTS_SQL = """
SELECT d.document_id, (SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.document_id) AS chunks
FROM kb_documents d
WHERE d.conversation_id IS NULL AND ($1::bigint IS NULL OR d.document_id = $1)
"""

# Which path this database gives (migration 0016 made the HNSW index only where pgvector is installed).
HAS_VECTOR_INDEX_SQL = "SELECT to_regclass('idx_kb_site_chunks_hnsw') IS NOT NULL"

# One round trip for a message, on either path. Every part reads only what this message may see, by an index that
# holds only that (migrations 0014, 0016): the site's chunks by their own GIN (and HNSW) index, this conversation's
# by its key; another conversation's chunks, however many, are never read, ranked or filtered out.
#   site_every / site_rarest / site_any: the best full-text matches (at most $4) among the site's chunks, of the
#     question ($1, French stemming, plain text: a `-` or quotes are not operators) holding every one of its
#     words; only when none holds them all, holding its three rarest words together (an intersection: selective
#     however common each word is); only when none does either, holding any of its rare words: the $10 rarest,
#     each in fewer than $9 chunks by PostgreSQL's
#     own statistics of the column (pg_stats.most_common_elems and the table's row count, kept by ANALYZE; a word
#     not listed there is rarer than any listed). In a large corpus a common word says little of a chunk and its
#     posting list is a large part of the table: left out, the OR query reads a bounded set of entries whatever
#     the corpus's size (in a small one every word is rare enough). Each side ranks at most $6 candidates.
#   own: the caller's ($3) chunks of this conversation ($2), at most $7; own_text: the best full-text matches
#     among them, at most $8 ranked (ranking is what costs: 200 ms for 4,000 chunks).
_FULL_TEXT_PARTS = """
WITH common_word AS (
    SELECT e.lexeme, e.share * GREATEST(c.reltuples, 0) AS chunks
    FROM pg_class c, pg_stats s,
         unnest(s.most_common_elems::text::text[],
                s.most_common_elem_freqs[1:cardinality(s.most_common_elems::text::text[])]) AS e(lexeme, share)
    WHERE c.oid = 'kb_chunks'::regclass
      AND s.schemaname = current_schema() AND s.tablename = 'kb_chunks' AND s.attname = 'tsv'
), question_word AS (
    SELECT w.lexeme, COALESCE(c.chunks, 0) AS chunks
    FROM unnest(tsvector_to_array(to_tsvector('french', $1))) AS w(lexeme)
    LEFT JOIN common_word c USING (lexeme)
), question AS (
    SELECT plainto_tsquery('french', $1) AS every_word,
           (SELECT to_tsquery('simple', string_agg(quote_literal(lexeme), ' & '))
            FROM (SELECT lexeme FROM question_word ORDER BY chunks, lexeme LIMIT 3) AS rarest) AS rarest_words,
           (SELECT to_tsquery('simple', string_agg(quote_literal(lexeme), ' | '))
            FROM (SELECT lexeme FROM question_word WHERE chunks < $9 ORDER BY chunks, lexeme LIMIT $10) AS rare)
               AS any_word
), site_every AS (
    SELECT candidate.chunk_id, ts_rank_cd(candidate.tsv, question.every_word) AS rank
    FROM question, LATERAL (
        SELECT c.chunk_id, c.tsv FROM kb_chunks c
        WHERE c.conversation_id IS NULL AND c.tsv @@ question.every_word
        LIMIT $6
    ) AS candidate
    ORDER BY rank DESC, candidate.chunk_id
    LIMIT $4
), site_rarest AS (
    SELECT candidate.chunk_id, ts_rank_cd(candidate.tsv, question.rarest_words) AS rank
    FROM question, LATERAL (
        SELECT c.chunk_id, c.tsv FROM kb_chunks c
        WHERE c.conversation_id IS NULL AND c.tsv @@ question.rarest_words
        LIMIT $6
    ) AS candidate
    WHERE NOT EXISTS (SELECT 1 FROM site_every)
    ORDER BY rank DESC, candidate.chunk_id
    LIMIT $4
), site_any AS (
    SELECT candidate.chunk_id, ts_rank_cd(candidate.tsv, question.any_word) AS rank
    FROM question, LATERAL (
        SELECT c.chunk_id, c.tsv FROM kb_chunks c
        WHERE c.conversation_id IS NULL AND c.tsv @@ question.any_word
        LIMIT $6
    ) AS candidate
    WHERE NOT EXISTS (SELECT 1 FROM site_every) AND NOT EXISTS (SELECT 1 FROM site_rarest)
    ORDER BY rank DESC, candidate.chunk_id
    LIMIT $4
), own AS (
    SELECT c.chunk_id
    FROM kb_chunks c JOIN kb_documents d USING (document_id)
    WHERE c.conversation_id = $2 AND d.user_id = $3
    ORDER BY c.chunk_id
    LIMIT $7
), own_text AS (
    SELECT candidate.chunk_id, ts_rank_cd(candidate.tsv, question.any_word) AS rank
    FROM question, LATERAL (
        SELECT c.chunk_id, c.tsv FROM kb_chunks c JOIN own USING (chunk_id)
        WHERE c.tsv @@ question.any_word
        LIMIT $8
    ) AS candidate
    ORDER BY rank DESC, candidate.chunk_id
    LIMIT $4
)"""

# Each picked chunk read by its key, then its document by its key, one after the other (OFFSET 0 keeps each
# subquery a parameterised lookup: left to the planner, stale statistics made it walk every document's chunks),
# and kept only when the caller may see it.
_EACH_PICKED_CHUNK = """
CROSS JOIN LATERAL (
    SELECT c.document_id, c.content, c.conversation_id, c.embedding FROM kb_chunks c WHERE c.chunk_id = p.chunk_id
    OFFSET 0
) AS c
CROSS JOIN LATERAL (
    SELECT d.source, d.path, d.user_id FROM kb_documents d WHERE d.document_id = c.document_id OFFSET 0
) AS d
WHERE c.conversation_id IS NULL OR (c.conversation_id = $2 AND d.user_id = $3)
"""

# In-process path: with the chunks the process's vector index chose ($5), and the conversation's own chunks'
# vectors (array_send's bytes, read by numpy without a Python float per element; scored in process).
CANDIDATES_SQL = (
    _FULL_TEXT_PARTS  # noqa: S608 - two constants joined, never a value
    + """, picked AS (
    SELECT chunk_id, rank FROM site_every
    UNION ALL
    SELECT chunk_id, rank FROM site_rarest
    UNION ALL
    SELECT chunk_id, rank FROM site_any
    UNION ALL
    SELECT chunk_id, NULL FROM unnest($5::bigint[]) AS vector_hits(chunk_id)
    UNION ALL
    SELECT chunk_id, NULL FROM own
    UNION ALL
    SELECT chunk_id, rank FROM own_text
)
SELECT p.chunk_id, c.content, d.source, d.path, p.rank,
       CASE WHEN c.conversation_id IS NOT NULL THEN array_send(c.embedding) END AS embedding
FROM (SELECT chunk_id, max(rank) AS rank FROM picked GROUP BY chunk_id) AS p"""
    + _EACH_PICKED_CHUNK
)

# pgvector path: the question's vector ($5, real[]; NULL when it could not be embedded) searched by the database.
#   site_similar: the $4 nearest site chunks by the HNSW index, whose predicate is the site's scope: no other
#     conversation's chunk is in the graph, so no filter can starve the result.
#   own_similar: the conversation's own chunks (at most $7, by their key), scored exactly: no vector leaves the
#     database.
# Run after SET_RETRIEVAL_PLAN_SQL, in the same transaction.
VECTOR_CANDIDATES_SQL = (
    _FULL_TEXT_PARTS  # noqa: S608 - two constants joined, never a value
    + """, site_similar AS (
    SELECT c.chunk_id, 1 - (c.embedding_vector <=> $5::real[]::halfvec) AS similarity
    FROM kb_chunks c
    WHERE c.conversation_id IS NULL AND $5::real[] IS NOT NULL
    ORDER BY c.embedding_vector <=> $5::real[]::halfvec
    LIMIT $4
), own_similar AS (
    SELECT c.chunk_id, 1 - (c.embedding_vector <=> $5::real[]::halfvec) AS similarity
    FROM kb_chunks c JOIN own USING (chunk_id)
    WHERE $5::real[] IS NOT NULL AND c.embedding_vector IS NOT NULL
    ORDER BY similarity DESC, c.chunk_id
    LIMIT $4
), picked AS (
    SELECT chunk_id, rank, NULL::float8 AS similarity FROM site_every
    UNION ALL
    SELECT chunk_id, rank, NULL FROM site_rarest
    UNION ALL
    SELECT chunk_id, rank, NULL FROM site_any
    UNION ALL
    SELECT chunk_id, rank, NULL FROM own_text
    UNION ALL
    SELECT chunk_id, NULL, similarity FROM site_similar
    UNION ALL
    SELECT chunk_id, NULL, similarity FROM own_similar
)
SELECT p.chunk_id, c.content, d.source, d.path, p.rank, p.similarity, c.conversation_id IS NOT NULL AS own
FROM (SELECT chunk_id, max(rank) AS rank, max(similarity) AS similarity FROM picked GROUP BY chunk_id) AS p"""
    + _EACH_PICKED_CHUNK
)

# Set for the candidates statement's transaction, on either path. The statement's scopes are its access paths
# (the site's indexes, the conversation's key, primary keys) and every join in it is of a few hundred rows at
# most: nested loops over indexes. Statistics taken when the table was nearly empty (autovacuum's timing) made
# the planner hash-join a conversation's chunks against a scan of every chunk (tests/test_retrieval_isolation.py):
# with sequential scans, hash and merge joins off it has no such plan to choose. hnsw.*: the candidates the graph
# search keeps ($1), and should that be fewer than asked, the scan goes on (iterative scan, pgvector 0.8) instead
# of returning fewer. Placeholders on a server without pgvector.
SET_RETRIEVAL_PLAN_SQL = """
SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true),
       set_config('enable_mergejoin', 'off', true), set_config('hnsw.ef_search', $1, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true)
"""

# Attachments indexed for a conversation that was never created (the exchange failed): gone after $1 seconds.
DELETE_ORPHAN_DOCUMENTS_SQL = """
DELETE FROM kb_documents d
WHERE d.conversation_id IS NOT NULL
  AND d.created_at < (NOW() AT TIME ZONE 'UTC') - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.conversation_id = d.conversation_id)
"""

# A conversation keeps its newest attachments within $1 chunks: older documents beyond are deleted (their chunks
# with them), at most $2 documents a round so that no sweep holds its locks long. For conversations indexed
# before the cap existed, or after KB_CONVERSATION_MAX_CHUNKS was lowered.
TRIM_CONVERSATIONS_SQL = """
WITH kept AS (
    SELECT document_id,
           sum(chunk_count) OVER (PARTITION BY conversation_id ORDER BY created_at DESC, document_id DESC) AS total
    FROM kb_documents
    WHERE conversation_id IS NOT NULL
)
DELETE FROM kb_documents d
WHERE d.document_id IN (SELECT document_id FROM kept WHERE total > $1 ORDER BY document_id LIMIT $2)
RETURNING d.conversation_id, d.chunk_count
"""

STATUS_SQL = """
SELECT d.category, count(*) AS documents, COALESCE(sum(d.chunk_count), 0) AS chunks,
       max(d.updated_at) AS last_update
FROM kb_documents d WHERE d.conversation_id IS NULL
GROUP BY d.category ORDER BY d.category
"""

# --- adoption of an n8n WIBOT's vectors (adopt.py) ---------------------------------------------------------
# n8n's PGVector node writes LangChain's PGVectorStore table: "id" uuid, "text" text, "metadata" jsonb (WIBOT's
# rag_ingestion sets source, category, path and, for an attachment, conversation_id and user_id; LangChain's
# splitter adds loc.lines), "embedding" vector (mistral-embed). The site's rows (no conversation) are copied once,
# inside the database, with their document's path as n8n wrote it (relative to its folder, a leading '/').
N8N_TABLE_SQL = "SELECT to_regclass('n8n_vectors') IS NOT NULL"

N8N_STAGE_SQL = """
CREATE TEMPORARY TABLE adopted ON COMMIT DROP AS
SELECT ltrim(COALESCE(NULLIF(v.metadata->>'path', ''), v.metadata->>'source'), '/') AS path,
       COALESCE(NULLIF(v.metadata->>'source', ''), v.metadata->>'path') AS source,
       COALESCE(NULLIF(v.metadata->>'category', ''), 'general') AS category,
       v."text" AS content,
       v.embedding::real[] AS embedding,
       row_number() OVER (
           PARTITION BY ltrim(COALESCE(NULLIF(v.metadata->>'path', ''), v.metadata->>'source'), '/')
           ORDER BY (v.metadata #>> '{loc,lines,from}')::int NULLS LAST, v."text", v.id
       ) - 1 AS position
FROM n8n_vectors v
WHERE COALESCE(v.metadata->>'conversation_id', '') = ''
  AND v."text" IS NOT NULL AND v.embedding IS NOT NULL
  AND COALESCE(NULLIF(v.metadata->>'path', ''), NULLIF(v.metadata->>'source', '')) IS NOT NULL
"""

N8N_LEFT_OUT_SQL = """
SELECT count(*) FILTER (WHERE COALESCE(metadata->>'conversation_id', '') <> '') AS attachments,
       count(*) FILTER (WHERE COALESCE(metadata->>'conversation_id', '') = '') AS site
FROM n8n_vectors
"""

# Each adopted document with its chunks' text in order (no vector leaves the database).
N8N_DOCUMENTS_SQL = """
SELECT path, min(source) AS source, min(category) AS category, array_agg(content ORDER BY position) AS chunks
FROM adopted GROUP BY path ORDER BY path
"""

DELETE_DOCUMENTS_CHUNKS_SQL = "DELETE FROM kb_chunks WHERE document_id = ANY($1::bigint[])"

N8N_COPY_CHUNKS_SQL = """
INSERT INTO kb_chunks (document_id, position, content, embedding)
SELECT d.document_id, a.position, a.content, a.embedding
FROM adopted a JOIN unnest($1::text[], $2::bigint[]) AS d(path, document_id) USING (path)
"""
