"""Refusals paced (shared/pacing.py): a user refused again and again waits before each further 429, held without
CPU, while another user's chats are answered at once; a person who meets a limit a few times is never held."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.chat.app import create_app
from shared.keys import AppKeys
from shared.metrics import REFUSALS_PACED
from shared.pacing import MAX_HELD_PER_USER, RefusalPacer
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"


def paced() -> float:
    return REFUSALS_PACED._value.get()


async def test_a_user_refused_again_and_again_is_held_and_another_user_is_not(
    make_client, chat_settings, factory, fake_mistral
):
    settings = chat_settings.model_copy(update={"refusals_before_pacing": 3, "refusal_pacing_s": 3.0})
    client = await make_client(create_app(settings))
    hostile, other = await factory.user("sans-quota"), await factory.user("voisin")
    await factory.usage(hostile, used=0, quota=0)

    def ask(user_id: int):
        return client.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id))

    before = paced()
    for _ in range(3):  # a few refusals: sent at once
        r = await ask(hostile)
        assert r.status == 429 and (await r.json())["code"] == "QUOTA_EXCEEDED"
    assert paced() == before
    held = [asyncio.ensure_future(ask(hostile)) for _ in range(5)]
    pacer = client.app[AppKeys.PACER]
    async with asyncio.timeout(5):
        while pacer.held < 5:
            await asyncio.sleep(0.01)
    r = await ask(other)  # answered while the five are still held (3 s: far longer than a chat here)
    assert r.status == 200
    assert not any(request.done() for request in held) and pacer.held == 5
    answers = await asyncio.gather(*held)
    assert [a.status for a in answers] == [429] * 5
    assert {(await a.json())["code"] for a in answers} == {"QUOTA_EXCEEDED"}
    assert paced() == before + 5 and pacer.held == 0


async def test_holding_is_bounded_per_user_and_off_at_zero():
    pacer = RefusalPacer(free_refusals=0, hold_s=30)
    held = [asyncio.ensure_future(pacer.pace(7)) for _ in range(MAX_HELD_PER_USER)]
    await asyncio.sleep(0)
    assert pacer.held == MAX_HELD_PER_USER
    async with asyncio.timeout(1):  # one more of that user's refusals: sent at once, not held
        await pacer.pace(7)
    other = asyncio.ensure_future(pacer.pace(8))  # another user's own bound is untouched
    await asyncio.sleep(0)
    assert pacer.held == MAX_HELD_PER_USER + 1
    for task in [*held, other]:
        task.cancel()
    await asyncio.gather(*held, other, return_exceptions=True)
    assert pacer.held == 0
    async with asyncio.timeout(1):
        await RefusalPacer(free_refusals=0, hold_s=0).pace(7)


@pytest.mark.parametrize("refusals", [1, 20])
async def test_refusals_within_the_free_count_are_never_held(refusals):
    pacer = RefusalPacer(free_refusals=20, hold_s=30)
    async with asyncio.timeout(1):
        for _ in range(refusals):
            await pacer.pace(7)
    assert pacer.held == 0
