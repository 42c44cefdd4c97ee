"""One conversation's chunks cost only that conversation's messages (F2 of the security round 3): ten long
questions in a conversation of 26,000 indexed chunks made every user's retrieval slow and another user's
"Bonjour" wait 9 s. Checked on the executed plan (EXPLAIN ANALYZE), like the listing's scale test: the rows of
kb_chunks a message's retrieval reads, whatever other conversations hold or held (dead rows of deleted ones
stay until a VACUUM, and this machine's PostgreSQL runs with autovacuum off)."""

from __future__ import annotations

import json
import uuid

import pytest

from services.chat.app import create_app
from services.chat.knowledge import queries
from services.chat.knowledge.retrieval import (
    ANY_WORD_MAX_CHUNKS,
    ANY_WORDS,
    OWN_CHUNKS_READ,
    OWN_TEXT_CANDIDATES,
    TEXT_CANDIDATES,
    TEXT_QUERY_WORDS,
    text_query,
)
from services.chat.resources import CHAT as RESOURCES
from tests.conftest import on_vector_path
from tests.polling import until
from tests.test_knowledge import ask


@pytest.fixture
def database_url(request, vector_path, database_url):
    """Every test of this module runs on both vector paths (tests/conftest.py: vector_path)."""
    return on_vector_path(request, vector_path, database_url)


QUESTION = "Pourquoi l'onduleur est-il passé sur batterie ?"
MATCHING = "L'onduleur du local technique est passé sur batterie pendant la coupure : vérifier les batteries."


def rows_read(plan: dict, relation: str = "kb_chunks") -> int:
    """Rows every scan of the relation produced or read and threw away, over all loops."""
    total = 0
    if plan.get("Relation Name") == relation:
        loops = plan["Actual Loops"]
        total += int((plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * loops)
        total += int(plan.get("Rows Removed by Index Recheck", 0))
    return total + sum(rows_read(child, relation) for child in plan.get("Plans", []))


def scans(plan: dict, depth: int = 0) -> str:
    """The plan's nodes, one a line, with the rows each produced or threw away: what a failure shows."""
    rows = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) + plan.get("Rows Removed by Filter", 0)
    line = f"{'  ' * depth}{plan['Node Type']} {plan.get('Relation Name', '')} {plan.get('Index Name', '')} {rows:g}"
    return "\n".join([line, *(scans(child, depth + 1) for child in plan.get("Plans", []))])


def node_types(plan: dict, node_type: str) -> set[str]:
    """Names of the indexes the plan's nodes of this type scan."""
    names = {plan["Index Name"]} if plan.get("Node Type") == node_type and "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= node_types(child, node_type)
    return names


async def explain(db, sql: str, *args) -> dict:
    raw = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    return json.loads(raw)[0]["Plan"]


async def add_document(db, *, chunks: int, content: str, conversation_id=None, user_id=None) -> int:
    document_id = await db.fetchval(
        "INSERT INTO kb_documents (source, category, path, content_hash, chunk_count, conversation_id, user_id)"
        " VALUES ($1, 'test', $1, repeat('a', 64), $2, $3, $4) RETURNING document_id",
        f"doc-{uuid.uuid4()}.md",
        chunks,
        conversation_id,
        user_id,
    )
    await db.execute(
        "INSERT INTO kb_chunks (document_id, position, content, embedding)"
        " SELECT $1, n, $2 || ' ' || n, array_fill(0.03125::real, ARRAY[1024]) FROM generate_series(0, $3 - 1) AS n",
        document_id,
        content,
        chunks,
    )
    return document_id


