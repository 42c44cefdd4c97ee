"""SQL owned by the conversations service."""

# The spec's LEFT JOIN + GROUP BY counts every message of every conversation of the user before keeping 50.
# Here the page is chosen first from the (user_id, updated_at, conversation_id) index, then each of its rows
# reads its count, kept by triggers (migration 0011): the cost follows the page, not the messages behind it.
# $3 is an optional cursor: the conversation_id of the last item of the previous page.
LIST_CONVERSATIONS_SQL = """
SELECT page.conversation_id,
       COALESCE(page.title, $4) AS title,
       page.updated_at,
       -- One index lookup per row of the page: a join let the planner hash the whole counts table (a
       -- sequential scan of every conversation of the site, measured 3.8 ms at 12,500) for a 50-row page.
       COALESCE((SELECT counts.message_count FROM conversation_message_counts AS counts
                 WHERE counts.conversation_id = page.conversation_id), 0) AS message_count
FROM (
    SELECT conversation_id, title, updated_at
    FROM conversations
    WHERE user_id = $1
      AND ($3::uuid IS NULL OR (updated_at, conversation_id) < (
            SELECT updated_at, conversation_id FROM conversations WHERE conversation_id = $3 AND user_id = $1))
    ORDER BY updated_at DESC, conversation_id DESC
    LIMIT $2
) AS page
ORDER BY page.updated_at DESC, page.conversation_id DESC
"""

CURSOR_EXISTS_SQL = "SELECT 1 FROM conversations WHERE conversation_id = $1 AND user_id = $2"

CONVERSATION_OWNER_SQL = "SELECT user_id FROM conversations WHERE conversation_id = $1"

CONVERSATION_SQL = """
SELECT c.conversation_id, COALESCE(c.title, $2) AS title, c.updated_at,
       COALESCE(counts.message_count, 0) AS message_count
FROM conversations c
LEFT JOIN conversation_message_counts AS counts ON counts.conversation_id = c.conversation_id
WHERE c.conversation_id = $1
"""

MESSAGES_SQL = """
SELECT message_id, role, content, created_at
FROM messages
WHERE conversation_id = $1
ORDER BY created_at, message_id
"""


CREATE_CONVERSATION_SQL = """
INSERT INTO conversations (conversation_id, user_id, title)
VALUES ($1, $2, $3)
ON CONFLICT (conversation_id) DO NOTHING
RETURNING conversation_id
"""

RENAME_CONVERSATION_SQL = """
UPDATE conversations SET title = $3 WHERE conversation_id = $1 AND user_id = $2 RETURNING conversation_id
"""

# messages go with it: ON DELETE CASCADE.
DELETE_CONVERSATION_SQL = """
DELETE FROM conversations WHERE conversation_id = $1 AND user_id = $2 RETURNING conversation_id
"""

# This month's ($2) usage and quota row, and the user's standing quota (the quota in force: shared/rules.py).
MONTH_USAGE_SQL = """
SELECT COALESCE(t.used_tokens, 0) AS used_tokens, t.quota_tokens AS month_quota_tokens, u.standing_quota_tokens
FROM users u
LEFT JOIN user_token_usage t ON t.user_id = u.user_id AND t.month = $2
WHERE u.user_id = $1
"""
