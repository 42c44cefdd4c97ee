"""shared/auth.py's rules at their edges, as plain function calls (written from mutation testing's survivors:
each of these would pass with the rule broken one way or another)."""

from __future__ import annotations

import hashlib
import time

import jwt
import pytest

from shared import ApiError, decode_token, issue_token
from shared.auth import MAX_USER_ID, token_key
from tests.conftest import TEST_SECRET, make_settings


def signed(secret: str = TEST_SECRET, **claims: object) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 3600, **claims}, secret, algorithm="HS256")


@pytest.mark.parametrize("user_id", [1, 42, MAX_USER_ID])
def test_user_ids_of_the_int4_range_are_accepted(user_id):
    assert decode_token(signed(user_id=user_id), TEST_SECRET)["user_id"] == user_id


@pytest.mark.parametrize("user_id", [0, -1, -2_147_483_648, MAX_USER_ID + 1, True, "7", 7.0])
def test_user_ids_outside_it_are_a_401(user_id):
    with pytest.raises(ApiError) as refused:
        decode_token(signed(user_id=user_id), TEST_SECRET)
    assert (refused.value.status, refused.value.code) == (401, "INVALID_TOKEN")


def test_max_user_id_is_int4s_largest():
    assert MAX_USER_ID == 2**31 - 1


def test_a_token_is_tried_against_each_verification_key_in_turn():
    previous = "previous-secret-0123456789abcdefghijklmnopqrstuv"
    token = signed(previous, user_id=5)
    assert decode_token(token, [TEST_SECRET, previous])["user_id"] == 5  # the second key signed it
    with pytest.raises(ApiError):
        decode_token(token, [TEST_SECRET])


def test_logout_keys_a_token_on_its_jti():
    token = issue_token(user_id=5, username="u", role="user", secret=TEST_SECRET, ttl_seconds=60)
    claims = decode_token(token, TEST_SECRET)
    assert token_key(token, claims) == hashlib.sha256(f"jti:{claims['jti']}".encode()).hexdigest()


async def test_a_token_of_a_later_generation_than_the_database_still_works(make_client, database_url, factory, db):
    """Generations only revoke older tokens: a database restored from a backup (its counter behind the tokens
    issued since) does not log everyone out."""
    from services.auth.app import create_app as auth_app

    user_id = await factory.user("khora")
    await db.execute(
        "INSERT INTO user_token_revocations (user_id, not_before, generation) VALUES ($1, '2000-01-01', 3)", user_id
    )
    client = await make_client(auth_app(make_settings(database_url)))
    for generation, status in ((2, 401), (3, 200), (4, 200)):
        token = issue_token(user_id=user_id, username="khora", role="user", secret=TEST_SECRET, ttl_seconds=60,
                            generation=generation)  # fmt: skip
        r = await client.get("/webhook/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status == status, generation


async def test_a_revocation_recorded_before_generations_existed_still_refuses_older_tokens(
    make_client, database_url, factory, db
):
    """A row of user_token_revocations written before migration 0004 has generation 0 and a not_before: tokens
    without `gen` (issued then) are judged by their iat alone, to the second."""
    from services.auth.app import create_app as auth_app

    user_id = await factory.user("khora")
    now = int(time.time())
    await db.execute(
        "INSERT INTO user_token_revocations (user_id, not_before, generation)"
        " VALUES ($1, to_timestamp($2) AT TIME ZONE 'UTC', 0)",
        user_id,
        now - 100,
    )
    client = await make_client(auth_app(make_settings(database_url)))
    for issued, status in ((now - 200, 401), (now - 101, 401), (now - 100, 200), (now - 10, 200)):
        token = jwt.encode(
            {"user_id": user_id, "username": "khora", "role": "user", "iat": issued, "exp": now + 3600},
            TEST_SECRET,
            algorithm="HS256",
        )  # no gen, no jti: as tokens were issued then
        r = await client.get("/webhook/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status == status, (now - issued, await r.text())


def test_tokens_with_an_empty_jti_do_not_share_a_revocation_key():
    first, second = signed(user_id=1, jti=""), signed(user_id=2, jti="")
    keys = {token_key(token, decode_token(token, TEST_SECRET)) for token in (first, second)}
    assert len(keys) == 2  # keyed on each one's own signature, not on the empty jti


async def test_the_accreditation_level_comes_from_the_database(database_url, factory, db):
    from shared import create_pool
    from shared.auth import load_session_user
    from shared.sessions import SessionCache

    senior, unset = await factory.user("senior"), await factory.user("unset")
    await db.execute("UPDATE users SET accreditation_level = 'N3' WHERE user_id = $1", senior)
    await db.execute("UPDATE users SET accreditation_level = NULL WHERE user_id = $1", unset)
    pool = await create_pool(make_settings(database_url), application_name="test")
    try:
        for user_id, level in ((senior, "N3"), (unset, "N1")):
            token = signed(user_id=user_id)
            # a copy never loaded: the database answers (a loaded one keeps what this same query read)
            user = await load_session_user(pool, SessionCache(), decode_token(token, TEST_SECRET), token)
            assert user.accreditation_level == level
    finally:
        await pool.close()
