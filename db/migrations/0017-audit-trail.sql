-- 0017 the audit trail: who did what, append-only and tamper-evident, enforced by the database.
--
-- Each row is chained to the one before it: `hash` = sha256(previous row's hash || this row's fields), computed
-- here by a trigger (under a transaction lock, so that two writers never chain to the same row), never by the
-- application. UPDATE and TRUNCATE are refused for everyone; DELETE only for rows older than 180 days (CNIL's
-- lower bound for logs), which is what the retention purge removes, the whole old prefix at once, leaving in
-- audit_anchor the hash of the last row it removed: the chain stays verifiable from there
-- (`python -m services.auth audit verify` recomputes it and names the first row edited or removed).
-- A superuser can still disable the triggers: what they change, the verification finds.
-- depends: 0016-kb-pgvector

CREATE SEQUENCE IF NOT EXISTS audit_log_audit_id_seq;

CREATE TABLE IF NOT EXISTS audit_log (
    audit_id bigint PRIMARY KEY,
    at timestamp without time zone NOT NULL,
    actor_id integer,  -- no foreign key: a deleted user's trail stays, with their numeric id only
    action character varying(40) NOT NULL,
    target text,
    request_id character varying(64),
    client_address character varying(64),
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    previous_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_audit_log_at ON audit_log (at);
CREATE INDEX IF NOT EXISTS idx_audit_log_actor ON audit_log (actor_id, audit_id);

CREATE TABLE IF NOT EXISTS audit_anchor (
    audit_id bigint PRIMARY KEY,  -- the last row a purge removed
    hash bytea NOT NULL,
    purged_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE OR REPLACE FUNCTION wibot_audit_hash(
    previous bytea, audit_id bigint, at timestamp, actor_id integer, action text, target text, request_id text,
    client_address text, details jsonb
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT sha256(previous || convert_to(concat_ws(E'\x1f', audit_id::text, to_char(at, 'YYYY-MM-DD"T"HH24:MI:SS.US'),
    coalesce(actor_id::text, ''), action, coalesce(target, ''), coalesce(request_id, ''),
    coalesce(client_address, ''), details::text), 'UTF8'))
$$;

CREATE OR REPLACE FUNCTION wibot_audit_chain() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    previous bytea;
BEGIN
    -- One writer at a time, until its transaction ends: rows are numbered, timed and chained in one order.
    PERFORM pg_advisory_xact_lock(7302017);
    SELECT hash INTO previous FROM audit_log ORDER BY audit_id DESC LIMIT 1;
    IF previous IS NULL THEN
        SELECT hash INTO previous FROM audit_anchor ORDER BY audit_id DESC LIMIT 1;
    END IF;
    NEW.audit_id := nextval('audit_log_audit_id_seq');
    NEW.at := clock_timestamp() AT TIME ZONE 'UTC';
    NEW.details := coalesce(NEW.details, '{}'::jsonb);
    NEW.previous_hash := coalesce(previous, '\x'::bytea);
    NEW.hash := wibot_audit_hash(NEW.previous_hash, NEW.audit_id, NEW.at, NEW.actor_id, NEW.action, NEW.target,
                                 NEW.request_id, NEW.client_address, NEW.details);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION wibot_audit_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_log' THEN  -- nested: OLD has no `at` on audit_anchor
        IF OLD.at < (now() AT TIME ZONE 'UTC') - interval '180 days' THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DROP TRIGGER IF EXISTS audit_log_chain ON audit_log;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION wibot_audit_chain();
DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION wibot_audit_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION wibot_audit_append_only();
DROP TRIGGER IF EXISTS audit_anchor_append_only ON audit_anchor;
CREATE TRIGGER audit_anchor_append_only BEFORE UPDATE OR DELETE ON audit_anchor
    FOR EACH ROW EXECUTE FUNCTION wibot_audit_append_only();
DROP TRIGGER IF EXISTS audit_anchor_no_truncate ON audit_anchor;
CREATE TRIGGER audit_anchor_no_truncate BEFORE TRUNCATE ON audit_anchor
    FOR EACH STATEMENT EXECUTE FUNCTION wibot_audit_append_only();
