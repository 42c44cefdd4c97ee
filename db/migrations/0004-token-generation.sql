-- 0004 token generation: a password change or a deactivation moves the user to the next generation, and tokens
-- carry the generation they were issued in (claim `gen`). Unlike `not_before`, which has the whole-second
-- resolution of `iat`, this also revokes tokens issued in the very second of the change. Existing rows start at
-- generation 0, so every token valid today stays valid.
-- From this version, revoked_tokens.token_sha256 holds the SHA-256 of a token's jti (its text for older tokens).
-- depends: 0003-unsaved-charges

ALTER TABLE user_token_revocations ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0;
