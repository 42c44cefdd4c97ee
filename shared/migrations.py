"""Schema versions: yoyo-migrations applies `db/migrations/NNNN-*.sql` in order and records each one it applied.

The migration files ship with the code, so the migrations the code needs are exactly the files beside it:
a service whose database lacks one of them refuses to start (`DatabaseBehind`) instead of failing on the first
query that touches a missing column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "db" / "migrations"
# yoyo's bookkeeping tables; left out of schema comparisons and of db/schema.sql.
MIGRATION_TABLE = "_yoyo_migration"
YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")

HAS_MIGRATION_TABLE_SQL = f"SELECT to_regclass('{MIGRATION_TABLE}') IS NOT NULL"
APPLIED_MIGRATIONS_SQL = f"SELECT migration_id FROM {MIGRATION_TABLE}"  # noqa: S608 - a constant, never input


class DatabaseBehind(RuntimeError):
    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"the database lacks {len(missing)} migration(s) ({', '.join(missing)}): run `make migrate`"
            " (python -m shared.migrate) and start again"
        )


def known_migrations() -> list[str]:
    """Ids of the migrations shipped with this code, in the order they apply (yoyo's id is the file's stem)."""
    return sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def yoyo_url(dsn: str) -> str:
    """yoyo picks its driver from the URL scheme; ours is psycopg 3."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://…")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def apply_migrations(dsn: str, *, upto: str | None = None, existing_rows_timezone: str = "UTC") -> list[str]:
    """Apply every pending migration (or those up to `upto` included), under yoyo's lock; returns their ids.

    Each migration runs in its own transaction: one that fails leaves the database at the previous version.
    `existing_rows_timezone` is what the dates already in a database hold when this code adopts it (its first
    migration): 0007 converts them to UTC. On a database already migrated it is ignored: its rows are ours, UTC.
    """
    from yoyo import get_backend, read_migrations

    url = yoyo_url(dsn)
    backend: Any = get_backend(url)
    if existing_rows_timezone != "UTC" and not _recorded_any_migration(backend.connection):
        # yoyo runs each migration on a connection of its own, opened from the URL: the option rides in it.
        backend.connection.close()
        option = quote(f"-c wibot.existing_rows_timezone={existing_rows_timezone}")
        backend = get_backend(f"{url}{'&' if '?' in url else '?'}options={option}")
    try:
        migrations: Any = read_migrations(str(MIGRATIONS_DIR))
        if upto is not None:
            ids = known_migrations()
            if upto not in ids:
                raise ValueError(f"unknown migration {upto!r}")
            wanted = set(ids[: ids.index(upto) + 1])
            migrations = migrations.filter(lambda m: m.id in wanted)
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


ENABLE_VECTORS_SQL = "SELECT wibot_kb_vectors()"  # migration 0016: idempotent


def enable_vectors(dsn: str) -> str:
    """The knowledge base's pgvector column and index, where the extension is (or can now be) installed: called
    after every `make migrate`, so that a superuser's later `CREATE EXTENSION vector` takes effect. Returns
    'pgvector', 'unavailable' (no extension on this server) or 'not_installed' (this role may not create it)."""
    import psycopg

    with psycopg.connect(dsn) as connection:
        row = connection.execute(ENABLE_VECTORS_SQL).fetchone()
    return str(row[0]) if row else "unavailable"


def _recorded_any_migration(connection: Any) -> bool:
    """yoyo may create its (empty) tables as soon as it connects: look for a recorded migration, not a table."""
    with connection.cursor() as cursor:
        cursor.execute(HAS_MIGRATION_TABLE_SQL)
        (has_table,) = cursor.fetchone()
        recorded = False
        if has_table:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {MIGRATION_TABLE})")  # noqa: S608 - a constant
            (recorded,) = cursor.fetchone()
    connection.commit()
    return bool(recorded)


async def missing_migrations(conn: Any) -> list[str]:
    """Migrations this code needs that the database has not recorded (an asyncpg connection or pool)."""
    applied: set[str] = set()
    if await conn.fetchval(HAS_MIGRATION_TABLE_SQL):
        applied = {row["migration_id"] for row in await conn.fetch(APPLIED_MIGRATIONS_SQL)}
    return [migration_id for migration_id in known_migrations() if migration_id not in applied]


async def ensure_database_current(conn: Any) -> None:
    missing = await missing_migrations(conn)
    if missing:
        raise DatabaseBehind(missing)
