"""`make migrate` / `python -m shared.migrate`: bring the database of DATABASE_URL (or POSTGRES_*) up to date.

python -m shared.migrate            apply every pending migration, print each one applied
python -m shared.migrate --check    apply nothing; exit 1 and list them when some are pending
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import ValidationError

from shared.migrations import apply_migrations, enable_vectors, known_migrations, missing_migrations
from shared.settings import DatabaseSettings

VECTOR_PATHS = {
    "pgvector": "pgvector (searched by the database, HNSW index)",
    "unavailable": "in process (this server has no pgvector extension)",
    "not_installed": "in process (pgvector is available: a superuser runs CREATE EXTENSION vector, then make migrate)",
}


async def _pending(dsn: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await missing_migrations(conn)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pending migrations (exit 1 if any)")
    args = parser.parse_args(argv)
    try:
        settings = DatabaseSettings()
        dsn = settings.dsn
    except ValidationError as exc:
        print(f"Configuration invalide: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    # Operators read this line; never print the password.
    where = dsn.rsplit("@", 1)[-1]
    try:
        if args.check:
            pending = asyncio.run(_pending(dsn))
            for migration_id in pending:
                print(f"pending  {migration_id}")
            print(f"{where}: {len(pending)} pending of {len(known_migrations())}")
            return 1 if pending else 0
        applied = apply_migrations(dsn, existing_rows_timezone=settings.existing_rows_timezone)
        vectors = enable_vectors(dsn)
    except Exception as exc:  # a CLI: one line, never a traceback (connection refused, bad password, SQL error)
        print(f"Migration impossible sur {where}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    for migration_id in applied:
        print(f"applied  {migration_id}")
    print(f"{where}: up to date ({len(known_migrations())} migrations, {len(applied)} applied now)")
    print(f"knowledge-base vectors: {VECTOR_PATHS[vectors]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
