"""SQL owned by the chat service."""

CONVERSATION_OWNER_SQL = "SELECT user_id FROM conversations WHERE conversation_id = $1"

# The spec's query returns the FIRST 10 messages; memory wants the LAST N, given back in chronological order.
LAST_MESSAGES_SQL = """
SELECT role, content
FROM (
    SELECT message_id, role, content, created_at
    FROM messages
    WHERE conversation_id = $1
    ORDER BY created_at DESC, message_id DESC
    LIMIT $2
) AS last_messages
ORDER BY created_at, message_id
"""

ENSURE_USAGE_ROW_SQL = """
INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)
VALUES ($1, $2, 0, $3)
ON CONFLICT (user_id, month) DO NOTHING
"""

READ_USAGE_SQL = """
SELECT used_tokens, quota_tokens FROM user_token_usage WHERE user_id = $1 AND month = $2
"""

# One conditional UPDATE: the row lock makes concurrent reservations queue, and each re-checks the condition
# against the committed value, so the quota cannot be overspent (../shared/FACTS.md: the measured race).
RESERVE_TOKENS_SQL = """
UPDATE user_token_usage
SET used_tokens = used_tokens + $3
WHERE user_id = $1 AND month = $2 AND used_tokens + $3 <= quota_tokens
RETURNING used_tokens, quota_tokens
"""

REFUND_TOKENS_SQL = """
UPDATE user_token_usage
SET used_tokens = GREATEST(used_tokens - $3, 0)
WHERE user_id = $1 AND month = $2
"""

# Replace the reservation ($3) by the real usage ($4); past the reservation, charge only what the quota
# still holds, so used_tokens never exceeds quota_tokens.
SETTLE_TOKENS_SQL = """
UPDATE user_token_usage
SET used_tokens = used_tokens - $3 + LEAST($4, $3 + GREATEST(quota_tokens - used_tokens, 0))
WHERE user_id = $1 AND month = $2
RETURNING used_tokens, quota_tokens
"""

# The spec's upsert lets anyone append to anyone's conversation; the WHERE makes it a no-op (no row
# returned) when the conversation belongs to someone else.
UPSERT_CONVERSATION_SQL = """
INSERT INTO conversations (conversation_id, user_id, title, created_at, updated_at)
VALUES ($1, $2, $3, NOW() AT TIME ZONE 'UTC', NOW() AT TIME ZONE 'UTC')
ON CONFLICT (conversation_id) DO UPDATE
    SET updated_at = NOW() AT TIME ZONE 'UTC',
        title = COALESCE(conversations.title, EXCLUDED.title)
    WHERE conversations.user_id = EXCLUDED.user_id
RETURNING conversation_id
"""

INSERT_EXCHANGE_SQL = """
INSERT INTO messages (conversation_id, user_id, role, content, tokens, attachments, created_at)
VALUES ($1, $2, 'user', $3, $4, $5, $6),
       ($1, $2, 'assistant', $7, $8, NULL, NOW() AT TIME ZONE 'UTC')
"""
