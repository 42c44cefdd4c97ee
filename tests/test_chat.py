"""POST /webhook/wibot/chat: the spec's workflow with its bugs fixed, against real PostgreSQL and a fake
Mistral server on loopback reached through the real mistralai SDK."""

from __future__ import annotations

import json
import typing
import uuid
from datetime import UTC, datetime

import pytest

from devtools.fake_mistral import REPLY_PREFIX
from services.chat.app import create_app
from services.chat.prompt import DEFAULT_MODE_PROMPTS, DEFAULT_SYSTEM_PROMPT
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"
CID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
async def client(make_client, chat_settings):
    return await make_client(create_app(chat_settings))


@pytest.fixture
async def user_id(factory):
    return await factory.user("khora", role="admin")


async def count(db, table: str) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names


async def test_spec_test_3_simple_chat(client, user_id, db, fake_mistral):
    r = await client.post(
        CHAT, json={"conversation_id": CID, "message": "Salut WIBOT ! Comment ça va ?"}, headers=bearer(user_id)
    )
    body = await r.json()
    assert r.status == 200, body
    assert set(body) == {"success", "response", "tokens_used", "tokens_remaining", "conversation_id"}
    assert body["success"] is True and body["conversation_id"] == CID
    assert body["response"].startswith(REPLY_PREFIX)
    sent = fake_mistral.received[-1]
    assert body["tokens_used"] > 0
    assert body["tokens_remaining"] == 50_000 - body["tokens_used"]
    assert sent["temperature"] == 0.7 and sent["top_p"] == 1 and sent["model"] == "mistral-large-latest"
    assert sent["max_tokens"] == 2000

    conv = await db.fetchrow("SELECT user_id, title FROM conversations WHERE conversation_id = $1", uuid.UUID(CID))
    assert dict(conv) == {"user_id": user_id, "title": "Salut WIBOT ! Comment ça va ?"}
    rows = await db.fetch("SELECT role, content, tokens, attachments FROM messages ORDER BY message_id")
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "Salut WIBOT ! Comment ça va ?"),
        ("assistant", body["response"]),
    ]
    assert rows[0]["tokens"] + rows[1]["tokens"] == body["tokens_used"]
    usage = await db.fetchrow("SELECT month, used_tokens, quota_tokens FROM user_token_usage")
    now = datetime.now(UTC)
    assert (usage["month"].year, usage["month"].month, usage["month"].day) == (now.year, now.month, 1)
    assert (usage["used_tokens"], usage["quota_tokens"]) == (body["tokens_used"], 50_000)


async def test_spec_test_4_memory_sends_history(client, user_id, fake_mistral):
    cid = "660f9511-f3ac-52e5-b827-557766551111"
    headers = bearer(user_id)
    r = await client.post(CHAT, json={"conversation_id": cid, "message": "Parle-moi de PostgreSQL"}, headers=headers)
    assert r.status == 200, await r.text()
    first_reply = (await r.json())["response"]
    r = await client.post(
        CHAT, json={"conversation_id": cid, "message": "Comment je fais un backup ?"}, headers=headers
    )
    assert r.status == 200, await r.text()
    sent = fake_mistral.received[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in sent[1:]] == ["Parle-moi de PostgreSQL", first_reply, "Comment je fais un backup ?"]


async def test_system_prompt_is_the_spec_one_with_todays_date(client, user_id, fake_mistral):
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    system = fake_mistral.received[-1]["messages"][0]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    # No mode (the older frontend): flash, the default of the real WIBOT and of messages.mode.
    expected = DEFAULT_SYSTEM_PROMPT.replace("{date}", today) + "\n\n" + DEFAULT_MODE_PROMPTS["flash"]
    assert system == {"role": "system", "content": expected}
    assert system["content"].startswith("Tu es WIBOT, l'assistant IA de WIDIP")
    assert f"Date actuelle : {today}\n\n## Mode Flash\n" in system["content"]


