"""SQL owned by the auth service (the users table)."""

LOGIN_USER_SQL = """
SELECT user_id, username, password_hash, role
FROM users
WHERE username = $1 AND is_active IS TRUE
LIMIT 1
"""

CREATE_USER_SQL = """
INSERT INTO users (username, password_hash, email, role)
VALUES ($1, $2, $3, $4)
ON CONFLICT (username) DO NOTHING
RETURNING user_id, username, email, role, is_active, created_at
"""

SET_PASSWORD_SQL = """
UPDATE users SET password_hash = $2 WHERE username = $1 RETURNING user_id
"""

DEACTIVATE_USER_SQL = """
UPDATE users SET is_active = false WHERE username = $1 RETURNING user_id
"""

LIST_USERS_SQL = """
SELECT user_id, username, email, role, is_active, created_at
FROM users
ORDER BY user_id
"""

USER_EXISTS_SQL = "SELECT 1 FROM users WHERE username = $1"
