"""Attachments: every form the frontends send reaches the model as readable text; every bad file is a French
envelope naming it, with nothing written, nothing charged and no model call.

Files are real, built in the tests (tests/documents.py). The chat app runs its real extraction workers; the
model is the fake Mistral server, whose `.received` shows exactly what the model would have read.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import json
import uuid

import pytest

from services.chat import quota
from services.chat.app import create_app
from services.chat.extraction import FileProblem, decode_text, extract
from tests.conftest import bearer
from tests.documents import ELF, PNG, b64, data_url, encrypted_pdf, flate_pdf, scanned_pdf, text_pdf

DEFLATE_BOMB = flate_pdf(b"BT /F1 11 Tf (a) Tj ET\n" + b" " * 300_000_000)  # 290 KB that inflate to 300 MB

CHAT = "/webhook/wibot/chat"
ACCEPTED = "Types acceptés : PDF, TXT, MD, CSV, JSON."
CSV_FR = "Établissement;Coût\nEHPAD Les Érables;1 250,50 €\nClinique Saint-Joseph;980,00 €\n"


def extract_text(content: str, *, max_bytes: int = 10_000_000, max_pages: int = 50):
    return extract(content, max_bytes=max_bytes, max_pages=max_pages)


# --- deciding the bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b64(CSV_FR.encode("utf-8")), CSV_FR),  # the newer frontend: base64 without the data: prefix
        (data_url(CSV_FR.encode("utf-8"), "text/csv"), CSV_FR),  # other clients: the whole data URL
        (b64(codecs.BOM_UTF8 + CSV_FR.encode("utf-8")), CSV_FR),  # UTF-8 with BOM (Excel's "CSV UTF-8")
        (b64(codecs.BOM_UTF16_LE + CSV_FR.encode("utf-16-le")), CSV_FR),  # UTF-16 LE with BOM
        (b64(codecs.BOM_UTF16_BE + CSV_FR.encode("utf-16-be")), CSV_FR),  # UTF-16 BE with BOM
        (b64(CSV_FR.encode("cp1252")), CSV_FR),  # Excel's CSV on Windows
        ("data:text/plain,Bonjour%20%C3%A9t%C3%A9", "Bonjour été"),  # a data URL that is not base64
        (CSV_FR, CSV_FR),  # text already extracted, as in the spec's example
        ("Test", "Test"),  # a word that happens to be valid base64 stays a word
        ("", ""),
    ],
    ids=[
        "base64",
        "data-url",
        "utf8-bom",
        "utf16-le",
        "utf16-be",
        "cp1252",
        "data-url-plain",
        "plain",
        "word",
        "empty",
    ],
)
def test_each_form_of_content_becomes_the_files_text(content, expected):
    result = extract_text(content)
    assert (result.kind, result.text) == ("text", expected)


def test_decoded_sizes_are_the_files_bytes():
    raw = CSV_FR.encode("cp1252")
    assert extract_text(b64(raw)).size == len(raw)
    assert extract_text(CSV_FR).size == len(CSV_FR.encode("utf-8"))


@pytest.mark.parametrize(
    "content",
    [b64(PNG), data_url(PNG, "image/png"), b64(ELF), data_url(b"MZ\x90\x00" + bytes(200), "application/octet-stream")],
    ids=["png-base64", "png-data-url", "elf-base64", "exe-data-url"],
)
def test_pictures_and_programs_are_refused_whatever_their_name(content):
    with pytest.raises(FileProblem) as problem:
        extract_text(content)
    assert problem.value.fault == "type"  # 415


def test_binary_noise_is_not_text():
    assert decode_text(bytes(range(256))) is None
    assert decode_text(b"abc\x00def") is None


def test_a_pdf_gives_its_text_page_by_page():
    result = extract_text(b64(text_pdf(["Procédure : redémarrer le routeur", "Étape 2 : vérifier le lien"])))
    assert (result.kind, result.pages) == ("pdf", 2)
    assert result.text == ("[Page 1/2]\nProcédure : redémarrer le routeur\n\n[Page 2/2]\nÉtape 2 : vérifier le lien")


@pytest.mark.parametrize(
    ("pdf", "reason"),
    [
        (encrypted_pdf(), "PDF protégé par un mot de passe"),
        (scanned_pdf(), "PDF sans texte (document scanné ?)"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "PDF corrompu"),
        (text_pdf(["x"] * 6), "6 pages, 5 au maximum"),
        # F5: pypdf's LimitReachedError is not a PdfReadError; it escaped as a 500 with a traceback.
        (DEFLATE_BOMB, "PDF trop complexe : une limite de sécurité a été atteinte"),
    ],
    ids=["encrypted", "scanned", "corrupt", "too-many-pages", "deflate-bomb"],
)
def test_unreadable_pdfs_say_why(pdf, reason):
    with pytest.raises(FileProblem) as problem:
        extract_text(b64(pdf), max_pages=5)
    assert (problem.value.fault, problem.value.reason) == ("unreadable", reason)  # 422


# --- through the chat service ------------------------------------------------------------------------------


@pytest.fixture
async def client(make_client, chat_settings):
    return await make_client(create_app(chat_settings))


@pytest.fixture
async def user_id(factory):
    return await factory.user("khora")


async def send(client, user_id, files, message="Analyse ces fichiers", conversation_id=None):
    payload = {"conversation_id": str(conversation_id or uuid.uuid4()), "message": message, "files": files}
    # A stream, not bytes: aiohttp's client warns that a large bytes body could block its loop.
    body = io.BytesIO(json.dumps(payload).encode())
    headers = {**bearer(user_id), "Content-Type": "application/json"}
    return await client.post(CHAT, data=body, headers=headers)


async def assert_nothing_happened(db, fake_mistral) -> None:
    assert len(fake_mistral.received) == 0  # no model call
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_a_txt_and_a_pdf_sent_as_the_newer_frontend_sends_them_reach_the_model_as_text(
    client, user_id, db, fake_mistral
):
    pdf = text_pdf(["Panne Internet : vérifier la box", "Puis appeler l'opérateur"])
    files = [{"name": "tarifs.csv", "content": b64(CSV_FR.encode("cp1252"))}, {"name": "proc.pdf", "content": b64(pdf)}]
    r = await send(client, user_id, files, mode_message := "Résume")
    assert r.status == 200, await r.text()
    sent = fake_mistral.received[-1]["messages"][-1]["content"]
    assert sent == (
        f"{mode_message}"
        f"\n\n--- Fichier : tarifs.csv ---\n{CSV_FR}"
        "\n\n--- Fichier : proc.pdf ---\n[Page 1/2]\nPanne Internet : vérifier la box\n\n[Page 2/2]\n"
        "Puis appeler l'opérateur"
    )
    row = await db.fetchrow("SELECT content, attachments, files_count, mode FROM messages WHERE role = 'user'")
    assert (row["content"], row["files_count"], row["mode"]) == ("Résume", 2, "flash")
    pdf_chars = len(sent.split("--- Fichier : proc.pdf ---\n")[1])
    assert json.loads(row["attachments"]) == [
        {"name": "tarifs.csv", "size": len(CSV_FR.encode("cp1252")), "type": "text/csv", "chars": len(CSV_FR),
         "truncated": False},
        {"name": "proc.pdf", "size": len(pdf), "type": "application/pdf", "pages": 2, "chars": pdf_chars,
         "truncated": False},
    ]  # fmt: skip
    # Metadata only, never the content (the assistant's reply is the fake model's echo: not ours to judge).
    stored = await db.fetchval("SELECT content || attachments::text FROM messages WHERE role = 'user'")
    assert "Panne Internet" not in stored and "EHPAD" not in stored


# F7: each of these starts with a magic number (BMP, DOS executable, MP3, Flash, GIF, Ogg) and was refused 415.
TEXT_THAT_LOOKS_MAGIC = [
    "BMW;Série 3;2019\nAudi;A4;2021\n",
    "MZ-2024-118 : ticket de maintenance\n",
    "ID3 du poste : PC-ACCUEIL-04\n",
    "FWS : pare-feu du site, règle 12\n",
    "GIF8 : code interne de l'imprimante\n",
    "OggS et autres formats audio refusés par le proxy\n",
]


@pytest.mark.parametrize("text", TEXT_THAT_LOOKS_MAGIC, ids=["bmp", "exe", "mp3", "swf", "gif", "ogg"])
@pytest.mark.parametrize("encoding", ["data-url", "base64"])
async def test_text_starting_with_a_magic_number_is_text(client, user_id, fake_mistral, text, encoding):
    data = text.encode("utf-8")
    content = data_url(data, "text/csv") if encoding == "data-url" else b64(data)
    r = await send(client, user_id, [{"name": "notes.csv", "content": content}], "Lis")
    assert r.status == 200, await r.text()
    assert fake_mistral.received[-1]["messages"][-1]["content"] == f"Lis\n\n--- Fichier : notes.csv ---\n{text}"


async def test_a_deflate_bomb_is_a_422_naming_it_and_nothing_happens(client, user_id, db, fake_mistral):
    r = await send(client, user_id, [{"name": "bombe.pdf", "content": b64(DEFLATE_BOMB)}])
    assert r.status == 422, await r.text()
    assert await r.json() == {
        "success": False,
        "error": "Fichier illisible : bombe.pdf (PDF trop complexe : une limite de sécurité a été atteinte).",
        "code": "FILE_UNREADABLE",
    }
    await assert_nothing_happened(db, fake_mistral)


@pytest.mark.parametrize(
    ("file", "status", "error", "code"),
    [
        (
            {"name": "photo.png", "content": b64(PNG)},
            415,
            f"Type de fichier non pris en charge : photo.png. {ACCEPTED}",
            "FILE_UNSUPPORTED_TYPE",
        ),
        (
            {"name": "notes.txt", "content": b64(ELF)},
            415,
            f"Type de fichier non pris en charge : notes.txt. {ACCEPTED}",
            "FILE_UNSUPPORTED_TYPE",
        ),
        (
            {"name": "image.txt", "content": data_url(PNG, "image/png")},
            415,
            f"Type de fichier non pris en charge : image.txt. {ACCEPTED}",
            "FILE_UNSUPPORTED_TYPE",
        ),
        (
            {"name": "contrat.pdf", "content": b64(encrypted_pdf())},
            422,
            "Fichier illisible : contrat.pdf (PDF protégé par un mot de passe).",
            "FILE_UNREADABLE",
        ),
        (
            {"name": "scan.pdf", "content": b64(scanned_pdf())},
            422,
            "Fichier illisible : scan.pdf (PDF sans texte (document scanné ?)).",
            "FILE_UNREADABLE",
        ),
        (
            {"name": "casse.pdf", "content": b64(b"%PDF-1.5\n" + bytes(300))},
            422,
            "Fichier illisible : casse.pdf (PDF corrompu).",
            "FILE_UNREADABLE",
        ),
        (
            {"name": "gros.txt", "content": b64(b"a" * 2048)},
            413,
            "Fichier trop volumineux : gros.txt (1 Kio au maximum)",
            "FILES_TOO_LARGE",
        ),
    ],
    ids=[
        "image-by-name",
        "program-renamed-txt",
        "image-data-url-renamed-txt",
        "encrypted",
        "scanned",
        "corrupt",
        "big",
    ],
)
async def test_a_bad_file_is_an_envelope_naming_it_and_nothing_happens(
    make_client, chat_settings, user_id, db, fake_mistral, file, status, error, code
):
    client = await make_client(create_app(chat_settings.model_copy(update={"chat_file_max_bytes": 1024})))
    good = {"name": "ok.txt", "content": b64(b"tout va bien")}
    r = await send(client, user_id, [good, file])
    assert r.status == status, await r.text()
    assert await r.json() == {"success": False, "error": error, "code": code}
    await assert_nothing_happened(db, fake_mistral)


async def test_files_are_limited_by_their_decoded_size_per_request(
    make_client, chat_settings, user_id, db, fake_mistral
):
    limits = {"chat_file_max_bytes": 3000, "chat_files_max_bytes": 4000}
    client = await make_client(create_app(chat_settings.model_copy(update=limits)))
    # 2,500 bytes each: base64 makes each 3,336 characters, over the per-file limit, yet each file fits.
    files = [{"name": f"f{i}.txt", "content": b64(b"x" * 2500)} for i in range(2)]
    r = await send(client, user_id, files[:1])
    assert r.status == 200, await r.text()
    fake_mistral.received.clear()
    r = await send(client, user_id, files)
    assert (r.status, (await r.json())["error"]) == (413, "Fichiers trop volumineux : 3.9 Kio au total au maximum")
    assert len(fake_mistral.received) == 0


async def test_without_indexing_text_beyond_the_budget_is_cut_and_the_prompt_says_where(
    make_client, chat_settings, user_id, db, fake_mistral, capsys
):
    # KB_INDEX_ATTACHMENTS=false (or the embedding model down: tests/test_knowledge.py) cuts instead of indexing.
    settings = chat_settings.model_copy(update={"chat_files_max_chars": 70, "kb_index_attachments": False})
    client = await make_client(create_app(settings))
    pdf = text_pdf(["A" * 30, "B" * 30, "C" * 30])
    files = [{"name": "court.txt", "content": "9876543210"}, {"name": "long.pdf", "content": b64(pdf)}]
    r = await send(client, user_id, files, "Lis")
    assert r.status == 200, await r.text()
    sent = fake_mistral.received[-1]["messages"][-1]["content"]
    kept = "[Page 1/3]\n" + "A" * 30 + "\n\n[Page 2/3]\n" + "B" * 6  # 60 characters: the budget minus court.txt
    assert sent == (
        "Lis\n\n--- Fichier : court.txt ---\n9876543210"
        f"\n\n--- Fichier : long.pdf ---\n{kept}\n"
        "[Contenu tronqué : le fichier long.pdf est coupé à la page 2, au caractère 60 sur 127"
        " (limite de 70 caractères de fichiers par message).]"
    )
    attachments = json.loads(await db.fetchval("SELECT attachments FROM messages WHERE role = 'user'"))
    assert [(a["name"], a["chars"], a["truncated"]) for a in attachments] == [
        ("court.txt", 10, False),
        ("long.pdf", 127, True),
    ]
    out = capsys.readouterr().out
    logged = [json.loads(line) for line in out.splitlines() if "attachment_truncated" in line]
    assert [(e["file_type"], e["kept_chars"], e["total_chars"], e["page"]) for e in logged] == [
        ("application/pdf", 60, 127, 2)
    ]
    assert "long.pdf" not in out  # a file's name is never logged (#45: a name may hold a resident's identifiers)


async def test_the_quota_estimate_counts_the_extracted_text_not_the_base64(
    make_client, chat_settings, user_id, db, fake_mistral
):
    client = await make_client(create_app(chat_settings.model_copy(update={"mistral_max_tokens": 100})))
    text = "é" * 3000  # 6,000 bytes of UTF-8, 8,000 characters of base64
    fake_mistral.hold = asyncio.Event()
    pending = asyncio.ensure_future(send(client, user_id, [{"name": "a.txt", "content": b64(text.encode())}], "x"))
    await fake_mistral.wait_for_requests(1)
    held = await db.fetchval("SELECT tokens FROM token_reservations")
    fake_mistral.hold.set()
    assert (await pending).status == 200
    contents = [m["content"] for m in fake_mistral.received[-1]["messages"]]
    assert text in contents[-1]
    assert held == quota.estimate_prompt_tokens(contents) + 100


async def test_a_hostile_pdf_is_stopped_at_the_time_bound_while_other_requests_are_served(
    make_client, chat_settings, user_id, db, fake_mistral
):
    client = await make_client(create_app(chat_settings.model_copy(update={"extraction_timeout_s": 1.5})))
    slow = text_pdf(["x" * 80], repeat_ops=40_000)  # ~5 s of text extraction on this machine, far over the bound
    pending = asyncio.ensure_future(send(client, user_id, [{"name": "lent.pdf", "content": b64(slow)}]))
    answered = 0
    while not pending.done():  # the chat lasts over 1.5 s, nearly all of it reading the PDF in a worker...
        r = await client.get("/healthz")
        assert r.status == 200
        answered += 1
    assert answered >= 5  # ...and the loop kept answering meanwhile (one blocked loop would answer ~once)
    r = await pending
    assert r.status == 422, await r.text()
    assert await r.json() == {
        "success": False,
        "error": "Fichier illisible : lent.pdf (extraction interrompue après 1.5 s).",
        "code": "FILE_UNREADABLE",
    }
    await assert_nothing_happened(db, fake_mistral)
    # The killed worker was replaced: the next file is read.
    r = await send(client, user_id, [{"name": "ok.pdf", "content": b64(text_pdf(["Bonjour"]))}])
    assert r.status == 200, await r.text()


async def test_file_contents_never_reach_the_logs(client, user_id, fake_mistral, capsys):
    secret = "Mot de passe du Wi-Fi : Cerise-42"
    pdf = text_pdf([secret])
    files = [{"name": "a.txt", "content": secret}, {"name": "b.pdf", "content": b64(pdf)}]
    r = await send(client, user_id, files)
    assert r.status == 200
    r = await send(client, user_id, [{"name": "c.pdf", "content": b64(encrypted_pdf(secret))}])
    assert r.status == 422
    out = capsys.readouterr().out
    assert '"path": "/webhook/wibot/chat"' in out
    assert "Cerise" not in out and b64(pdf)[:40] not in out
