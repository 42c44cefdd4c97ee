"""SQL owned by the chat service."""

from shared.statements import Statement

# Owner and memory in one round trip. No row: the conversation does not exist yet. The spec's query returns
# the FIRST 10 messages; memory wants the LAST N ($3), given back in chronological order (ties: message_id).
# Messages are only read when the caller ($2) owns the conversation; has_documents: attachments of theirs were
# indexed for it (the knowledge base is then consulted even when the site has no documents).
MEMORY_SQL = """
SELECT c.user_id AS owner, last_messages.role, last_messages.content,
       EXISTS (SELECT 1 FROM kb_documents k WHERE k.conversation_id = c.conversation_id AND k.user_id = $2)
           AS has_documents
FROM conversations c
LEFT JOIN LATERAL (
    SELECT m.message_id, m.role, m.content, m.created_at
    FROM messages m
    WHERE m.conversation_id = c.conversation_id AND c.user_id = $2
    ORDER BY m.created_at DESC, m.message_id DESC
    LIMIT $3
) AS last_messages ON true
WHERE c.conversation_id = $1
ORDER BY last_messages.created_at, last_messages.message_id
"""

# This month's row, created on first use with the user's standing quota, else the default ($3); one round trip
# either way. Two first
# uses racing: the loser's INSERT does nothing and its snapshot saw no row, so it gets no row and reads again.
READ_OR_CREATE_USAGE_SQL = """
WITH existing AS (
    SELECT used_tokens, quota_tokens FROM user_token_usage WHERE user_id = $1 AND month = $2
), created AS (
    INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)
    SELECT $1, $2, 0, COALESCE((SELECT standing_quota_tokens FROM users WHERE user_id = $1), $3)
    WHERE NOT EXISTS (SELECT 1 FROM existing)
    ON CONFLICT (user_id, month) DO NOTHING
    RETURNING used_tokens, quota_tokens
)
SELECT used_tokens, quota_tokens FROM existing
UNION ALL
SELECT used_tokens, quota_tokens FROM created
"""

# This month's usage as READ_OR_CREATE_USAGE_SQL would give it, read only (no row yet: nothing used, the user's
# standing quota or the default $3): admission's early look, before the body is parsed.
QUOTA_ROOM_SQL = """
SELECT COALESCE(u.used_tokens, 0) AS used_tokens,
       COALESCE(u.quota_tokens, (SELECT standing_quota_tokens FROM users WHERE user_id = $1), $3) AS quota_tokens
FROM (SELECT 1) AS one
LEFT JOIN user_token_usage u ON u.user_id = $1 AND u.month = $2
"""

# One conditional UPDATE: the row lock makes concurrent reservations queue, and each re-checks the condition
# against the committed value, so the quota cannot be overspent (measured: with SELECT-then-UPDATE, 50
# concurrent spends against room for 10 all passed).
# The reservation ($4, chosen by the caller) is recorded in the same statement, so that settling or
# refunding it later happens exactly once, even when an answer from the database is lost on the way.
RESERVE_TOKENS_SQL = """
WITH reserved AS (
    UPDATE user_token_usage
    SET used_tokens = used_tokens + $3
    WHERE user_id = $1 AND month = $2 AND used_tokens + $3 <= quota_tokens
    RETURNING user_id, month
)
INSERT INTO token_reservations (reservation_id, user_id, month, tokens)
SELECT $4, user_id, month, $3 FROM reserved
RETURNING reservation_id
"""

# A reservation ($3, still held) grows by $4 tokens when the quota has that much room, or with $5 (partly) by
# as many of them as it has: one conditional UPDATE (as RESERVE_TOKENS_SQL), re-checked against the row it
# locks, so concurrent requests cannot overspend. Returns the tokens added; no row: none (no room, or nothing
# held any more).
GROW_RESERVATION_SQL = """
WITH amount AS (
    SELECT CASE WHEN $5::boolean THEN LEAST($4::bigint, quota_tokens - used_tokens) ELSE $4::bigint END AS tokens
    FROM user_token_usage WHERE user_id = $1 AND month = $2
), grown AS (
    UPDATE user_token_usage u
    SET used_tokens = u.used_tokens + amount.tokens
    FROM amount
    WHERE u.user_id = $1 AND u.month = $2 AND amount.tokens > 0 AND u.used_tokens + amount.tokens <= u.quota_tokens
      AND EXISTS (SELECT 1 FROM token_reservations WHERE reservation_id = $3)
    RETURNING amount.tokens
)
UPDATE token_reservations SET tokens = token_reservations.tokens + grown.tokens
FROM grown
WHERE reservation_id = $3
RETURNING grown.tokens
"""

# Gives back $2 of the tokens a reservation ($1) holds, once the prompt is known to need less.
SHRINK_RESERVATION_SQL = """
WITH shrunk AS (
    UPDATE token_reservations SET tokens = tokens - $2
    WHERE reservation_id = $1 AND tokens >= $2
    RETURNING user_id, month
)
UPDATE user_token_usage u
SET used_tokens = GREATEST(u.used_tokens - $2, 0)
FROM shrunk
WHERE u.user_id = shrunk.user_id AND u.month = shrunk.month
"""

