-- 0005 per-user rate limits, shared by every process and surviving restarts: one counter per user, action
-- (chat, conversation creation) and minute. Rows older than the previous minute are deleted as users come back.
-- depends: 0004-token-generation

CREATE TABLE IF NOT EXISTS rate_limit_windows (
    user_id       INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    action        VARCHAR(32) NOT NULL,
    window_start  TIMESTAMP NOT NULL,
    hits          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, action, window_start)
);
