"""Knowledge base: a folder ingested (CLI and route) is retrieved in chat, cited, counted; incremental runs skip,
update and remove; every refusal; a user's attachment never reaches anyone else.

The corpus is devtools/kb_corpus (French IT procedures written for these tests, bench/knowledge.py and make
run). The model and the embedder are the fake Mistral server (deterministic hashed-word vectors): tests read the
prompt it received. Each chat app runs its real index listener on the test database.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import itertools
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import uuid
from pathlib import Path

import pytest

from devtools.fake_mistral import fake_embedding
from services.chat.app import create_app
from services.chat.extraction import FileProblem
from services.chat.knowledge.base import forget_orphans
from services.chat.knowledge.chunks import split
from services.chat.knowledge.documents import document_text
from services.chat.knowledge.index import VectorIndex
from services.chat.resources import CHAT as RESOURCES
from services.conversations.app import create_app as create_conversations_app
from shared import AppKeys
from shared.make_run import RECORD, write_record
from tests.conftest import TEST_SECRET, bearer, on_vector_path
from tests.documents import PNG, b64, text_pdf
from tests.polling import until

ROOT = Path(__file__).resolve().parent.parent

CHAT = "/webhook/wibot/chat"
INGEST = "/webhook/wibot/rag/ingest"
CORPUS = Path(__file__).resolve().parent.parent / "devtools" / "kb_corpus"
CORPUS_FILES = 11


@pytest.fixture
def database_url(request, vector_path, database_url):
    """Every test of this module runs on both vector paths (tests/conftest.py: vector_path)."""
    return on_vector_path(request, vector_path, database_url)


@pytest.fixture
def kb_root(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    shutil.copytree(CORPUS, root)
    return root


@pytest.fixture
def kb_settings(chat_settings, kb_root):
    return chat_settings.model_copy(update={"kb_root": kb_root})


@pytest.fixture
async def client(make_client, kb_settings):
    return await make_client(create_app(kb_settings))


@pytest.fixture
async def admin_id(factory) -> int:
    return await factory.user("chef", role="admin")


@pytest.fixture
async def user_id(factory) -> int:
    return await factory.user("khora")


async def ingest(client, admin_id: int, **body) -> tuple[int, dict]:
    r = await client.post(INGEST, json=body, headers=bearer(admin_id, "chef", "admin"))
    # The index applies what was written a few milliseconds later, through its notifications: wait for them.
    await asyncio.wait_for(client.app[RESOURCES].knowledge.follower.caught_up(client.app[AppKeys.DB]), 10)
    return r.status, await r.json()


async def ask(client, user_id: int, message: str, *, conversation_id: uuid.UUID | None = None, files=None):
    body = {"conversation_id": str(conversation_id or uuid.uuid4()), "message": message}
    if files:
        body["files"] = files
    r = await client.post(CHAT, json=body, headers=bearer(user_id))
    return r.status, await r.json()


def system_prompt(fake_mistral) -> str:
    return fake_mistral.received[-1]["messages"][0]["content"]


async def kb_cli(settings, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "JWT_SECRET": TEST_SECRET,
        "KB_ROOT": str(settings.kb_root),
        "MISTRAL_SERVER_URL": settings.mistral_server_url,
        "MISTRAL_API_KEY": "test-key",
    }
    # stderr is a terminal (a pty), as for an operator: tqdm draws its bar only there.
    terminal, terminal_end = pty.openpty()
    fcntl.ioctl(terminal_end, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a 100-column terminal
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.chat", "kb", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=terminal_end,
        )  # fmt: skip
        os.close(terminal_end)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        err = await asyncio.to_thread(read_all, terminal)
    finally:
        os.close(terminal)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(errors="replace")


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# --- reading and cutting documents -------------------------------------------------------------------------


def test_office_and_html_documents_give_their_text(tmp_path):
    import docx
    import openpyxl

    document = docx.Document()
    document.add_paragraph("Procédure de sauvegarde du serveur GLPI")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Serveur", "srv-glpi"
    docx_bytes = io.BytesIO()
    document.save(docx_bytes)
    assert document_text(docx_bytes.getvalue(), ".docx", max_pages=10) == (
        "Procédure de sauvegarde du serveur GLPI\nServeur | srv-glpi"
    )

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sites"
    sheet.append(["EHPAD", "Bornes"])
    sheet.append(["Les Tilleuls", 12])
    sheet.append([None, None])
    xlsx_bytes = io.BytesIO()
    workbook.save(xlsx_bytes)
    assert document_text(xlsx_bytes.getvalue(), ".xlsx", max_pages=10) == (
        "## Feuille : Sites\nEHPAD | Bornes\nLes Tilleuls | 12"
    )

    html = (CORPUS / "infrastructure" / "wifi-etablissements.html").read_bytes()
    text = document_text(html, ".html", max_pages=10)
    assert "WIDIP-PRO" in text and "-67 dBm" in text
    assert "analytics" not in text and "script ignoré" not in text and "font-family" not in text

    assert document_text(text_pdf(["Page un", "Page deux"]), ".pdf", max_pages=10) == (
        "[Page 1/2]\nPage un\n\n[Page 2/2]\nPage deux"
    )


@pytest.mark.parametrize(
    ("data", "suffix", "fault"),
    [
        (PNG, ".txt", "type"),
        (b"   \n", ".md", "unreadable"),
        (b"not a zip", ".docx", "unreadable"),
        (b"PK\x03\x04junk", ".xlsx", "unreadable"),
    ],
    ids=["picture-renamed", "blank", "docx-corrupt", "xlsx-corrupt"],
)
def test_unusable_documents_say_why(data, suffix, fault):
    with pytest.raises(FileProblem) as problem:
        document_text(data, suffix, max_pages=10)
    assert problem.value.fault == fault


def test_chunks_hold_their_size_and_overlap():
    text = " ".join(f"Phrase numéro {n} de la procédure." for n in range(400))
    chunks = split(text, chars=300, overlap=60)
    assert len(chunks) > 20 and all(len(chunk) <= 300 for chunk in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after[:20] in before  # each chunk starts inside the previous one
    assert chunks[0].startswith("Phrase numéro 0 ") and chunks[-1].endswith("numéro 399 de la procédure.")


def test_the_fake_embedder_puts_texts_sharing_words_close():
    vpn = fake_embedding("Connexion VPN FortiClient refusée, erreur -7200")
    close = fake_embedding("Le client VPN FortiClient affiche l'erreur -7200 à la connexion")
    far = fake_embedding("Renouveler le certificat Let's Encrypt avec certbot")
    cosine = VectorIndex()
    cosine.replace_all(
        [{"document_id": 1, "chunk_id": 1, "embedding": close}, {"document_id": 2, "chunk_id": 2, "embedding": far}]
    )
    hits = cosine.search(vpn, limit=2, min_similarity=-1)
    assert [chunk_id for chunk_id, _ in hits] == [1, 2]
    assert hits[0][1] > 0.4 and abs(hits[1][1]) < 0.1


# --- ingestion ------------------------------------------------------------------------------------------


async def test_a_folder_ingested_by_the_route_is_retrieved_and_cited(client, admin_id, user_id, db, fake_mistral):
    status, body = await ingest(client, admin_id)
    assert status == 200, body
    stats = body["stats"]
    assert (stats["files"], stats["added"], stats["updated"], stats["removed"], stats["skipped"], stats["failed"]) == (
        CORPUS_FILES, CORPUS_FILES, 0, 0, 0, []
    )  # fmt: skip
    assert stats["chunks"] == await db.fetchval("SELECT count(*) FROM kb_chunks") > CORPUS_FILES
    trail = await db.fetchrow("SELECT action, actor_id, target FROM audit_log ORDER BY audit_id DESC LIMIT 1")
    assert tuple(trail) == ("kb_ingestion", admin_id, ".")
    assert await db.fetchval("SELECT category FROM kb_documents WHERE source = 'vpn-forticlient.md'") == "procedures"

    status, body = await ask(client, user_id, "J'ai perdu mon FortiToken, que faire pour le VPN ?")
    assert status == 200, body
    prompt = system_prompt(fake_mistral)
    assert "## Documentation WIDIP (base de connaissances)" in prompt and "cite chaque source" in prompt
    assert "[1] Source : vpn-forticlient.md\n" in prompt
    assert "réattribue un FortiToken" in prompt
    assert await db.fetchval("SELECT rag_used FROM messages WHERE role = 'user'") is True
    assert await db.fetchval("SELECT rag_used FROM messages WHERE role = 'assistant'") is False


async def test_the_vector_path_is_said_at_start_in_readyz_and_as_a_metric(
    make_client, kb_settings, vector_path, capsys
):
    """pgvector where the database has it (migration 0016), in process otherwise: the operator sees which."""
    client = await make_client(create_app(kb_settings))
    assert client.app[RESOURCES].knowledge.index.path == vector_path
    started = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"kb_vector_path"' in line]
    assert [event["path"] for event in started] == [vector_path]
    r = await client.get("/readyz")
    assert (await r.json())["details"] == {"knowledge_vectors": vector_path}
    metrics = await (await client.get("/metrics")).text()
    assert f'wibot_kb_vector_path{{path="{vector_path}"}} 1.0' in metrics
    other = "in_process" if vector_path == "pgvector" else "pgvector"
    assert f'wibot_kb_vector_path{{path="{other}"}} 0.0' in metrics


async def test_kb_vector_search_in_process_keeps_the_vectors_in_process_even_on_pgvector(make_client, kb_settings):
    client = await make_client(create_app(kb_settings.model_copy(update={"kb_vector_search": "in_process"})))
    assert client.app[RESOURCES].knowledge.index.path == "in_process"


async def test_a_message_the_documents_do_not_answer_gets_no_passage(client, admin_id, user_id, db, fake_mistral):
    assert (await ingest(client, admin_id))[0] == 200
    status, _ = await ask(client, user_id, "Bonjour !")
    assert status == 200
    assert "Documentation WIDIP" not in system_prompt(fake_mistral)
    assert await db.fetchval("SELECT rag_used FROM messages WHERE role = 'user'") is False


async def test_without_documents_chat_makes_no_embedding_call(client, user_id, fake_mistral):
    assert (await ask(client, user_id, "Comment configurer le VPN ?"))[0] == 200
    assert len(fake_mistral.embedded) == 0
    assert "Documentation WIDIP" not in system_prompt(fake_mistral)


async def test_incremental_runs_skip_update_and_remove(client, admin_id, user_id, kb_root, db, fake_mistral):
    assert (await ingest(client, admin_id))[0] == 200
    first_ids = set(await db.fetchval("SELECT array_agg(chunk_id) FROM kb_chunks"))

    fake_mistral.embedded.clear()
    status, body = await ingest(client, admin_id)
    assert status == 200
    assert (body["stats"]["skipped"], body["stats"]["chunks"], len(fake_mistral.embedded)) == (CORPUS_FILES, 0, 0)
    assert set(await db.fetchval("SELECT array_agg(chunk_id) FROM kb_chunks")) == first_ids

    vpn = kb_root / "procedures" / "vpn-forticlient.md"
    vpn.write_text("# VPN\nLe VPN WireGuard remplace FortiClient depuis mars : clé publique à demander au N2.\n")
    (kb_root / "securite" / "hameconnage.md").unlink()
    status, body = await ingest(client, admin_id)
    stats = body["stats"]
    assert (stats["files"], stats["updated"], stats["removed"], stats["skipped"], stats["chunks"]) == (
        CORPUS_FILES - 1, 1, 1, CORPUS_FILES - 2, 1
    )  # fmt: skip
    texts = await db.fetchval(
        "SELECT array_agg(content) FROM kb_chunks JOIN kb_documents USING (document_id) WHERE source = $1",
        "vpn-forticlient.md",
    )
    assert texts == ["# VPN\nLe VPN WireGuard remplace FortiClient depuis mars : clé publique à demander au N2."]
    assert await db.fetchval("SELECT count(*) FROM kb_documents WHERE source = 'hameconnage.md'") == 0

    site_chunks = await db.fetchval("SELECT count(*) FROM kb_chunks")
    kb = client.server.app[RESOURCES].knowledge
    await until(lambda: kb.index.size == site_chunks)
    assert (await ask(client, user_id, "Quel VPN WireGuard utiliser ?"))[0] == 200
    assert "WireGuard remplace FortiClient" in system_prompt(fake_mistral)

    status, body = await ingest(client, admin_id, mode="full")
    assert (body["stats"]["updated"], body["stats"]["skipped"]) == (CORPUS_FILES - 1, 0)


async def test_a_folder_and_a_category_can_be_named(client, admin_id, db):
    status, body = await ingest(client, admin_id, path="securite", category="sécurité")
    assert status == 200, body
    assert body["stats"]["files"] == 2
    rows = await db.fetch("SELECT path, category FROM kb_documents ORDER BY path")
    assert [tuple(row) for row in rows] == [
        ("securite/certificats-ssl.txt", "sécurité"),
        ("securite/hameconnage.md", "sécurité"),
    ]
    # Ingesting one folder never removes the documents of another.
    assert (await ingest(client, admin_id, path="procedures"))[1]["stats"]["removed"] == 0
    assert await db.fetchval("SELECT count(*) FROM kb_documents WHERE category = 'sécurité'") == 2


async def test_only_admins_ingest(client, user_id):
    r = await client.post(INGEST, json={})
    assert (r.status, (await r.json())["success"]) == (401, False)
    r = await client.post(INGEST, json={}, headers=bearer(user_id))
    assert (r.status, (await r.json())["code"]) == (403, "FORBIDDEN")


@pytest.mark.parametrize(
    "path", ["../", "procedures/../../", "/etc", "/etc/passwd", "lien-dehors", "lien-dehors/passwd"]
)
async def test_paths_leaving_the_root_are_refused(client, admin_id, kb_root, tmp_path, path, db):
    outside = tmp_path / "dehors"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    (kb_root / "lien-dehors").symlink_to(outside)
    status, body = await ingest(client, admin_id, path=path)
    assert (status, body["code"]) == (400, "KB_PATH_OUTSIDE"), body
    assert body["error"] == "Chemin hors de la base de connaissances."
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 0


async def test_a_symlink_inside_the_root_leading_outside_is_not_followed(client, admin_id, kb_root, tmp_path, db):
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\nmot de passe du coffre")
    (kb_root / "procedures" / "raccourci.md").symlink_to(secret)
    status, body = await ingest(client, admin_id)
    assert status == 200 and body["stats"]["files"] == CORPUS_FILES
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE content LIKE '%coffre%'") == 0


async def test_bad_requests_and_an_unconfigured_root(make_client, chat_settings, admin_id, client):
    cases = [
        ({"mode": "tout"}, "VALIDATION_ERROR"),
        ({"path": "absent"}, "KB_PATH_NOT_FOUND"),
        ({"path": "0" * 1000}, "VALIDATION_ERROR"),  # longer than a file name may be (found by the fuzzer)
        ({"path": "a\u0000b"}, "VALIDATION_ERROR"),
    ]
    for body, code in cases:
        r = await client.post(INGEST, json=body, headers=bearer(admin_id, "chef", "admin"))
        assert (r.status, (await r.json())["code"]) == (400, code)
    unconfigured = await make_client(create_app(chat_settings))
    r = await unconfigured.post(INGEST, json={}, headers=bearer(admin_id, "chef", "admin"))
    assert (r.status, await r.json()) == (
        503,
        {"success": False, "error": "Base de connaissances non configurée (KB_ROOT).", "code": "KB_NOT_CONFIGURED"},
    )


async def test_one_ingestion_at_a_time(client, admin_id, db):
    assert await db.fetchval("SELECT pg_try_advisory_lock(hashtext('wibot_kb_ingest'))")
    try:
        status, body = await ingest(client, admin_id)
        assert (status, body["code"]) == (409, "KB_BUSY")
    finally:
        await db.fetchval("SELECT pg_advisory_unlock(hashtext('wibot_kb_ingest'))")
    assert (await ingest(client, admin_id))[0] == 200


# This test database's only: another test run on the same server takes its own.
ADVISORY_LOCKS_HERE = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def test_an_interrupted_ingestion_leaves_no_lock_behind(client, admin_id, db, fake_mistral):
    """The lock lives on a connection of its own, closed whatever stops the run (pooled connections go back
    without a reset, so a lock left on one would outlive the ingestion)."""
    from services.chat.knowledge.ingest import ingest as run_ingestion

    fake_mistral.embedding_hold = asyncio.Event()
    kb = client.app[RESOURCES].knowledge
    task = asyncio.create_task(run_ingestion(kb, path=None, mode="full", category=None))
    async with asyncio.timeout(20):
        while not fake_mistral.embedded:  # holding the lock, waiting for its first embeddings
            await asyncio.sleep(0.01)
    assert await db.fetchval(ADVISORY_LOCKS_HERE) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(10):
        while await db.fetchval(ADVISORY_LOCKS_HERE):
            await asyncio.sleep(0.01)
    fake_mistral.embedding_hold.set()
    assert (await ingest(client, admin_id))[0] == 200


async def test_a_file_is_written_whole_or_not_at_all(client, admin_id, kb_root, db, fake_mistral):
    assert (await ingest(client, admin_id, path="procedures"))[0] == 200
    before = await db.fetch("SELECT chunk_id, content FROM kb_chunks ORDER BY chunk_id")
    (kb_root / "procedures" / "vpn-forticlient.md").write_text("# VPN\n" + "Nouvelle procédure. " * 200)
    fake_mistral.embedding_failures = [500] * 50  # beyond the SDK's retries
    status, body = await ingest(client, admin_id, path="procedures")
    assert (status, body["code"]) == (502, "LLM_UNAVAILABLE")
    assert await db.fetch("SELECT chunk_id, content FROM kb_chunks ORDER BY chunk_id") == before
    fake_mistral.embedding_failures = []
    assert (await ingest(client, admin_id, path="procedures"))[1]["stats"]["updated"] == 1


async def test_an_unreadable_file_is_reported_and_the_others_ingested(client, admin_id, kb_root, db):
    (kb_root / "procedures" / "scan.pdf").write_bytes(b"%PDF-1.4 garbage")
    (kb_root / "procedures" / "photo.txt").write_bytes(PNG)
    status, body = await ingest(client, admin_id)
    assert status == 200
    assert body["stats"]["failed"] == [
        {"path": "procedures/photo.txt", "error": "type de fichier non pris en charge"},
        {"path": "procedures/scan.pdf", "error": "PDF corrompu"},
    ]
    assert body["stats"]["added"] == CORPUS_FILES


async def test_the_cli_ingests_with_a_progress_bar_and_reports(kb_settings, client, user_id, db, fake_mistral):
    code, out, err = await kb_cli(kb_settings, "ingest")
    assert code == 0, err
    assert f"{CORPUS_FILES} fichiers : {CORPUS_FILES} ajoutés, 0 mis à jour, 0 inchangés, 0 retirés" in out
    assert f"{CORPUS_FILES}/{CORPUS_FILES}" in err  # tqdm's count
    code, out, _ = await kb_cli(kb_settings, "ingest", str(kb_settings.kb_root / "procedures"), "--full")
    assert code == 0 and "5 fichiers : 0 ajoutés, 5 mis à jour" in out
    trail = await db.fetchrow(
        "SELECT action, actor_id, target, details->>'via' AS via, details->>'updated' AS updated FROM audit_log"
        " ORDER BY audit_id DESC LIMIT 1"
    )
    assert (trail["action"], trail["actor_id"], trail["via"], trail["updated"]) == ("kb_ingestion", None, "cli", "5")
    assert trail["target"].endswith("procedures")

    site_chunks = await db.fetchval("SELECT count(*) FROM kb_chunks")
    kb = client.server.app[RESOURCES].knowledge  # ingested by another process: this one heard of it
    await until(lambda: kb.index.size == site_chunks)
    assert (await ask(client, user_id, "Combien de points de restauration Veeam garde-t-on ?"))[0] == 200
    assert "Source : sauvegarde-veeam.md" in system_prompt(fake_mistral)


async def test_the_cli_beside_make_run_finds_its_database_model_and_folder_while_it_runs(
    kb_settings, db, fake_mistral, tmp_path
):
    """#33, #44: `kb ingest` beside `make run` uses what make run's services use — its database (the private
    cluster, on a machine whose PostgreSQL lacks pgvector), its fake model server, its demo folder — from the record
    make run leaves for as long as its supervisor runs; a record whose supervisor is gone is never used."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("")
    supervisor = subprocess.Popen([sys.executable, "-m", "devtools.supervisor", str(procfile)], cwd=ROOT)
    stack_env = {"DATABASE_URL": kb_settings.database_url, "MISTRAL_SERVER_URL": fake_mistral.url,
                 "KB_ROOT": str(kb_settings.kb_root)}  # fmt: skip
    write_record(tmp_path / RECORD, pid=supervisor.pid, environment=stack_env)
    own = ("MISTRAL_", "DATABASE_URL", "POSTGRES_", "KB_")  # a newcomer's shell sets none of them
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(own)}, "JWT_SECRET": TEST_SECRET,
           "STACK_RUN_DIR": str(tmp_path)}  # fmt: skip

    async def ingest() -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.chat", "kb", "ingest", "procedures", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode, out.decode(), err.decode()

    try:
        code, out, err = await ingest()
        assert code == 0, err[-2000:]
        assert "5 fichiers : 5 ajoutés" in out
        assert len(fake_mistral.embedded) > 0 and await db.fetchval("SELECT count(*) FROM kb_chunks") > 0
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=20)
    code, _, err = await ingest()  # make run stopped: the record is stale, the CLI's own settings count
    assert code != 0 and "5432" in err, err[-2000:]


