#!/bin/sh
# First start: a cluster owned by $POSTGRES_USER with $POSTGRES_PASSWORD and the database $POSTGRES_DB (what the
# official image's entrypoint does), then PostgreSQL in the foreground.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --auth=scram-sha-256 --encoding=UTF8 \
    --locale=C.UTF-8 >/dev/null  # UTF8: the official image's (SQL_ASCII would hand drivers bytes)
  rm -f /tmp/pwfile
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=127.0.0.1 -p $PGPORT" -w start >/dev/null
  PGPASSWORD="$POSTGRES_PASSWORD" createdb -h 127.0.0.1 -p "$PGPORT" -U "$POSTGRES_USER" "$POSTGRES_DB"
  pg_ctl -D "$PGDATA" -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -p "$PGPORT"
