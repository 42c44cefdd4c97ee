-- 0008 the Supervision page's figures in one index-only scan of the period: every column its query reads
-- from messages rides in the index, so a month of a million-message table is counted without a heap visit;
-- conversations are counted (all, and those updated in the period) from an index on updated_at alone.
-- depends: 0007-existing-rows-timezone

CREATE INDEX IF NOT EXISTS idx_messages_supervision
    ON messages(created_at) INCLUDE (role, mode, tokens, files_count, rag_used);

CREATE INDEX IF NOT EXISTS idx_conversations_updated ON conversations(updated_at);
