"""SQL owned by the auth service (users, revocations)."""

# With the user's token generation, read in the same snapshot as the password hash: a login racing a
# password change gets either the old hash and the old generation, or both new.
# $1 is what was typed, $2 its NFKC form (how usernames are created). Names are unique whatever their case
# (CREATE_USER_SQL), so the case-insensitive match finds the one user; a database from n8n may hold names that
# differ only in case: the exact spelling wins, then the oldest account.
LOGIN_USER_SQL = """
SELECT u.user_id, u.username, u.password_hash, u.role, COALESCE(a.generation, 0) AS generation,
       u.directory_id IS NOT NULL AS from_directory
FROM users u
LEFT JOIN user_token_revocations a ON a.user_id = u.user_id
WHERE (u.username = $1 OR lower(u.username) = lower($2)) AND u.is_active IS TRUE
ORDER BY u.username = $1 DESC, u.username = $2 DESC, u.user_id
LIMIT 1
"""

# Unique whatever the case: "Khora" cannot be created beside "khora" (no row returned: it exists).
CREATE_USER_SQL = """
INSERT INTO users (username, password_hash, email, role, accreditation_level)
SELECT $1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::varchar
WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1::varchar))
ON CONFLICT (username) DO NOTHING
RETURNING user_id
"""

# A user as the admin API shows it: with this month's usage ($1) and quota row, and their standing quota (the quota
# in force and where it comes from: shared/rules.py); one user ($2) or all.
ADMIN_USERS_SQL = """
SELECT u.user_id, u.username, u.email, COALESCE(u.role, 'user') AS role, COALESCE(u.is_active, true) AS is_active,
       u.created_at, COALESCE(t.used_tokens, 0) AS used_tokens,
       t.quota_tokens AS month_quota_tokens, u.standing_quota_tokens,
       COALESCE(u.accreditation_level, 'N1') AS accreditation_level,
       CASE WHEN u.directory_id IS NULL THEN 'local' ELSE 'directory' END AS source
FROM users u
LEFT JOIN user_token_usage t ON t.user_id = u.user_id AND t.month = $1
WHERE $2::int IS NULL OR u.user_id = $2
ORDER BY u.user_id
"""

USER_ID_BY_NAME_SQL = "SELECT user_id FROM users WHERE username = $1"

LOCK_USER_SQL = """
SELECT user_id, username, role, is_active, directory_id IS NOT NULL AS from_directory FROM users
WHERE user_id = $1 FOR UPDATE
"""

# Locks every active admin, always in the same order (no deadlock): two admins demoting each other at once
# cannot both succeed.
LOCK_ACTIVE_ADMINS_SQL = """
SELECT user_id FROM users WHERE role = 'admin' AND is_active IS TRUE ORDER BY user_id FOR UPDATE
"""

UPDATE_ROLE_SQL = "UPDATE users SET role = $2 WHERE user_id = $1"
# $2 NULL: back to the default.
UPDATE_STANDING_QUOTA_SQL = "UPDATE users SET standing_quota_tokens = $2 WHERE user_id = $1"
UPDATE_ACCREDITATION_SQL = "UPDATE users SET accreditation_level = $2 WHERE user_id = $1"
UPDATE_ACTIVE_SQL = "UPDATE users SET is_active = $2 WHERE user_id = $1"
SET_PASSWORD_SQL = "UPDATE users SET password_hash = $2 WHERE user_id = $1"

# $3: new quota (NULL keeps the current one, else the standing one, else the default $4); $5: tokens added on
# top, for this month.
# Saturating: added tokens stop at BIGINT's maximum (an unlimited quota) instead of overflowing into an error.
SET_MONTH_QUOTA_SQL = """
INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)
VALUES ($1, $2, 0, LEAST(
    COALESCE($3::bigint, (SELECT standing_quota_tokens FROM users WHERE user_id = $1), $4::bigint)::numeric
        + $5::bigint,
    9223372036854775807
)::bigint)
ON CONFLICT (user_id, month) DO UPDATE
    SET quota_tokens = LEAST(
        COALESCE($3::bigint, user_token_usage.quota_tokens)::numeric + $5::bigint, 9223372036854775807
    )::bigint
"""

# Every token of the user: the next generation (and, for tokens issued before generations existed, not_before).
REVOKE_ALL_TOKENS_SQL = """
INSERT INTO user_token_revocations (user_id, not_before, generation) VALUES ($1, NOW() AT TIME ZONE 'UTC', 1)
ON CONFLICT (user_id) DO UPDATE
    SET not_before = EXCLUDED.not_before, generation = user_token_revocations.generation + 1
"""

# $1 is the token's key (shared.auth.token_key: its jti). An absurd `exp` in a validly signed token is kept
# within what a TIMESTAMP holds.
REVOKE_TOKEN_SQL = """
INSERT INTO revoked_tokens (token_sha256, user_id, expires_at)
VALUES ($1, $2, to_timestamp(LEAST($3::bigint, 32503680000)) AT TIME ZONE 'UTC')
ON CONFLICT (token_sha256) DO NOTHING
"""

PURGE_EXPIRED_REVOCATIONS_SQL = "DELETE FROM revoked_tokens WHERE expires_at < NOW() AT TIME ZONE 'UTC'"

DELETE_USER_MESSAGES_SQL = """
DELETE FROM messages WHERE user_id = $1
   OR conversation_id IN (SELECT conversation_id FROM conversations WHERE user_id = $1)
"""
DELETE_USER_CONVERSATIONS_SQL = "DELETE FROM conversations WHERE user_id = $1"
DELETE_USER_USAGE_SQL = "DELETE FROM user_token_usage WHERE user_id = $1"
DELETE_USER_SQL = "DELETE FROM users WHERE user_id = $1 RETURNING user_id, username"

# $1 is passwords.BCRYPT_HASH's pattern: anything in password_hash that is not a bcrypt hash is the n8n install's
# plain text.
# Directory accounts have no local password (their marker is no bcrypt hash, and no plain text either).
COUNT_PLAIN_TEXT_PASSWORDS_SQL = "SELECT count(*) FROM users WHERE password_hash !~ $1 AND directory_id IS NULL"
PLAIN_TEXT_PASSWORDS_BATCH_SQL = """
SELECT user_id, password_hash FROM users
WHERE password_hash !~ $1 AND directory_id IS NULL AND user_id > $2
ORDER BY user_id
LIMIT $3
"""
REPLACE_PLAIN_TEXT_PASSWORD_SQL = """
UPDATE users SET password_hash = $2 WHERE user_id = $1 AND password_hash = $3 RETURNING user_id
"""
