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

# One round trip for a message. Every part reads only what this message may see, by an index that holds only
# that (migration 0014): the site's chunks by their own GIN index, this conversation's by its key; another
# conversation's chunks, however many, are never read, ranked or filtered out.
#   site_every / site_any: the best full-text matches (at most $4) among the site's chunks, of the question ($1,
#     French stemming, plain text: a `-` or quotes are not operators) holding every one of its words; only when
#     none holds them all, of any of its words (the OR query, costlier, skipped otherwise). Each ranks at most
#     $6 candidates: a question of common words never ranks every chunk that holds one of them.
#   own: the caller's ($3) chunks of this conversation ($2), at most $7, with their vectors (array_send's bytes,
#     read by numpy without a Python float per element; scored in process); own_text: the best full-text
#     matches among them, at most $8 ranked (ranking is what costs: 200 ms for 4,000 chunks).
#   the chunks the site's vector index chose ($5).
CANDIDATES_SQL = """
WITH question AS (
    SELECT plainto_tsquery('french', $1) AS every_word,
           to_tsquery('simple', replace(plainto_tsquery('french', $1)::text, '&', '|')) AS any_word
), site_every AS (
    SELECT candidate.chunk_id, ts_rank_cd(candidate.tsv, question.every_word) AS rank
    FROM question, LATERAL (
        SELECT c.chunk_id, c.tsv FROM kb_chunks c
        WHERE c.conversation_id IS NULL AND c.tsv @@ question.every_word
        LIMIT $6
    ) AS candidate
    ORDER BY rank DESC, candidate.chunk_id
    LIMIT $4
), site_any AS (
    SELECT candidate.chunk_id, ts_rank_cd(candidate.tsv, question.any_word) AS rank
    FROM question, LATERAL (
        SELECT c.chunk_id, c.tsv FROM kb_chunks c
        WHERE c.conversation_id IS NULL AND c.tsv @@ question.any_word
        LIMIT $6
    ) AS candidate
    WHERE NOT EXISTS (SELECT 1 FROM site_every)
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
), picked AS (
    SELECT chunk_id, rank FROM site_every
    UNION ALL
    SELECT chunk_id, rank FROM site_any
    UNION ALL
    SELECT chunk_id, NULL FROM unnest($5::bigint[]) AS vector_hits(chunk_id)
    UNION ALL
    SELECT chunk_id, NULL FROM own
    UNION ALL
    SELECT chunk_id, rank FROM own_text
)
SELECT c.chunk_id, c.content, d.source, d.path, max(p.rank) AS rank,
       CASE WHEN c.conversation_id IS NOT NULL THEN array_send(c.embedding) END AS embedding
FROM picked p JOIN kb_chunks c USING (chunk_id) JOIN kb_documents d USING (document_id)
WHERE c.conversation_id IS NULL OR (c.conversation_id = $2 AND d.user_id = $3)
GROUP BY c.chunk_id, d.document_id
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
