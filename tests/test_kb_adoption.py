"""An n8n WIBOT's knowledge base adopted without an embedding call (issue #28, point 5): `kb adopt-n8n` reads the
`n8n_vectors` table n8n's PGVector node fills (LangChain's PGVectorStore shape), on a real pgvector, and the next
incremental sync embeds only the files whose text is no longer what n8n indexed."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from devtools.fake_mistral import fake_embedding
from services.chat.app import create_app
from services.chat.knowledge.chunks import split
from tests.conftest import bearer
from tests.test_knowledge import CORPUS, INGEST, kb_cli, system_prompt

# LangChain's PGVectorStore.ensureTableInDatabase, as n8n's PGVector node runs it (its default column names);
# gen_random_uuid() stands for uuid-ossp's uuid_generate_v4(), which this server does not ship: the same type.
N8N_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS n8n_vectors (
    "id" uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    "text" text,
    "metadata" jsonb,
    "embedding" vector
)
"""
INSERT_SQL = 'INSERT INTO n8n_vectors ("text", "metadata", "embedding") VALUES ($1, $2::jsonb, $3::real[]::vector)'
ADOPTED = ["procedures/vpn-forticlient.md", "procedures/imprimante-reseau.md", "securite/hameconnage.md"]


@pytest.fixture
def database_url(pgvector_database_url):
    """n8n_vectors needs pgvector's type: these tests run on the pgvector server."""
    return pgvector_database_url


@pytest.fixture
def kb_root(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    shutil.copytree(CORPUS, root)
    return root


async def n8n_ingestion(db, kb_root: Path) -> int:
    """What WIBOT's rag_ingestion workflow leaves: each file's chunks with their metadata and mistral-embed
    vectors (the fake embedder's here), `path` relative to its folder with a leading '/'."""
    await db.execute(N8N_TABLE_SQL)
    await db.execute("DELETE FROM n8n_vectors")
    rows = 0
    texts = {path: (kb_root / path).read_text(encoding="utf-8") for path in ADOPTED}
    texts["procedures/ancienne-procedure.md"] = "Procédure retirée du dossier depuis : redémarrer le serveur RADIUS."
    for path, text in texts.items():
        for line, chunk in enumerate(split(text, chars=1000, overlap=200)):
            metadata = {
                "source": Path(path).name,
                "category": path.split("/")[0],
                "path": "/" + path,
                "conversation_id": "",
                "user_id": "",
                "loc": {"lines": {"from": line * 10 + 1, "to": line * 10 + 9}},
            }
            await db.execute(INSERT_SQL, chunk, json.dumps(metadata), fake_embedding(chunk))
            rows += 1
    attachment = {"source": "capture.txt", "path": "/pieces-jointes/capture.txt", "conversation_id": str(uuid.uuid4())}
    await db.execute(INSERT_SQL, "Pièce jointe d'une conversation", json.dumps(attachment), fake_embedding("pj"))
    return rows


async def test_n8n_vectors_are_adopted_without_an_embedding_call_and_the_next_sync_skips_unchanged_files(
    chat_settings, kb_root, db, factory, make_client, fake_mistral
):
    settings = chat_settings.model_copy(update={"kb_root": kb_root})
    rows = await n8n_ingestion(db, kb_root)
    # A file edited after n8n's last run: its adopted chunks are no longer in its text.
    edited = kb_root / "procedures/imprimante-reseau.md"
    edited.write_text(edited.read_text(encoding="utf-8").replace("imprimante", "copieur"), encoding="utf-8")

    code, out, err = await kb_cli(settings, "adopt-n8n")
    assert code == 0, err
    assert list(fake_mistral.embedded) == []  # not one embedding asked for
    assert "4 documents" in out and f"{rows} passages" in out, out
    assert "2 identiques à leur fichier sous KB_ROOT, 2 à réindexer" in out, out
    assert "1 passages de pièces jointes" in out, out
    documents = await db.fetch("SELECT path, category, chunk_count FROM kb_documents ORDER BY path")
    assert [row["path"] for row in documents] == sorted([*ADOPTED, "procedures/ancienne-procedure.md"])
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == rows
    # Every vector came across whole, into the pgvector column too (searchable by the HNSW index).
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE embedding_vector IS NOT NULL") == rows
    assert await db.fetchval(
        "SELECT bool_and(c.embedding = v.embedding::real[]) FROM kb_chunks c JOIN n8n_vectors v ON v.text = c.content"
    )

    # Again: the same documents and chunks, nothing added twice.
    code, out_again, _ = await kb_cli(settings, "adopt-n8n")
    assert code == 0 and report_of(out_again) == report_of(out)
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == rows

    # A chat finds an adopted passage.
    client = await make_client(create_app(settings))
    user_id = await factory.user("khora")
    r = await client.post(
        "/webhook/wibot/chat",
        json={"conversation_id": str(uuid.uuid4()), "message": "Le VPN FortiClient ne se connecte plus"},
        headers=bearer(user_id),
    )
    assert r.status == 200, await r.text()
    assert "vpn-forticlient.md" in system_prompt(fake_mistral)

    # The next incremental sync embeds the edited file, the new ones (never in n8n), and drops the removed one;
    # the two files n8n indexed as they are today are skipped.
    admin_id = await factory.user("chef", role="admin")
    fake_mistral.embedded.clear()  # the question's embedding above
    r = await client.post(INGEST, json={}, headers=bearer(admin_id, "chef", "admin"))
    stats = (await r.json())["stats"]
    assert r.status == 200, stats
    assert stats["skipped"] == 2 and stats["removed"] == 1, stats
    embedded_texts = [text for body in fake_mistral.embedded for text in body["input"]]
    assert not any("FortiClient" in text for text in embedded_texts)  # vpn-forticlient.md: adopted, unchanged
    assert any("copieur" in text for text in embedded_texts)  # the edited file


def report_of(out: str) -> list[str]:
    """The command's report, without the log lines beside it (timestamped)."""
    return [line for line in out.splitlines() if not line[:4].isdigit()]


async def test_without_an_n8n_table_the_command_says_so(chat_settings, kb_root, db):
    await db.execute("DROP TABLE IF EXISTS n8n_vectors")
    code, _, err = await kb_cli(chat_settings.model_copy(update={"kb_root": kb_root}), "adopt-n8n")
    assert code == 1
    assert "pas de table n8n_vectors" in err
