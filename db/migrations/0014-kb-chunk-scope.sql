-- 0014 a chunk carries its scope (the conversation of the attachment it comes from, NULL for the site's
-- documents), set by the database from its document, so that the scope is part of every retrieval's access
-- path: the site's full-text search reads an index of site chunks only, a conversation's own chunks are read
-- by their conversation's key. One user's attachments, however many, never cost another user's message a row
-- read, and their inserts and deletes (dead rows until a VACUUM, on a server with autovacuum off) never reach
-- another conversation's plan. The site's GIN index takes its entries at insert (fastupdate off): no pending
-- list that every search would scan until the next VACUUM.
-- depends: 0013-kb-user-index

ALTER TABLE kb_chunks ADD COLUMN IF NOT EXISTS conversation_id UUID;

UPDATE kb_chunks c SET conversation_id = d.conversation_id
FROM kb_documents d
WHERE d.document_id = c.document_id AND d.conversation_id IS NOT NULL AND c.conversation_id IS DISTINCT FROM d.conversation_id;

-- Whoever writes a chunk (COPY included), its scope is its document's: a writer cannot make an attachment's
-- chunk a site chunk by forgetting the column.
CREATE OR REPLACE FUNCTION kb_chunk_scope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.conversation_id := (SELECT d.conversation_id FROM kb_documents d WHERE d.document_id = NEW.document_id);
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS kb_chunk_scope ON kb_chunks;
CREATE TRIGGER kb_chunk_scope BEFORE INSERT OR UPDATE ON kb_chunks
    FOR EACH ROW EXECUTE FUNCTION kb_chunk_scope();

DROP INDEX IF EXISTS idx_kb_chunks_tsv;
CREATE INDEX IF NOT EXISTS idx_kb_site_chunks_tsv ON kb_chunks USING GIN (tsv) WITH (fastupdate = off)
    WHERE conversation_id IS NULL;
CREATE INDEX IF NOT EXISTS idx_kb_conversation_chunks ON kb_chunks (conversation_id, chunk_id)
    WHERE conversation_id IS NOT NULL;

ANALYZE kb_chunks;
