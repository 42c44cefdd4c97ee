-- 0019 per-user rate limits as a rate with a burst (the generic cell rate algorithm): one row per user and
-- action holds when the user's next request is due. The per-minute windows of 0005 let a user spend a minute's
-- requests in its first second (and two minutes' across a minute's edge). rate_limit_windows is left in place,
-- unused by this version: processes of the previous version still running during an upgrade keep counting there.
-- depends: 0018-directory-accounts

CREATE TABLE IF NOT EXISTS rate_limits (
    user_id  INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    action   VARCHAR(32) NOT NULL,
    due_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, action)
);