async def test_system_prompt_file_replaces_the_default(make_client, chat_settings, user_id, fake_mistral, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text('Tu es un bot de test. {"json": true} Nous sommes le {date}.', encoding="utf-8")
    client = await make_client(create_app(chat_settings.model_copy(update={"system_prompt_file": prompt})))
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert fake_mistral.received[-1]["messages"][0]["content"] == (
        f'Tu es un bot de test. {{"json": true}} Nous sommes le {today}.\n\n' + DEFAULT_MODE_PROMPTS["flash"]
    )


async def test_memory_is_the_last_ten_messages_in_order(client, user_id, factory, fake_mistral):
    cid = await factory.conversation(user_id, conversation_id=uuid.UUID(CID))
    # 14 messages; the two last share a timestamp so only message_id can order them.
    for i in range(12):
        await factory.message(
            cid, user_id, "user" if i % 2 == 0 else "assistant", f"m{i}", created_at=f"2024-12-25T10:{i:02d}:00Z"
        )
    await factory.message(cid, user_id, "user", "m12", created_at="2024-12-25T11:00:00Z")
    await factory.message(cid, user_id, "assistant", "m13", created_at="2024-12-25T11:00:00Z")
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "suite"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    sent = fake_mistral.received[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == [f"m{i}" for i in range(4, 14)] + ["suite"]


async def test_spec_test_5_files_are_appended_not_stored(client, user_id, db, fake_mistral):
    log = "[2024-12-25 14:30:15] ERROR: Connection timeout to database\n[2024-12-25 14:30:16] ERROR: Retry failed"
    r = await client.post(
        CHAT,
        headers=bearer(user_id),
        json={
            "conversation_id": "770f9622-a4bd-43f6-a938-668877662222",
            "message": "Analyse ce log et dis-moi ce qui ne va pas",
            "files": [{"name": "error.log", "content": log}, {"name": "vide.txt", "content": ""}],
        },
    )
    assert r.status == 200, await r.text()
    sent = fake_mistral.received[-1]["messages"][-1]
    assert sent == {
        "role": "user",
        "content": (
            "Analyse ce log et dis-moi ce qui ne va pas"
            f"\n\n--- Fichier : error.log ---\n{log}"
            "\n\n--- Fichier : vide.txt ---\n"
        ),
    }
    row = await db.fetchrow(
        "SELECT content, attachments, jsonb_typeof(attachments) AS kind FROM messages WHERE role = 'user'"
    )
    assert row["content"] == "Analyse ce log et dis-moi ce qui ne va pas"
    assert row["kind"] == "array"
    assert json.loads(row["attachments"]) == [
        {"name": "error.log", "size": len(log.encode()), "type": "text/plain", "chars": len(log), "truncated": False},
        {"name": "vide.txt", "size": 0, "type": "text/plain", "chars": 0, "truncated": False},
    ]
    assert await db.fetchval("SELECT files_count FROM messages WHERE role = 'user'") == 2
    dump = await db.fetchval("SELECT string_agg(content || coalesce(attachments::text, ''), '') FROM messages")
    assert "Connection timeout" not in dump


async def test_spec_test_5_as_written_is_a_400_not_a_500(client, user_id, db):
    r = await client.post(
        CHAT,
        headers=bearer(user_id),
        json={"conversation_id": "770f9622-g4bd-63f6-c938-668877662222", "message": "Analyse ce log"},
    )
    assert r.status == 400, await r.text()
    body = await r.json()
    assert body["success"] is False and "conversation_id" in body["error"] and "UUID" in body["error"]
    assert await count(db, "messages") == 0 and await count(db, "user_token_usage") == 0


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"message": "x"}, 400, "conversation_id"),
        ({"conversation_id": CID}, 400, "message"),
        ({"conversation_id": CID, "message": ""}, 400, "message"),
        ({"conversation_id": CID, "message": "   "}, 400, "message"),
        ({"conversation_id": CID, "message": 42}, 400, "message"),
        ({"conversation_id": CID, "message": "x" * 33}, 400, "32 caractères"),
        ({"conversation_id": CID, "message": "x", "files": "a.txt"}, 400, "files"),
        ({"conversation_id": CID, "message": "x", "files": [{"name": "a"}]}, 400, "files.0.content"),
        (
            {"conversation_id": CID, "message": "x", "files": [{"name": "a.txt", "content": "b"}] * 3},
            413,
            "2 au maximum",
        ),
        ({"conversation_id": CID, "message": "x", "files": [{"name": "a.txt", "content": "é" * 600}]}, 413, "1 Kio"),
        ({"conversation_id": CID, "message": "x", "mode": "turbo"}, 400, "mode"),
        ({"conversation_id": 12, "message": "x"}, 400, "conversation_id"),
    ],
)
async def test_invalid_requests_are_refused_and_write_nothing(
    make_client, chat_settings, user_id, db, payload, status, fragment
):
    limits = {"chat_message_max_chars": 32, "chat_files_max_count": 2, "chat_files_max_bytes": 1024}
    client = await make_client(create_app(chat_settings.model_copy(update=limits)))
    r = await client.post(CHAT, json=payload, headers=bearer(user_id))
    assert r.status == status, await r.text()
    body = await r.json()
    assert body["success"] is False and fragment in body["error"], body
    assert await count(db, "messages") == 0 and await count(db, "conversations") == 0
    assert await count(db, "user_token_usage") == 0


