-- 0006 accreditation levels (Safeguard): N0 read-only … N4 full access; the level decides which AI tool
-- calls a person may approve (a request of level L2 needs N2 or more). A WIBOT n8n database already has the
-- column and its CHECK (under another name, maybe): then only what is missing is added.
-- When this migration adds the column, existing admins get N4 and everyone else the default N1, as the n8n
-- install's own migration did.
-- depends: 0005-rate-limits

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'users' AND column_name = 'accreditation_level'
    ) THEN
        ALTER TABLE users ADD COLUMN accreditation_level VARCHAR(2) DEFAULT 'N1';
        UPDATE users SET accreditation_level = 'N4' WHERE role = 'admin';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'users'::regclass AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%accreditation_level%'
    ) THEN
        ALTER TABLE users ADD CONSTRAINT users_accreditation_level_check
            CHECK (accreditation_level IN ('N0', 'N1', 'N2', 'N3', 'N4'));
    END IF;
END $$;
