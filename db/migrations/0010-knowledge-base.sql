-- 0010 knowledge base: the site's documents (conversation_id NULL, path relative to KB_ROOT) and the large
-- attachments of a conversation (conversation_id and user_id set: seen by that conversation only), cut into
-- chunks that carry their embedding and a French full-text vector. Every change to a site document or to its
-- chunks notifies `wibot_kb` (whoever writes them), so each chat process keeps its in-memory vector index current.
-- depends: 0009-standing-quota

CREATE TABLE IF NOT EXISTS kb_documents (
    document_id     BIGSERIAL PRIMARY KEY,
    source          TEXT NOT NULL,
    category        TEXT NOT NULL DEFAULT 'general',
    path            TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    chunk_count     INTEGER NOT NULL DEFAULT 0,
    conversation_id UUID,
    user_id         INTEGER REFERENCES users(user_id) ON DELETE CASCADE,
    created_at      TIMESTAMP NOT NULL DEFAULT (NOW() AT TIME ZONE 'UTC'),
    updated_at      TIMESTAMP NOT NULL DEFAULT (NOW() AT TIME ZONE 'UTC'),
    CONSTRAINT kb_documents_scope CHECK ((conversation_id IS NULL) = (user_id IS NULL))
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_kb_documents_site_path ON kb_documents(path) WHERE conversation_id IS NULL;
CREATE INDEX IF NOT EXISTS idx_kb_documents_conversation ON kb_documents(conversation_id)
    WHERE conversation_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS kb_chunks (
    chunk_id    BIGSERIAL PRIMARY KEY,
    document_id BIGINT NOT NULL REFERENCES kb_documents(document_id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    content     TEXT NOT NULL,
    embedding   REAL[] NOT NULL,
    tsv         TSVECTOR GENERATED ALWAYS AS (to_tsvector('french', content)) STORED,
    CONSTRAINT kb_chunks_position UNIQUE (document_id, position)
);

CREATE INDEX IF NOT EXISTS idx_kb_chunks_tsv ON kb_chunks USING GIN (tsv);

-- An attachment's chunks go with its conversation, whatever deletes it (the API, a user's deletion, SQL).
CREATE OR REPLACE FUNCTION kb_forget_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM kb_documents WHERE conversation_id = OLD.conversation_id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS kb_forget_conversation ON conversations;
CREATE TRIGGER kb_forget_conversation AFTER DELETE ON conversations
    FOR EACH ROW EXECUTE FUNCTION kb_forget_conversation();

-- The payload is the site document's id (its chunks are read again), or `*` after a TRUNCATE (everything is).
CREATE OR REPLACE FUNCTION kb_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('wibot_kb', '*');
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.conversation_id IS NULL THEN
            PERFORM pg_notify('wibot_kb', OLD.document_id::text);
        END IF;
    ELSIF NEW.conversation_id IS NULL THEN
        PERFORM pg_notify('wibot_kb', NEW.document_id::text);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS kb_notify_document ON kb_documents;
CREATE TRIGGER kb_notify_document AFTER INSERT OR UPDATE OR DELETE ON kb_documents
    FOR EACH ROW EXECUTE FUNCTION kb_notify_change();

DROP TRIGGER IF EXISTS kb_notify_truncate ON kb_documents;
CREATE TRIGGER kb_notify_truncate AFTER TRUNCATE ON kb_documents
    FOR EACH STATEMENT EXECUTE FUNCTION kb_notify_change();

-- Chunks written or removed by any statement (a COPY of thousands included): one notification per site document.
CREATE OR REPLACE FUNCTION kb_notify_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('wibot_kb', d.document_id::text)
        FROM kb_documents d WHERE d.conversation_id IS NULL AND d.document_id IN (SELECT document_id FROM old_rows);
    ELSE
        PERFORM pg_notify('wibot_kb', d.document_id::text)
        FROM kb_documents d WHERE d.conversation_id IS NULL AND d.document_id IN (SELECT document_id FROM new_rows);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS kb_notify_chunks_inserted ON kb_chunks;
CREATE TRIGGER kb_notify_chunks_inserted AFTER INSERT ON kb_chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kb_notify_chunks();

DROP TRIGGER IF EXISTS kb_notify_chunks_updated ON kb_chunks;
CREATE TRIGGER kb_notify_chunks_updated AFTER UPDATE ON kb_chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kb_notify_chunks();

DROP TRIGGER IF EXISTS kb_notify_chunks_deleted ON kb_chunks;
CREATE TRIGGER kb_notify_chunks_deleted AFTER DELETE ON kb_chunks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION kb_notify_chunks();
