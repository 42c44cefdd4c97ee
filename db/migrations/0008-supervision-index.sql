-- 0008 the Supervision page's figures in one index-only scan of the period: every column its query reads
-- from messages rides in the index, so a month of a million-message table is counted without a heap visit.
-- depends: 0007-existing-rows-timezone

CREATE INDEX IF NOT EXISTS idx_messages_supervision
    ON messages(created_at) INCLUDE (role, mode, tokens, files_count, rag_used);
