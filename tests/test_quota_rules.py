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
from shared.background import Background


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


async def test_a_deferred_refund_backs_off_gives_up_at_its_deadline_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(quota, "REFUND_RETRY_FOR_S", 1.0)
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()  # a database that is not there yet: every try fails at once

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    dead = f"postgresql://postgres@127.0.0.1:{server.sockets[0].getsockname()[1]}/nowhere"
    held = reservation(7)
    try:
        async with asyncpg.create_pool(dead, min_size=0, max_size=1) as pool:
            started = time.monotonic()
            async with asyncio.timeout(10):
                await quota._retry_later(pool, held, "refund", queries.REFUND_TOKENS_SQL, held.reservation_id)
            elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed >= 1.0  # tried for as long as it was told, not less
    # Backing off (waits of 0.2 s, then 0.4, 0.8…): two tries in that second, not a busy loop of them. asyncpg
    # may open two connections a try (with and without TLS).
    assert 1 <= attempts <= 4, attempts  # tries at 0.2 s and 0.6 s; the next would be at 1.4 s
    lost = events(capsys, "refund_lost")
    assert [(e["user_id"], e["tokens"], e["month"]) for e in lost] == [(7, 500, str(held.month))]


class AnswerLosingRelay:
    """A TCP relay to PostgreSQL that forwards the reservation statement but never the server's answer to its
    execution: the reservation is made, its caller never hears of it. (asyncpg first prepares a statement,
    whose text holds the marker, then executes it in a second message: answers are lost from that one on.)"""

    def __init__(self, upstream: tuple[str, int], marker: bytes) -> None:
        self.upstream, self.marker = upstream, marker
        self.swallowed = 0  # bytes of answers the server sent and the client never got
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        lost = asyncio.Event()
        prepared = False

        async def upstream() -> None:
            nonlocal prepared
            while data := await client_reader.read(65536):
                if prepared:
                    lost.set()
                prepared = prepared or self.marker in data
                server_writer.write(data)
                await server_writer.drain()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if lost.is_set():
                    self.swallowed += len(data)
                    continue
                client_writer.write(data)
                await client_writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_reservation_whose_answer_is_lost_is_given_back(database_url, db, factory):
    from urllib.parse import urlsplit

    from shared import current_month

    user_id = await factory.user()
    target = urlsplit(database_url)
    relay = AnswerLosingRelay((target.hostname or "127.0.0.1", target.port or 5432), b"INSERT INTO token_reservations")
    port = await relay.start()
    through_relay = database_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{port}")
    pool = await asyncpg.create_pool(through_relay, min_size=0, max_size=2, command_timeout=1)
    try:
        with pytest.raises(TimeoutError):
            await quota.reserve_quota(
                pool, Background(), user_id=user_id, month=current_month(), prompt_tokens=100, max_tokens=200,
                default_quota=50_000,
            )  # fmt: skip
    finally:
        pool.terminate()  # the connection whose answers are swallowed cannot close politely
        await relay.close()
    assert relay.swallowed > 0  # the server did answer: the reservation was made, then lost on the way
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id) == 0


async def usage_with_room(db, user_id: int, room: int) -> None:
    await db.execute(
        "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens) VALUES ($1, $2, $3, 10000)",
        user_id,
        date.today().replace(day=1),
        10_000 - room,
    )


@pytest.mark.parametrize(("room", "admitted"), [(100 + 16, True), (100 + 15, False)])
async def test_a_reply_needs_room_for_sixteen_tokens(database_url, db, factory, room, admitted):
    from shared import current_month

    user_id = await factory.user()
    await usage_with_room(db, user_id, room)
    async with asyncpg.create_pool(database_url, min_size=0, max_size=2) as pool:
        call = quota.reserve_quota(
            pool,
            Background(),
            user_id=user_id,
            month=current_month(),
            prompt_tokens=100,
            max_tokens=2000,
            default_quota=50_000,
        )
        if admitted:
            held = await call
            assert (held.tokens, held.max_completion_tokens) == (116, 16)
        else:
            with pytest.raises(quota.QuotaExceeded) as refused:
                await call
            answer = refused.value.api_error()
            assert (answer.status, answer.code) == (429, "QUOTA_EXCEEDED")


async def test_a_settlement_the_database_cannot_take_now_is_deferred_not_raised(monkeypatch, capsys):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    held = reservation(9)
    async with asyncpg.create_pool(dead, min_size=0, max_size=1) as pool:
        later = Background()
        await quota.refund(pool, later, held)  # no exception: the request goes on, the refund is retried behind it
        assert later.pending == 1
        await later.close(within_s=0)
    assert [e["tokens"] for e in events(capsys, "refund_deferred")] == [500]


async def test_the_sweeper_logs_each_reservation_it_gives_back(database_url, db, factory, capsys):
    first, second = await factory.user("a"), await factory.user("b")
    for user_id in (first, second):
        await usage_with_room(db, user_id, 5_000)
        await db.execute(
            "INSERT INTO token_reservations (reservation_id, user_id, month, tokens, created_at)"
            " VALUES ($1, $2, $3, 700, (NOW() AT TIME ZONE 'UTC') - interval '1 hour')",
            uuid.uuid4(),
            user_id,
            date.today().replace(day=1),
        )
    async with asyncpg.create_pool(database_url, min_size=0, max_size=1) as pool:
        assert await quota.sweep_stale_reservations(pool, older_than_s=300) == 1400
    logged = events(capsys, "stale_reservation_refunded")  # numbers in the log, not "Decimal('700')"
    assert sorted((e["user_id"], e["tokens"]) for e in logged) == [(first, 700), (second, 700)]


@pytest.mark.parametrize(("used", "quota_tokens", "remaining"), [(0, 50, 50), (50, 50, 0), (60, 50, 0)])
def test_what_remains_is_never_negative(used, quota_tokens, remaining):
    # An admin may lower a quota below what was already used this month: the user has 0 left, not -10.
    assert quota.Usage(used, quota_tokens).remaining == remaining


@pytest.mark.parametrize(
    ("held", "wanted", "used", "quota", "charged"),
    [
        (500, 300, 1_000, 10_000, 300),  # cost less than held: what it cost
        (500, 900, 1_000, 10_000, 900),  # more than held, the quota has room: all of it
        (500, 900, 9_800, 10_000, 700),  # more than held, past the quota's room: held + the room
        (500, 900, 10_500, 10_000, 500),  # the quota was lowered below what is used: what was held, no more
    ],
)
async def test_the_settle_arithmetic_lives_in_one_database_function(db, held, wanted, used, quota, charged):
    """Migration 0015: the save and the charge of an unsaved answer both settle through wibot_settled_charge."""
    assert await db.fetchval("SELECT wibot_settled_charge($1, $2, $3, $4)", held, wanted, used, quota) == charged
    for statement in (queries.SAVE_EXCHANGE.sql, queries.CHARGE_UNSAVED_SQL):
        assert "wibot_settled_charge(" in statement and "LEAST(" not in statement