async def test_a_messages_retrieval_reads_none_of_the_other_conversations_chunks(db, factory, vector_path):
    owner, crowd = await factory.user("proprietaire"), await factory.user("foule")
    own_conversation = uuid.uuid4()
    await add_document(db, chunks=5, content="Procédure onduleur : basculer sur batterie")  # the site's
    await add_document(db, chunks=3, content=MATCHING, conversation_id=own_conversation, user_id=owner)
    # Statistics taken now, while the table is nearly empty, as autovacuum may (it found a plan that hash-joined
    # this conversation's chunks against a scan of every chunk): the access paths must not depend on them.
    await db.execute("ANALYZE kb_chunks; ANALYZE kb_documents")
    for _ in range(30):  # another user's conversations: 3,000 chunks holding every word of the question
        await add_document(db, chunks=100, content=MATCHING, conversation_id=uuid.uuid4(), user_id=crowd)
    gone = await add_document(db, chunks=3_000, content=MATCHING, conversation_id=uuid.uuid4(), user_id=crowd)
    await db.execute("DELETE FROM kb_documents WHERE document_id = $1", gone)  # 3,000 dead rows, no VACUUM
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 3_008

    # The scope is the database's, from each chunk's document: no writer can leave it out.
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE conversation_id IS NULL") == 5
    # In process, the site's vector hits come as ids ($5: none here); on pgvector, the question's vector.
    statement, vector_hits = (
        (queries.VECTOR_CANDIDATES_SQL, [0.03125] * 1024) if vector_path == "pgvector" else (queries.CANDIDATES_SQL, [])
    )
    args = (
        QUESTION, own_conversation, owner, 20, vector_hits,
        TEXT_CANDIDATES, OWN_CHUNKS_READ, OWN_TEXT_CANDIDATES, ANY_WORD_MAX_CHUNKS, ANY_WORDS,
    )  # fmt: skip
    async with db.transaction():
        await db.execute(queries.SET_RETRIEVAL_PLAN_SQL, "40")
        plan = await explain(db, statement, *args)
        rows = await db.fetch(statement, *args)
    read = rows_read(plan)
    # The site's 5 and this conversation's 3, each read by each of its searches and again to be returned: never
    # the 3,000 chunks of other conversations nor the 3,000 deleted ones.
    assert read <= 5 * (5 + 3), scans(plan)
    assert len(rows) == 8
    if vector_path == "pgvector":  # every chunk scored by the database, none of their vectors read out
        assert "embedding" not in rows[0] and all(row["similarity"] > 0.99 for row in rows)
        assert "idx_kb_site_chunks_hnsw" in node_types(plan, "Index Scan"), json.dumps(plan)[:3000]
    else:
        assert sum(row["embedding"] is not None for row in rows) == 3  # vectors come only with the caller's chunks

    # Another user's message, in a conversation of theirs, finds the site's chunks and nothing of the crowd's.
    other_rows = await db.fetch(statement, QUESTION, uuid.uuid4(), owner, *args[3:])
    assert len(other_rows) == 5


def test_a_long_question_searches_its_first_words_only():
    """F2: ten 3,500-word questions made full-text queries of 3,500 terms (the statement ran over 60 s)."""
    question = " ".join(f"mot{n}" for n in range(3_500))
    assert text_query(question).split() == [f"mot{n}" for n in range(TEXT_QUERY_WORDS)]
    assert text_query("onduleur batterie onduleur  batterie") == "onduleur batterie"  # repeats count once


async def test_a_slow_retrieval_is_dropped_and_the_chat_answered_without_passages(
    make_client, chat_settings, factory, db, fake_mistral, capsys
):
    """A retrieval past KB_RETRIEVAL_TIMEOUT_S is cancelled on the server: the chat goes on without passages
    (logged), the pool connection is given back, nothing waits until a 503."""
    settings = chat_settings.model_copy(update={"kb_retrieval_timeout_s": 0.5, "db_pool_max": 2})
    client = await make_client(create_app(settings))
    user_id = await factory.user()
    await add_document(db, chunks=5, content="Procédure onduleur : basculer sur batterie")
    # The site's index learns of the document through its notification: until then the message may not search.
    await until(lambda: client.app[RESOURCES].knowledge.index.size == 5)
    blocker = await db.fetchval("SELECT pg_backend_pid()")
    async with db.transaction():  # the retrieval's reads wait behind this lock, as behind a slow plan
        await db.execute("LOCK TABLE kb_chunks IN ACCESS EXCLUSIVE MODE")
        status, body = await ask(client, user_id, QUESTION)
    assert status == 200, body
    assert "Documentation WIDIP" not in fake_mistral.received[-1]["messages"][0]["content"]
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "kb_retrieval_timeout" in line]
    assert [event["fallback"] for event in events] == ["no_passages"]
    # The statement was cancelled on the server: nothing of the service is left waiting on the lock.
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND pid <> $1",
        blocker,
    )
    assert waiting == 0
    # With the lock gone, the next message reads the passages again.
    status, _ = await ask(client, user_id, QUESTION)
    assert status == 200
    assert "Procédure onduleur" in fake_mistral.received[-1]["messages"][0]["content"]


