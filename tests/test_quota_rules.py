"""services/chat/quota.py's rules at their edges, as plain calls on a real pool (written from mutation testing's
survivors: each of these would pass with the rule broken one way or another)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
import uuid
from datetime import date

import asyncpg
import pytest

from services.chat import queries, quota
from services.chat.quota import Reservation


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ([], 0),
        ([""], 4),  # the per-message overhead alone
        (["abc"], 1 + 4),
        (["abcd"], 2 + 4),  # rounded up: never under the real count
        (["a" * 300, "b" * 301], 100 + 4 + 101 + 4),
    ],
)
def test_the_prompt_estimate_is_a_third_of_the_characters_rounded_up_plus_four_per_message(contents, expected):
    assert quota.estimate_prompt_tokens(contents) == expected
    assert quota.CHARS_PER_TOKEN_ESTIMATE == 3 and quota.TOKENS_PER_MESSAGE_OVERHEAD == 4
    assert expected == sum(math.ceil(len(text) / 3) + 4 for text in contents)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reservation(user_id: int, tokens: int = 500) -> Reservation:
    return Reservation(uuid.uuid4(), user_id, date.today().replace(day=1), tokens, tokens - 100)


def events(capsys, name: str) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if f'"{name}"' in line]


async def test_a_deferred_refund_is_retried_until_the_database_answers(database_url, db, factory, capsys):
    user_id = await factory.user()
    held = reservation(user_id)
    await db.execute(
        "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens) VALUES ($1, $2, 700, 50000)",
        user_id,
        held.month,
    )
    await db.execute(
        "INSERT INTO token_reservations (reservation_id, user_id, month, tokens) VALUES ($1, $2, $3, $4)",
        held.reservation_id,
        user_id,
        held.month,
        held.tokens,
    )
    async with asyncpg.create_pool(database_url, min_size=0, max_size=1) as pool:
        started = time.monotonic()
        await quota._retry_later(pool, held, "refund", queries.REFUND_TOKENS_SQL, held.reservation_id)
        assert time.monotonic() - started >= 0.2  # it waited its first delay before trying
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id) == 200
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    assert [e["tokens"] for e in events(capsys, "refund_recovered")] == [500]


async def test_a_deferred_refund_gives_up_at_its_deadline_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(quota, "REFUND_RETRY_FOR_S", 0.5)
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens: every try is refused
    held = reservation(7)
    async with asyncpg.create_pool(dead, min_size=0, max_size=1) as pool:
        started = time.monotonic()
        async with asyncio.timeout(10):
            await quota._retry_later(pool, held, "refund", queries.REFUND_TOKENS_SQL, held.reservation_id)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.5  # tried for as long as it was told, not less
    lost = events(capsys, "refund_lost")
    assert [(e["user_id"], e["tokens"], e["month"]) for e in lost] == [(7, 500, str(held.month))]
