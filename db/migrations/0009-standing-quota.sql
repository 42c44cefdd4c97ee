-- 0009 standing quotas: a user's own monthly quota, which every new month starts from (NULL: the service's
-- DEFAULT_QUOTA_TOKENS). user_token_usage keeps each month's quota, so a month can still be raised on its own.
-- depends: 0008-supervision-index

ALTER TABLE users ADD COLUMN IF NOT EXISTS standing_quota_tokens BIGINT;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'users'::regclass AND conname = 'users_standing_quota_tokens_check'
    ) THEN
        ALTER TABLE users ADD CONSTRAINT users_standing_quota_tokens_check CHECK (standing_quota_tokens >= 0);
    END IF;
END $$;
