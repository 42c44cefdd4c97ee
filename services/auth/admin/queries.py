"""SQL of the admin pages (the user management statements stay with services/auth/users.py)."""

# The Supervision page in one round trip. $1 start of the period, $2 first and $3 last day of byDay (UTC dates),
# $4 current month, $5 default quota. Messages are read once, per day, by an index-only scan of
# idx_messages_supervision; everything else is a count on an index or a small table.
# "Messages" are the questions users asked (role user), as the page labels them; tokens are those of the whole
# exchange (the assistant's answer carries them).
ANALYTICS_SQL = """
WITH per_day AS (
    SELECT created_at::date AS day,
           count(*) FILTER (WHERE role = 'user') AS questions,
           COALESCE(sum(tokens), 0)::bigint AS tokens,
           count(*) FILTER (WHERE role = 'user' AND COALESCE(mode, 'flash') = 'flash') AS flash,
           count(*) FILTER (WHERE role = 'user' AND mode = 'code') AS code,
           count(*) FILTER (WHERE role = 'user' AND mode = 'redaction') AS redaction,
           COALESCE(sum(files_count) FILTER (WHERE files_count > 0), 0)::bigint AS files,
           count(*) FILTER (WHERE files_count > 0) AS with_files,
           count(*) FILTER (WHERE rag_used) AS rag
    FROM messages
    WHERE created_at >= $1
    GROUP BY 1
), month_usage AS (
    SELECT COALESCE(sum(t.used_tokens), 0)::bigint AS used,
           COALESCE(sum(COALESCE(t.quota_tokens, u.standing_quota_tokens, $5)), 0)::bigint AS quota
    FROM users u
    LEFT JOIN user_token_usage t ON t.user_id = u.user_id AND t.month = $4
    WHERE u.is_active IS TRUE OR t.user_id IS NOT NULL
)
SELECT month_usage.used, month_usage.quota,
       (SELECT COALESCE(sum(questions), 0)::bigint FROM per_day) AS total,
       (SELECT COALESCE(sum(questions), 0)::bigint FROM per_day WHERE day = $3) AS today,
       (SELECT json_agg(json_build_object('date', to_char(d, 'YYYY-MM-DD'), 'count', COALESCE(p.questions, 0),
                                          'tokens', COALESCE(p.tokens, 0)) ORDER BY d)
        FROM generate_series($2::date, $3::date, interval '1 day') AS d
        LEFT JOIN per_day p ON p.day = d::date)::text AS by_day,
       (SELECT COALESCE(sum(flash), 0)::bigint FROM per_day) AS flash,
       (SELECT COALESCE(sum(code), 0)::bigint FROM per_day) AS code,
       (SELECT COALESCE(sum(redaction), 0)::bigint FROM per_day) AS redaction,
       (SELECT count(*) FROM conversations) AS conversations,
       (SELECT count(*) FROM conversations WHERE updated_at >= $1) AS active_conversations,
       (SELECT count(*) FROM users WHERE is_active IS TRUE) AS users,
       (SELECT count(*) FROM users WHERE is_active IS TRUE AND directory_id IS NOT NULL) AS directory_users,
       (SELECT COALESCE(sum(files), 0)::bigint FROM per_day) AS files,
       (SELECT COALESCE(sum(with_files), 0)::bigint FROM per_day) AS with_files,
       (SELECT COALESCE(sum(rag), 0)::bigint FROM per_day) AS rag
FROM month_usage
"""