async def test_a_chat_in_a_conversation_created_empty(client, user_id, factory, db):
    """The frontend may create the conversation first (POST /conversations), then chat in it: its memory is the
    conversation's row alone, without messages."""
    conversation = await factory.conversation(user_id)
    r = await client.post(CHAT, json={"conversation_id": str(conversation), "message": "x"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conversation) == 2


async def test_a_message_of_exactly_the_limit_is_accepted(make_client, chat_settings, user_id, db):
    client = await make_client(create_app(chat_settings.model_copy(update={"chat_message_max_chars": 32})))
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "x" * 32}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "x" * 33}, headers=bearer(user_id))
    assert r.status == 400
    assert await count(db, "messages") == 2


async def test_unknown_fields_are_ignored_and_mode_picks_the_model(
    make_client, chat_settings, user_id, fake_mistral, db
):
    models = {
        "mistral_model_code": "codestral-latest",
        "mistral_model_flash": "devstral-small-latest",
        "mistral_model_redaction": "mistral-large-2411",
    }
    client = await make_client(create_app(chat_settings.model_copy(update=models)))
    for mode, model, heading in [
        ("code", "codestral-latest", "## Mode Code"),
        ("flash", "devstral-small-latest", "## Mode Flash"),
        ("redaction", "mistral-large-2411", "## Mode Rédaction"),
        (None, "devstral-small-latest", "## Mode Flash"),
    ]:
        payload = {"conversation_id": CID, "message": "x", "mode": mode, "extra": {"any": 1}}
        r = await client.post(CHAT, json=payload, headers=bearer(user_id))
        assert r.status == 200, await r.text()
        assert fake_mistral.received[-1]["model"] == model
        system = fake_mistral.received[-1]["messages"][0]["content"]
        assert [line for line in system.splitlines() if line.startswith("## Mode")] == [heading]
    modes = await db.fetch("SELECT role, mode, files_count FROM messages ORDER BY message_id")
    assert [tuple(r) for r in modes] == [
        (role, mode, 0) for mode in ("code", "flash", "redaction", "flash") for role in ("user", "assistant")
    ]


async def test_mode_prompt_files_replace_the_built_in_additions(
    make_client, chat_settings, user_id, fake_mistral, tmp_path
):
    code = tmp_path / "code.md"
    code.write_text("## Mode Code maison\nRéponds en Rust uniquement.\n", encoding="utf-8")
    client = await make_client(create_app(chat_settings.model_copy(update={"mode_prompt_code_file": code})))
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "x", "mode": "code"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    system = fake_mistral.received[-1]["messages"][0]["content"]
    assert system.endswith("\n\n## Mode Code maison\nRéponds en Rust uniquement.")
    assert DEFAULT_MODE_PROMPTS["code"] not in system


ID_TAKEN = {
    "success": False,
    "error": "Cet identifiant de conversation est déjà utilisé par un autre utilisateur : démarrez une nouvelle"
    " conversation",
    "code": "CONVERSATION_ID_TAKEN",
}


@pytest.mark.parametrize("owner_first", [True, False], ids=["owner-older", "owner-newer"])
async def test_another_users_conversation_id_is_reported_taken_and_nothing_written(
    client, factory, db, fake_mistral, owner_first
):
    """Whoever was created first: ids are compared for equality, not order."""
    if owner_first:
        owner, intruder = await factory.user("owner"), await factory.user("intruder")
    else:
        intruder, owner = await factory.user("intruder"), await factory.user("owner")
    cid = await factory.conversation(owner, conversation_id=uuid.UUID(CID))
    await factory.message(cid, owner, "user", "confidentiel")
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "je lis ?"}, headers=bearer(intruder))
    assert r.status == 409, await r.text()
    assert await r.json() == ID_TAKEN
    assert await count(db, "messages") == 1
    assert len(fake_mistral.received) == 0
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0


