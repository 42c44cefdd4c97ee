-- 0007 dates of a database moved from elsewhere. TIMESTAMP columns here hold UTC. A WIBOT n8n install runs
-- PostgreSQL in UTC, so its rows are UTC already and this migration changes nothing. A database whose server
-- ran in local time (e.g. Europe/Paris) holds local wall-clock times: `make migrate` with
-- EXISTING_ROWS_TIMEZONE=Europe/Paris sets `wibot.existing_rows_timezone` for the run that adopts the database
-- (its first migration), and the rows written before are converted to UTC, once, here.
-- depends: 0006-accreditation-level

DO $$
DECLARE
    zone text := NULLIF(current_setting('wibot.existing_rows_timezone', true), '');
BEGIN
    IF zone IS NULL OR zone = 'UTC' THEN
        RETURN;
    END IF;
    -- The trigger would stamp every converted conversation with the time of the migration.
    ALTER TABLE conversations DISABLE TRIGGER update_conversation_timestamp;
    UPDATE users SET created_at = (created_at AT TIME ZONE zone) AT TIME ZONE 'UTC';
    UPDATE conversations SET created_at = (created_at AT TIME ZONE zone) AT TIME ZONE 'UTC',
                             updated_at = (updated_at AT TIME ZONE zone) AT TIME ZONE 'UTC';
    UPDATE messages SET created_at = (created_at AT TIME ZONE zone) AT TIME ZONE 'UTC';
    ALTER TABLE conversations ENABLE TRIGGER update_conversation_timestamp;
    RAISE NOTICE 'dates of existing rows converted from % to UTC', zone;
END $$;
