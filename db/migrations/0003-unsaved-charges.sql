-- 0003 unsaved charges: tokens charged for a model answer whose exchange could not be saved (the user got the
-- answer, so the tokens are spent). One row per reservation, so that a retried charge is recorded once; the
-- books balance as used_tokens = tokens of the saved messages + these charges.
-- depends: 0002-message-metadata

CREATE TABLE IF NOT EXISTS unsaved_charges (
    reservation_id  UUID PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    month           DATE NOT NULL,
    tokens          BIGINT NOT NULL,
    reason          VARCHAR(50) NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT (NOW() AT TIME ZONE 'UTC')
);
CREATE INDEX IF NOT EXISTS idx_unsaved_charges_user_month ON unsaved_charges(user_id, month);