# --- the in-process index -----------------------------------------------------------------------------


@pytest.mark.production_loop
async def test_every_process_hears_of_a_change_and_reloads_after_losing_its_connection(
    make_client, kb_settings, client, admin_id, db
):
    other = (await make_client(create_app(kb_settings))).server.app[RESOURCES].knowledge.index
    assert other.ready and other.size == 0
    assert (await ingest(client, admin_id, path="procedures"))[0] == 200
    count = await db.fetchval("SELECT count(*) FROM kb_chunks")
    await until(lambda: other.size == count)

    # Cut every index listener of this test database; a change made while they are away is not notified to
    # them: only the full reload after reconnecting can bring it.
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'wibot-chat-kb'"
    )
    await until(lambda: not other.ready)
    await db.execute("DELETE FROM kb_documents WHERE source = 'vpn-forticlient.md'")
    remaining = await db.fetchval("SELECT count(*) FROM kb_chunks")
    assert remaining < count
    await until(lambda: other.ready and other.size == remaining)

    # Chunks written apart from their document's row (by hand, a restore, a script) are heard of too.
    document_id = await db.fetchval("SELECT min(document_id) FROM kb_documents")
    await db.execute(
        "INSERT INTO kb_chunks (document_id, position, content, embedding) VALUES ($1, 1000, 'ajout', $2)",
        document_id,
        fake_embedding("ajout manuel"),
    )
    await until(lambda: other.size == remaining + 1)

    await db.execute("TRUNCATE kb_documents CASCADE")  # no row trigger fires: the statement trigger says `*`
    await until(lambda: other.size == 0)


