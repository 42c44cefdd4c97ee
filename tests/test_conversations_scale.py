"""Listing cost follows the page, not the user's history: 10,000 conversations and 500,000 messages.

Checked on the executed plan (EXPLAIN ANALYZE): the number of message rows the query reads. The spec's
LEFT JOIN + COUNT reads all 500,000; ours reads only those of the 50 conversations on the page.
"""

from __future__ import annotations

import json

from services.conversations import queries, store

SPEC_LIST_SQL = """
SELECT c.conversation_id, c.title, TO_CHAR(c.updated_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') as updated_at,
  COUNT(m.message_id) as message_count
FROM conversations c LEFT JOIN messages m ON c.conversation_id = m.conversation_id
WHERE c.user_id = $1 GROUP BY c.conversation_id, c.title, c.updated_at ORDER BY c.updated_at DESC LIMIT 50
"""


def message_rows_read(plan: dict, relation: str = "messages") -> int:
    """Rows produced by every scan of the relation, over all loops."""
    total = 0
    if plan.get("Relation Name") == relation:
        total += int(plan["Actual Rows"] * plan["Actual Loops"])
    for child in plan.get("Plans", []):
        total += message_rows_read(child, relation)
    return total


async def explain(db, sql: str, *args) -> dict:
    raw = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    return json.loads(raw)[0]["Plan"]


async def test_listing_reads_only_the_pages_messages(db, factory):
    heavy = await factory.user("heavy")
    await db.execute(
        "INSERT INTO conversations (conversation_id, user_id, title, updated_at)"
        " SELECT gen_random_uuid(), $1, 'conv ' || i, TIMESTAMP '2024-01-01' + i * INTERVAL '1 minute'"
        " FROM generate_series(1, 10000) AS i",
        heavy,
    )
    await db.execute(
        "INSERT INTO messages (conversation_id, user_id, role, content)"
        " SELECT c.conversation_id, $1, CASE WHEN j % 2 = 0 THEN 'user' ELSE 'assistant' END, 'message'"
        " FROM conversations c CROSS JOIN generate_series(1, 50) AS j",
        heavy,
    )
    await db.execute("VACUUM ANALYZE conversations")
    await db.execute("VACUUM ANALYZE messages")
    await db.execute("VACUUM ANALYZE conversation_message_counts")
    assert await db.fetchval("SELECT count(*) FROM messages") == 500_000

    spec = message_rows_read(await explain(db, SPEC_LIST_SQL, heavy))
    plan = await explain(db, queries.LIST_CONVERSATIONS_SQL, heavy, 50, None, store.UNTITLED)
    assert spec == 500_000
    assert message_rows_read(plan) == 0  # each row of the page reads its count (migration 0011), not its messages
    # ...and only the page's 50 counts: a join planned as a hash of the whole counts table read all 10,000.
    assert message_rows_read(plan, "conversation_message_counts") == 50
    rows = await db.fetch(queries.LIST_CONVERSATIONS_SQL, heavy, 50, None, store.UNTITLED)
    assert [r["message_count"] for r in rows] == [50] * 50
    assert rows[0]["title"] == "conv 10000"
