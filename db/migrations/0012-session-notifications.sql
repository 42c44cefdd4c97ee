-- 0012 every change that decides whether a token may be used is notified on `wibot_sessions`, so each service
-- process keeps those facts in memory (shared/sessions.py) and authenticates without a database round trip:
-- `u:<user_id>` when a user's name, role, activity or accreditation changes, or their tokens' generation;
-- `r:<token key>:<expiry epoch>` for each logged-out token; `*` (reload all) after a TRUNCATE.
-- Notifications are sent at commit, in commit order, and only if the transaction commits.
-- depends: 0011-conversation-message-count

CREATE OR REPLACE FUNCTION notify_session_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('wibot_sessions', '*');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('wibot_sessions', 'u:' || OLD.user_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('wibot_sessions', 'u:' || NEW.user_id);  -- the same text twice is sent once
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION notify_revoked_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('wibot_sessions', '*');
    ELSE
        PERFORM pg_notify('wibot_sessions',
                          'r:' || NEW.token_sha256 || ':' || floor(extract(epoch FROM NEW.expires_at))::bigint);
    END IF;
    RETURN NULL;
END $$;

-- Only the columns authentication reads: a password hash upgraded at login, a quota set by an admin, notify
-- nothing.
DROP TRIGGER IF EXISTS notify_session_user_changed ON users;
CREATE TRIGGER notify_session_user_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.username IS DISTINCT FROM NEW.username
          OR OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active
          OR OLD.accreditation_level IS DISTINCT FROM NEW.accreditation_level)
    EXECUTE FUNCTION notify_session_user();

DROP TRIGGER IF EXISTS notify_session_user_deleted ON users;
CREATE TRIGGER notify_session_user_deleted AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION notify_session_user();

DROP TRIGGER IF EXISTS notify_session_users_truncated ON users;
CREATE TRIGGER notify_session_users_truncated AFTER TRUNCATE ON users FOR EACH STATEMENT
    EXECUTE FUNCTION notify_session_user();

DROP TRIGGER IF EXISTS notify_session_revocation ON user_token_revocations;
CREATE TRIGGER notify_session_revocation AFTER INSERT OR UPDATE OR DELETE ON user_token_revocations FOR EACH ROW
    EXECUTE FUNCTION notify_session_user();

DROP TRIGGER IF EXISTS notify_session_revocations_truncated ON user_token_revocations;
CREATE TRIGGER notify_session_revocations_truncated AFTER TRUNCATE ON user_token_revocations FOR EACH STATEMENT
    EXECUTE FUNCTION notify_session_user();

-- A revoked token's row is only ever inserted (its key is unique) or purged once expired: a purge needs no
-- notice, each process forgets expired keys by itself.
DROP TRIGGER IF EXISTS notify_session_token_revoked ON revoked_tokens;
CREATE TRIGGER notify_session_token_revoked AFTER INSERT ON revoked_tokens FOR EACH ROW
    EXECUTE FUNCTION notify_revoked_token();

DROP TRIGGER IF EXISTS notify_session_tokens_truncated ON revoked_tokens;
CREATE TRIGGER notify_session_tokens_truncated AFTER TRUNCATE ON revoked_tokens FOR EACH STATEMENT
    EXECUTE FUNCTION notify_revoked_token();