async def test_while_the_index_is_away_full_text_still_answers(client, admin_id, user_id, db, fake_mistral):
    assert (await ingest(client, admin_id))[0] == 200
    kb = client.server.app[RESOURCES].knowledge
    kb.index.ready = False  # as after a lost connection, before the reload
    fake_mistral.embedding_failures = [500] * 50  # and the question cannot be embedded either
    status, _ = await ask(client, user_id, "Quelle plage d'adresses IP réserver pour une imprimante réseau ?")
    assert status == 200
    assert "Source : imprimante-reseau.md" in system_prompt(fake_mistral)
    assert await db.fetchval("SELECT rag_used FROM messages WHERE role = 'user'") is True
    # A question is plain text: `-7200` is a word to find, not "without 7200".
    assert (await ask(client, user_id, "Erreur -7200 à la connexion VPN"))[0] == 200
    assert "[1] Source : vpn-forticlient.md" in system_prompt(fake_mistral)


# --- large attachments ----------------------------------------------------------------------------------


def long_report() -> str:
    filler = "Relevé de température de la salle serveur : normal. " * 40
    return (
        filler + "\nIncident majeur : l'onduleur APC du local technique a basculé sur batterie à 3 h 12 et la baie 2"
        " s'est arrêtée à 3 h 40 faute d'autonomie.\n" + filler
    )