# Idempotent: a reservation already settled, refunded or never recorded changes nothing.
REFUND_TOKENS_SQL = """
WITH released AS (
    DELETE FROM token_reservations WHERE reservation_id = $1 RETURNING user_id, month, tokens
)
UPDATE user_token_usage u
SET used_tokens = GREATEST(u.used_tokens - released.tokens, 0)
FROM released
WHERE u.user_id = released.user_id AND u.month = released.month
"""

# The model answered but the exchange could not be saved: the answer was given, so its tokens are spent. Release
# the reservation ($1) and charge the real usage ($2) instead (wibot_settled_charge, migration 0015), recording
# the charge and its reason ($3). Idempotent: once the reservation is gone (settled by a save
# whose answer was lost, or already charged), nothing changes and no row is returned.
CHARGE_UNSAVED_SQL = """
WITH released AS (
    DELETE FROM token_reservations WHERE reservation_id = $1 RETURNING user_id, month, tokens
), amount AS (
    SELECT r.user_id, r.month, r.tokens AS held,
           wibot_settled_charge(r.tokens, $2::bigint, u.used_tokens, u.quota_tokens) AS charged
    FROM released r JOIN user_token_usage u ON u.user_id = r.user_id AND u.month = r.month
), settled AS (
    UPDATE user_token_usage u SET used_tokens = u.used_tokens - a.held + a.charged
    FROM amount a WHERE u.user_id = a.user_id AND u.month = a.month
    RETURNING u.user_id
)
INSERT INTO unsaved_charges (reservation_id, user_id, month, tokens, reason)
SELECT $1, a.user_id, a.month, a.charged, $3 FROM amount a WHERE EXISTS (SELECT 1 FROM settled)
RETURNING tokens
"""

# Reservations older than $1 seconds belong to requests that died with their process: give them back.
SWEEP_STALE_RESERVATIONS_SQL = """
WITH stale AS (
    DELETE FROM token_reservations
    WHERE created_at < (NOW() AT TIME ZONE 'UTC') - make_interval(secs => $1)
    RETURNING user_id, month, tokens
), per_user AS (
    SELECT user_id, month, sum(tokens)::bigint AS tokens FROM stale GROUP BY user_id, month
)
UPDATE user_token_usage u
SET used_tokens = GREATEST(u.used_tokens - per_user.tokens, 0)
FROM per_user
WHERE u.user_id = per_user.user_id AND u.month = per_user.month
RETURNING u.user_id, per_user.tokens
"""

# save_exchange, in ONE statement (one round trip, one implicit transaction: all of it or none of it):
#   1. upsert the conversation; the spec's upsert let anyone append to anyone's conversation, the WHERE makes
#      it a no-op (no row) when the conversation belongs to someone else;
#   2. insert the user's message and the assistant's, only if 1 returned a row;
#   3. settle the usage: release the reservation and charge the real usage instead (wibot_settled_charge,
#      migration 0015: past the reservation, only what the quota still holds). Only if 1 returned a row. A
#      reservation already swept away (a very slow model) counts as 0 held.
# `owned` is false when the conversation is someone else's: nothing was written, the caller charges apart.
SAVE_EXCHANGE = Statement(
    """
WITH conversation AS (
    INSERT INTO conversations (conversation_id, user_id, title, created_at, updated_at)
    VALUES (:conversation_id, :user_id, :title, NOW() AT TIME ZONE 'UTC', NOW() AT TIME ZONE 'UTC')
    ON CONFLICT (conversation_id) DO UPDATE
        SET updated_at = NOW() AT TIME ZONE 'UTC',
            title = COALESCE(conversations.title, EXCLUDED.title)
        WHERE conversations.user_id = EXCLUDED.user_id
    RETURNING conversation_id
), exchange AS (
    INSERT INTO messages (conversation_id, user_id, role, content, tokens, attachments, created_at, mode, files_count,
                          rag_used)
    SELECT conversation_id, :user_id::int, 'user', :message::text, :message_tokens::int, :attachments::jsonb,
           :received_at::timestamp, :mode::text, :files_count::int, :rag_used::boolean
    FROM conversation
    UNION ALL
    SELECT conversation_id, :user_id::int, 'assistant', :reply::text, :reply_tokens::int, NULL,
           NOW() AT TIME ZONE 'UTC', :mode::text, 0, false
    FROM conversation
    RETURNING message_id
), released AS (
    DELETE FROM token_reservations
    WHERE reservation_id = :reservation_id AND EXISTS (SELECT 1 FROM conversation)
    RETURNING tokens
), settled AS (
    UPDATE user_token_usage
    SET used_tokens = used_tokens - held.tokens
                      + wibot_settled_charge(held.tokens, :charged_tokens::bigint, used_tokens, quota_tokens)
    FROM (SELECT COALESCE((SELECT tokens FROM released), 0) AS tokens) AS held
    WHERE user_id = :user_id AND month = :month::date AND EXISTS (SELECT 1 FROM conversation)
    RETURNING used_tokens, quota_tokens
)
SELECT EXISTS (SELECT 1 FROM conversation) AS owned,
       (SELECT count(*) FROM exchange) AS messages_written,
       settled.used_tokens, settled.quota_tokens
FROM (SELECT 1) AS one
LEFT JOIN settled ON true
"""
)
