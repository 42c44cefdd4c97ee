"""One user's chats are read and prepared one at a time (services/chat/admission.prepared_in_turn): their other
chats wait without costing the event loop or the database anything, and another user's chat is not held."""

from __future__ import annotations

import asyncio
import uuid

from services.chat.app import create_app
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"
WAITING_ON_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


async def test_a_users_second_chat_waits_for_the_first_to_be_prepared_and_another_user_does_not(
    make_client, chat_settings, factory, db, database_url, fake_mistral
):
    import asyncpg

    client = await make_client(create_app(chat_settings))
    busy, other = await factory.user("deux-onglets"), await factory.user("voisin")
    await factory.usage(busy, used=0)

    def ask(user_id: int):
        return client.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id))

    holder = await asyncpg.connect(database_url)
    try:
        # The busy user's quota row locked: the preparation of their first chat stops at its reservation.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM user_token_usage WHERE user_id = $1 FOR UPDATE", busy)
        first, second = asyncio.ensure_future(ask(busy)), asyncio.ensure_future(ask(busy))
        async with asyncio.timeout(10):
            while await db.fetchval(WAITING_ON_A_LOCK) < 1:
                await asyncio.sleep(0.02)
        r = await ask(other)  # another user is prepared meanwhile
        assert r.status == 200
        # Only the first of the busy user's chats reached the database; the second waits its turn.
        assert await db.fetchval(WAITING_ON_A_LOCK) == 1
        assert not first.done() and not second.done()
        await transaction.rollback()
        answers = await asyncio.gather(first, second)
        assert [a.status for a in answers] == [200, 200]
    finally:
        await holder.close()