async def test_an_attachment_over_the_budget_is_indexed_for_its_conversation_only(
    make_client, kb_settings, factory, user_id, db, fake_mistral
):
    client = await make_client(create_app(kb_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    report = long_report()
    conversation = uuid.uuid4()
    files = [{"name": "rapport-nuit.txt", "content": b64(report.encode())}]
    status, body = await ask(client, user_id, "Que s'est-il passé avec l'onduleur ?", conversation_id=conversation,
                             files=files)  # fmt: skip
    assert status == 200, body
    user_message = fake_mistral.received[-1]["messages"][-1]["content"]
    assert user_message.startswith("Que s'est-il passé avec l'onduleur ?\n\n--- Fichier : rapport-nuit.txt ---\n[")
    assert "indexé pour cette conversation" in user_message and "Relevé" not in user_message
    prompt = system_prompt(fake_mistral)
    assert "Source : rapport-nuit.txt" in prompt and "onduleur APC du local technique" in prompt
    row = await db.fetchrow("SELECT conversation_id, user_id, category FROM kb_documents")
    assert tuple(row) == (conversation, user_id, "attachment")
    attachment = await db.fetchval("SELECT attachments FROM messages WHERE role = 'user'")
    assert '"indexed": true' in attachment and '"truncated": false' in attachment

    # The next message of the conversation still finds it; another conversation, another user: never.
    assert (await ask(client, user_id, "Et la baie 2 de l'onduleur ?", conversation_id=conversation))[0] == 200
    assert "onduleur APC" in system_prompt(fake_mistral)
    assert (await ask(client, user_id, "Que s'est-il passé avec l'onduleur APC ?"))[0] == 200
    assert "onduleur APC" not in system_prompt(fake_mistral)
    intruder = await factory.user("intrus")
    status, _ = await ask(client, intruder, "Que s'est-il passé avec l'onduleur APC ?")
    assert status == 200 and "onduleur APC" not in system_prompt(fake_mistral)
    status, _ = await ask(client, intruder, "L'onduleur APC ?", conversation_id=conversation)
    assert status == 409  # someone else's conversation id: refused before anything is read

    # Deleted with its conversation, through the conversations service.
    conversations = await make_client(create_conversations_app(kb_settings))
    r = await conversations.delete("/webhook/wibot/conversation/delete", json={"conversationId": str(conversation)},
                                 headers=bearer(user_id))  # fmt: skip
    assert r.status == 200, await r.text()
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 0
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 0


async def test_an_attachment_of_an_exchange_that_failed_never_reaches_whoever_takes_its_conversation_id(
    make_client, kb_settings, factory, admin_id, user_id, db, fake_mistral
):
    client = await make_client(create_app(kb_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    assert (await ingest(client, admin_id))[0] == 200  # the site's documents: every message is searched
    conversation = uuid.uuid4()
    files = [{"name": "rapport-nuit.txt", "content": b64(long_report().encode())}]
    fake_mistral.failures = [500] * 50
    status, _ = await ask(client, user_id, "L'onduleur ?", conversation_id=conversation, files=files)
    assert status == 502  # indexed, never saved
    assert await db.fetchval("SELECT count(*) FROM kb_documents WHERE conversation_id IS NOT NULL") == 1
    fake_mistral.failures = []
    intruder = await factory.user("intrus")
    status, _ = await ask(client, intruder, "Que s'est-il passé avec l'onduleur APC ?", conversation_id=conversation)
    assert status == 200  # the id was free: the conversation is now the intruder's
    prompt = system_prompt(fake_mistral)
    assert "Source : rapport-nuit.txt" not in prompt and "onduleur APC du local technique" not in prompt


async def test_an_attachment_beyond_the_chunk_limit_is_indexed_in_part_and_says_so(
    make_client, kb_settings, user_id, db, fake_mistral
):
    settings = kb_settings.model_copy(update={"chat_files_max_chars": 1_500, "kb_attachment_max_chunks": 2})
    client = await make_client(create_app(settings))
    files = [{"name": "rapport-nuit.txt", "content": b64(long_report().encode())}]
    assert (await ask(client, user_id, "Résume", files=files))[0] == 200
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 2
    sent = fake_mistral.received[-1]["messages"][-1]["content"]
    assert "[Seuls les 1 600 premiers caractères environ ont été indexés.]" in sent


async def test_with_retrieval_off_a_large_attachment_is_cut_not_indexed(
    make_client, kb_settings, user_id, db, fake_mistral
):
    settings = kb_settings.model_copy(update={"chat_files_max_chars": 1_500, "kb_top_k": 0})
    client = await make_client(create_app(settings))
    files = [{"name": "rapport-nuit.txt", "content": b64(long_report().encode())}]
    assert (await ask(client, user_id, "Résume", files=files))[0] == 200
    assert "[Contenu tronqué : le fichier rapport-nuit.txt" in fake_mistral.received[-1]["messages"][-1]["content"]
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 0 and len(fake_mistral.embedded) == 0


@pytest.mark.production_loop
async def test_when_indexing_fails_the_attachment_is_cut_as_before(make_client, kb_settings, user_id, db, fake_mistral):
    client = await make_client(create_app(kb_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    fake_mistral.embedding_failures = [500] * 50
    files = [{"name": "rapport-nuit.txt", "content": b64(long_report().encode())}]
    status, body = await ask(client, user_id, "Résume", files=files)
    assert status == 200, body
    assert (
        "[Contenu tronqué : le fichier rapport-nuit.txt est coupé"
        in fake_mistral.received[-1]["messages"][-1]["content"]
    )
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 0


async def test_attachments_of_an_exchange_never_saved_are_forgotten(
    make_client, kb_settings, user_id, db, fake_mistral
):
    client = await make_client(create_app(kb_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    files = [{"name": "rapport-nuit.txt", "content": b64(long_report().encode())}]
    saved = uuid.uuid4()
    assert (await ask(client, user_id, "Résume", conversation_id=saved, files=files))[0] == 200
    fake_mistral.failures = [500] * 50  # the next exchange is never saved: its conversation never exists
    assert (await ask(client, user_id, "Résume", files=files))[0] == 502
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 2
    pool = client.server.app[RESOURCES].knowledge.pool
    await forget_orphans(pool, older_than_s=600)
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 2  # too recent: its exchange may be running
    await db.execute("UPDATE kb_documents SET created_at = created_at - interval '1 hour'")
    await forget_orphans(pool, older_than_s=600)
    assert await db.fetchval("SELECT array_agg(conversation_id) FROM kb_documents") == [saved]


async def test_embedding_tokens_are_charged_only_when_asked(make_client, kb_settings, admin_id, user_id, fake_mistral):
    question = "Comment réinitialiser un mot de passe Active Directory ?"
    # The reply's own count, fixed, with its low bits set: the question's tokens are added to it, not mixed in.
    fake_mistral.total_tokens = 1023
    used = {}
    for charge in (False, True):
        client = await make_client(create_app(kb_settings.model_copy(update={"kb_charge_embeddings": charge})))
        if not charge:
            assert (await ingest(client, admin_id))[0] == 200
        status, body = await ask(client, user_id, question)
        assert status == 200
        used[charge] = body["tokens_used"]
    assert used[False] == 1023
    assert used[True] == 1023 + -(-len(question) // 4)  # the fake embedder's count for the question


async def test_the_scheduled_sync_picks_up_a_new_file(make_client, kb_settings, kb_root, db):
    client = await make_client(create_app(kb_settings.model_copy(update={"kb_sync_every_s": 0.2})))
    await wait_until_count(db, CORPUS_FILES)
    (kb_root / "procedures" / "badge.md").write_text("# Badges\nLes badges d'accès se commandent auprès du N2.\n")
    await wait_until_count(db, CORPUS_FILES + 1)
    assert client.server.app[RESOURCES].knowledge.index.size > 0


async def wait_until_count(db, documents: int) -> None:
    async with asyncio.timeout(20):
        while await db.fetchval("SELECT count(*) FROM kb_documents") != documents:
            await asyncio.sleep(0.05)


async def test_a_sync_that_found_the_model_away_tries_again_soon(
    make_client, kb_settings, db, fake_mistral, monkeypatch
):
    from services.chat.knowledge import base

    monkeypatch.setattr(base, "SYNC_RETRY_S", 0.2)  # 60 s in service: the test cannot wait that long
    fake_mistral.embedding_failures = [503] * 10_000
    await make_client(create_app(kb_settings.model_copy(update={"kb_sync_every_s": 3600})))
    async with asyncio.timeout(20):
        while len(fake_mistral.embedded) < 2:  # the first sync tried, and failed
            await asyncio.sleep(0.05)
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 0
    fake_mistral.embedding_failures = []
    await wait_until_count(db, CORPUS_FILES)  # long before the hour of KB_SYNC_EVERY_S