async def test_missing_usage_is_estimated_from_characters(client, user_id, fake_mistral):
    fake_mistral.omit_usage = True
    fake_mistral.reply = "r" * 40
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "m" * 12}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    prompt_chars = sum(len(m["content"]) for m in fake_mistral.received[-1]["messages"])
    assert (await r.json())["tokens_used"] == -(-(prompt_chars + 40) // 4)


async def test_title_is_first_255_characters_and_updated_at_bumps(client, user_id, db):
    message = "t" * 300
    r = await client.post(CHAT, json={"conversation_id": CID, "message": message}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    first = await db.fetchrow("SELECT title, updated_at FROM conversations")
    assert first["title"] == "t" * 255
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "autre"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    second = await db.fetchrow("SELECT title, updated_at FROM conversations")
    assert second["title"] == "t" * 255 and second["updated_at"] > first["updated_at"]


def test_the_sdk_patches_are_pinned_to_the_version_they_were_checked_against():
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from mistralai.client.models import ChatCompletionRequest
    from mistralai.client.utils import forms, queryparams, url

    from services.chat import sdk_models

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text("utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("mistralai")]
    # Upgrading the SDK without re-reading the patched modules fails here: move the pin and CHECKED_VERSION
    # together, after checking services/chat/sdk_models.py against the new SDK's utils/.
    assert pins == [f"mistralai=={sdk_models.CHECKED_VERSION}"]
    assert importlib.metadata.version("mistralai") == sdk_models.CHECKED_VERSION
    assert sdk_models.install() is True
    for module in (queryparams, url, forms):
        assert module.get_type_hints is sdk_models._cached_type_hints
    first = queryparams.get_type_hints(ChatCompletionRequest)
    first["model"] = None  # a caller's change to its copy
    assert queryparams.get_type_hints(ChatCompletionRequest) == typing.get_type_hints(ChatCompletionRequest)


def test_the_sdk_never_renders_a_prompt_for_its_debug_log():
    import httpx2
    from mistralai.client import basesdk

    from services.chat import sdk_models

    assert sdk_models.install() is True
    request = httpx2.Request("POST", "http://model/v1/chat/completions", content=b'{"messages": "' + b"x" * 400_000)
    assert basesdk.get_body_content(request) == "<body not logged>"  # the SDK's: 400,000 characters, escaped


def test_sdk_model_classes_are_built_once():
    from mistralai.client.utils import serializers

    from services.chat import sdk_models

    assert sdk_models.install() is True
    first = serializers.create_model("Unmarshaller", body=(int, ...), __config__={"populate_by_name": True})
    again = serializers.create_model("Unmarshaller", body=(int, ...), __config__={"populate_by_name": True})
    assert first is again and first(body=3).body == 3
    # Anything the cache cannot key falls back to the SDK's own behaviour.
    other = serializers.create_model("Other", body=(list[int], ...), __config__={"json_schema_extra": {"a": [1]}})
    assert other(body=[1]).body == [1]


async def test_conversation_taken_by_someone_else_during_the_model_call_is_409(client, factory, db, fake_mistral):
    import asyncio

    me, other = await factory.user("me"), await factory.user("other")
    fake_mistral.hold = asyncio.Event()
    pending = asyncio.ensure_future(
        client.post(CHAT, json={"conversation_id": CID, "message": "à moi ?"}, headers=bearer(me))
    )
    await fake_mistral.wait_for_requests(1)
    await factory.conversation(other, conversation_id=uuid.UUID(CID), title="à l'autre")  # the race
    fake_mistral.hold.set()
    r = await pending
    assert r.status == 409, await r.text()
    assert await r.json() == ID_TAKEN
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT title FROM conversations") == "à l'autre"
    # The model answered: its tokens are charged even though the exchange could not be saved.
    charged = await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", me)
    assert charged > 0
    charge = await db.fetchrow("SELECT user_id, tokens, reason FROM unsaved_charges")
    assert tuple(charge) == (me, charged, "conversation_taken")
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_a_save_that_fails_after_the_model_answered_still_charges_the_answer(
    client, user_id, db, fake_mistral, capsys
):
    fake_mistral.total_tokens = 321
    # The database refuses the exchange (a trigger stands for any failure at save time).
    await db.execute(
        "CREATE FUNCTION refuse_messages() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
        " CREATE TRIGGER refuse_messages BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_messages()"
    )
    try:
        r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    finally:
        await db.execute("DROP TRIGGER refuse_messages ON messages; DROP FUNCTION refuse_messages()")
    assert r.status == 500, await r.text()
    assert len(fake_mistral.received) == 1
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 321
    assert tuple(await db.fetchrow("SELECT tokens, reason FROM unsaved_charges")) == (321, "RaiseError")
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "charged_without_save" in line]
    assert [(e["user_id"], e["tokens"], e["reason"]) for e in logged] == [(user_id, 321, "RaiseError")]
