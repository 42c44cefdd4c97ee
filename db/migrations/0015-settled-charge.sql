-- 0015 the settle arithmetic in one place: what a finished request is charged. It cost `wanted` tokens and held
-- `held` on the quota; past what it held, only what the quota still has room for is charged, so that
-- used_tokens never exceeds quota_tokens. Used by the exchange's save and by the charge of an unsaved answer.
-- depends: 0014-kb-chunk-scope

CREATE OR REPLACE FUNCTION wibot_settled_charge(held bigint, wanted bigint, used bigint, quota bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT LEAST(wanted, held + GREATEST(quota - used, 0)) $$;
