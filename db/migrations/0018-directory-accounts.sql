-- 0018 accounts from the directory (#29: LDAP / Active Directory login): a local user created or linked by a
-- directory login carries the entry's stable id (objectGUID / entryUUID), so that a rename in the directory keeps
-- the user's conversations. NULL: a local account. Such a user has no local password (password_hash holds a
-- marker that is no bcrypt hash and never matches).
-- depends: 0017-audit-trail

ALTER TABLE users ADD COLUMN IF NOT EXISTS directory_id text;
CREATE UNIQUE INDEX IF NOT EXISTS idx_users_directory_id ON users (directory_id) WHERE directory_id IS NOT NULL;
