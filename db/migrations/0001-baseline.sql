-- 0001 baseline: the spec's four tables, column for column, and this project's own tables as of 2026-11.
--
-- Written to run on any of the databases sites already have, in place and without touching a row:
--   * an empty database;
--   * one created from the spec's SQL (NOW() defaults in local time, its indexes, its trigger);
--   * one created by this project's former db/schema.sql (then this file is a no-op);
--   * the database of a WIBOT n8n install (extra columns such as accreditation_level or messages.mode are
--     left as they are; later migrations add them where missing).
-- Hence IF NOT EXISTS everywhere and CREATE OR REPLACE for the trigger function.
--
-- Dates are TIMESTAMP WITHOUT TIME ZONE (as in the spec) holding UTC. The services pin their sessions to
-- UTC; the defaults and the trigger below use NOW() AT TIME ZONE 'UTC' so rows written by anyone else
-- (psql, an n8n node, a session in Europe/Paris) are UTC as well.

CREATE TABLE IF NOT EXISTS users (
    user_id         SERIAL PRIMARY KEY,
    username        VARCHAR(100) UNIQUE NOT NULL,
    password_hash   VARCHAR(255) NOT NULL,
    email           VARCHAR(255),
    role            VARCHAR(50) DEFAULT 'user',
    created_at      TIMESTAMP DEFAULT (NOW() AT TIME ZONE 'UTC'),
    is_active       BOOLEAN DEFAULT true
);

CREATE TABLE IF NOT EXISTS conversations (
    conversation_id  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          INTEGER REFERENCES users(user_id),
    title            VARCHAR(255),
    created_at       TIMESTAMP DEFAULT (NOW() AT TIME ZONE 'UTC'),
    updated_at       TIMESTAMP DEFAULT (NOW() AT TIME ZONE 'UTC')
);

CREATE TABLE IF NOT EXISTS messages (
    message_id       SERIAL PRIMARY KEY,
    conversation_id  UUID REFERENCES conversations(conversation_id) ON DELETE CASCADE,
    user_id          INTEGER REFERENCES users(user_id),
    role             VARCHAR(20) NOT NULL CHECK (role IN ('user', 'assistant')),
    content          TEXT NOT NULL,
    tokens           INTEGER DEFAULT 0,
    attachments      JSONB,
    created_at       TIMESTAMP DEFAULT (NOW() AT TIME ZONE 'UTC')
);

CREATE TABLE IF NOT EXISTS user_token_usage (
    usage_id        SERIAL PRIMARY KEY,
    user_id         INTEGER REFERENCES users(user_id),
    month           DATE NOT NULL,
    used_tokens     BIGINT DEFAULT 0,
    quota_tokens    BIGINT DEFAULT 50000,
    UNIQUE (user_id, month)
);

-- An existing database created from the spec has NOW() defaults; move them to UTC (no data changes).
ALTER TABLE users ALTER COLUMN created_at SET DEFAULT (NOW() AT TIME ZONE 'UTC');
ALTER TABLE conversations ALTER COLUMN created_at SET DEFAULT (NOW() AT TIME ZONE 'UTC');
ALTER TABLE conversations ALTER COLUMN updated_at SET DEFAULT (NOW() AT TIME ZONE 'UTC');
ALTER TABLE messages ALTER COLUMN created_at SET DEFAULT (NOW() AT TIME ZONE 'UTC');

-- The spec's indexes.
CREATE INDEX IF NOT EXISTS idx_conversations_user ON conversations(user_id, updated_at DESC);
CREATE INDEX IF NOT EXISTS idx_messages_conversation ON messages(conversation_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_messages_user ON messages(user_id);
CREATE INDEX IF NOT EXISTS idx_token_usage_user_month ON user_token_usage(user_id, month);

-- Ours: a stable order for the conversation list (ties on updated_at) and its cursor, and the chat
-- memory's "last N messages, ties broken by message_id".
CREATE INDEX IF NOT EXISTS idx_conversations_user_page
    ON conversations(user_id, updated_at DESC, conversation_id DESC);
CREATE INDEX IF NOT EXISTS idx_messages_conversation_order
    ON messages(conversation_id, created_at DESC, message_id DESC);

CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW() AT TIME ZONE 'UTC';
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS update_conversation_timestamp ON conversations;
CREATE TRIGGER update_conversation_timestamp
BEFORE UPDATE ON conversations
FOR EACH ROW
EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------------------------------------------
-- Beyond the spec (new tables only: the spec's tables are untouched, n8n workflows keep working).

-- Tokens revoked by logout, kept until they would have expired anyway (token_sha256 = SHA-256 of the JWT).
CREATE TABLE IF NOT EXISTS revoked_tokens (
    token_sha256  CHAR(64) PRIMARY KEY,
    user_id       INTEGER REFERENCES users(user_id) ON DELETE CASCADE,
    expires_at    TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_revoked_tokens_expiry ON revoked_tokens(expires_at);

-- Tokens issued before `not_before` are refused (password change; admin action).
CREATE TABLE IF NOT EXISTS user_token_revocations (
    user_id     INTEGER PRIMARY KEY REFERENCES users(user_id) ON DELETE CASCADE,
    not_before  TIMESTAMP NOT NULL
);

-- Quota alerts already sent: one per user, month and threshold (80, 90, 100 %), whatever the process.
CREATE TABLE IF NOT EXISTS quota_alerts (
    user_id    INTEGER REFERENCES users(user_id) ON DELETE CASCADE,
    month      DATE NOT NULL,
    threshold  SMALLINT NOT NULL,
    sent_at    TIMESTAMP NOT NULL DEFAULT (NOW() AT TIME ZONE 'UTC'),
    PRIMARY KEY (user_id, month, threshold)
);

-- Tokens held for chats whose model call is in flight. A reservation is settled (deleted) by the exchange's
-- save or refunded (deleted) on failure, each at most once; one left behind by a crashed process is
-- refunded by the chat service's sweeper after a timeout.
CREATE TABLE IF NOT EXISTS token_reservations (
    reservation_id  UUID PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    month           DATE NOT NULL,
    tokens          BIGINT NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT (NOW() AT TIME ZONE 'UTC')
);
CREATE INDEX IF NOT EXISTS idx_token_reservations_created ON token_reservations(created_at);
