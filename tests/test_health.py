"""/healthz says the process is up; /readyz tells the truth about the database."""

from __future__ import annotations

import pytest

from services.auth.app import create_app as auth_app
from services.chat.app import create_app as chat_app
from services.conversations.app import create_app as conversations_app
from tests.conftest import make_settings


@pytest.mark.parametrize("factory_fn", [auth_app, chat_app, conversations_app])
async def test_health_and_readiness(make_client, settings, factory_fn):
    client = await make_client(factory_fn(settings))
    r = await client.get("/healthz")
    assert (r.status, await r.json()) == (200, {"success": True, "status": "ok"})
    r = await client.get("/readyz")
    ready = {"success": True, "status": "ready"}
    if factory_fn is chat_app:  # how chat searches the knowledge base (the machine's PostgreSQL has no pgvector)
        ready["details"] = {"knowledge_vectors": "in_process"}
    assert (r.status, await r.json()) == (200, ready)


async def test_readyz_is_503_when_the_database_is_unreachable(make_client, settings):
    from tests.test_chat_failures import closed_port

    unreachable = settings.model_copy(
        update={"database_url": f"postgresql://postgres@127.0.0.1:{closed_port()}/wibot", "db_pool_min": 0}
    )
    client = await make_client(auth_app(unreachable), sessions_loaded=False)
    r = await client.get("/healthz")
    assert r.status == 200  # the process is alive...
    r = await client.get("/readyz")
    assert r.status == 503, await r.text()  # ...but not ready, and says so in the envelope
    assert await r.json() == {
        "success": False,
        "error": "Service temporairement indisponible. Réessayez dans quelques instants.",
        "code": "DB_UNAVAILABLE",
    }
    r = await client.post("/webhook/auth/login", json={"username": "khora", "password": "test123"})
    assert r.status == 503, await r.text()
    assert (await r.json())["code"] == "DB_UNAVAILABLE"


async def test_service_recovers_when_its_connections_are_killed(make_client, settings, db):
    client = await make_client(auth_app(settings))
    # Only this run's database: other stacks and test runs on the same server are left alone.
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'wibot-auth' AND datname = current_database()"
    )
    assert killed >= 1
    statuses = [(await client.get("/readyz")).status for _ in range(3)]
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses


@pytest.mark.parametrize(
    ("api_key", "server_url", "ready"),
    [
        (None, "https://api.mistral.ai", False),  # production mode without a key: every chat would fail
        ("", "https://api.mistral.ai", False),  # MISTRAL_API_KEY= (empty) in .env
        ("a-key", "https://api.mistral.ai", True),
        (None, "http://127.0.0.1:8099", True),  # make run's fake model, or a local model server
        (None, "http://localhost:11434", True),
    ],
)
async def test_chat_without_a_model_key_in_production_is_not_ready(
    make_client, database_url, capsys, api_key, server_url, ready
):
    settings = make_settings(database_url, mistral_api_key=api_key, mistral_server_url=server_url)
    client = await make_client(chat_app(settings))
    r = await client.get("/readyz")
    if ready:
        assert r.status == 200, await r.text()
    else:
        assert r.status == 503
        assert await r.json() == {
            "success": False,
            "error": "Service IA non configuré : clé MISTRAL_API_KEY manquante.",
            "code": "LLM_NOT_CONFIGURED",
        }
        assert "model_not_configured" in capsys.readouterr().out  # and the log says what to set
    assert (await client.get("/healthz")).status == 200  # alive either way
