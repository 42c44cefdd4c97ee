-- 0013 the chunks a user keeps indexed across their conversations are counted before each attachment is
-- indexed (KB_USER_MAX_CHUNKS): by this index, not by reading every document of the site.
-- depends: 0012-session-notifications

CREATE INDEX IF NOT EXISTS idx_kb_documents_user ON kb_documents (user_id) WHERE user_id IS NOT NULL;
