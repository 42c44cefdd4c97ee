-- 0002 message metadata, as a WIBOT n8n database stores it: the mode a message was written in, whether the
-- knowledge base was used, and how many files were attached. The Supervision page counts them by date.
-- A WIBOT n8n database already has these columns (and maybe the index): then this is a no-op.
-- depends: 0001-baseline

ALTER TABLE messages ADD COLUMN IF NOT EXISTS mode VARCHAR(20) DEFAULT 'flash';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS rag_used BOOLEAN DEFAULT false;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS files_count INTEGER DEFAULT 0;

CREATE INDEX IF NOT EXISTS idx_messages_created_at ON messages(created_at);