async def test_the_any_word_search_leaves_out_words_too_common_to_bound_its_work(db, vector_path):
    """#28 point 4: the any-word search reads the posting lists of the question's rare words only (by the
    column's statistics), so its work is bounded whatever the corpus's size; a small corpus keeps every word."""
    await add_document(db, chunks=30, content="Routeur du local technique")
    rare = await add_document(db, chunks=1, content="Onduleur en panne")
    await db.execute("ANALYZE kb_chunks")
    statement, vector_side = (
        (queries.VECTOR_CANDIDATES_SQL, None) if vector_path == "pgvector" else (queries.CANDIDATES_SQL, [])
    )

    async def text_matches(common_from: int) -> set[int]:
        args = (
            "routeur onduleur batterie", uuid.uuid4(), 1, 40, vector_side,
            TEXT_CANDIDATES, OWN_CHUNKS_READ, OWN_TEXT_CANDIDATES, common_from, ANY_WORDS,
        )  # fmt: skip
        async with db.transaction():
            await db.execute(queries.SET_RETRIEVAL_PLAN_SQL, "40")
            rows = await db.fetch(statement, *args)
        documents = await db.fetch(
            "SELECT DISTINCT document_id FROM kb_chunks WHERE chunk_id = ANY($1::bigint[])",
            [row["chunk_id"] for row in rows if row["rank"] is not None],
        )
        return {row["document_id"] for row in documents}

    assert len(await text_matches(common_from=ANY_WORD_MAX_CHUNKS)) == 2  # 31 chunks: every word is rare enough
    assert await text_matches(common_from=10) == {rare}  # "routeur", in 30 chunks, is left out


async def test_when_no_chunk_holds_every_word_the_three_rarest_together_are_searched(db, vector_path):
    """The step between every word and any rare word: a chunk holding the question's three rarest words is found
    even with the any-word search off (its word count 0), whatever the commoner fourth word."""
    await add_document(db, chunks=30, content="Routeur du local technique")
    wanted = await add_document(db, chunks=1, content="Onduleur batterie secours")
    await db.execute("ANALYZE kb_chunks")
    statement, vector_side = (
        (queries.VECTOR_CANDIDATES_SQL, None) if vector_path == "pgvector" else (queries.CANDIDATES_SQL, [])
    )

    async def found(question: str) -> set[int]:
        args = (
            question, uuid.uuid4(), 1, 40, vector_side,
            TEXT_CANDIDATES, OWN_CHUNKS_READ, OWN_TEXT_CANDIDATES, ANY_WORD_MAX_CHUNKS, 0,
        )  # fmt: skip
        async with db.transaction():
            await db.execute(queries.SET_RETRIEVAL_PLAN_SQL, "40")
            rows = await db.fetch(statement, *args)
        return set(
            await db.fetchval(
                "SELECT coalesce(array_agg(DISTINCT document_id), '{}') FROM kb_chunks"
                " WHERE chunk_id = ANY($1::bigint[])",
                [row["chunk_id"] for row in rows if row["rank"] is not None],
            )
        )

    assert await found("routeur onduleur batterie secours") == {wanted}
    assert await found("routeur imprimante") == set()  # no chunk holds the rarest words together, none is tried alone
