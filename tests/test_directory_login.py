"""Directory login (#29) against a real OpenLDAP slapd with an AD-like tree (tests/directory.py): search then bind,
escaping, groups (nested) → role and level, just-in-time accounts linked by entryUUID, renames, the sync, the
directory down or slow, break-glass local admins, and the refusals, each with the check that makes it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

import aiohttp
import pytest

from devtools.stack import free_ports, wait_for_port
from services.auth import users
from services.auth.app import create_app
from services.auth.directory import DIRECTORY
from services.auth.directory.accounts import sync_accounts
from services.auth.directory.client import DirectoryRefused
from services.auth.errors import DirectoryAccount
from services.auth.passwords import PasswordHasher
from shared import AppKeys
from shared.metrics import DIRECTORY_LAST_ADMIN_KEPT, PASSWORD_CHECKS
from tests import directory as ldap
from tests.conftest import TEST_SECRET, make_settings, sessions_caught_up

LOGIN = "/webhook/auth/login"


def directory_settings(database_url: str, slapd: ldap.Slapd, **overrides):
    values = {
        "auth_mode": "both",
        "ldap_url": slapd.url,
        "ldap_start_tls": False,  # the test directory speaks plain LDAP on loopback
        "ldap_bind_dn": ldap.SERVICE_DN,
        "ldap_bind_password": ldap.SERVICE_PASSWORD,
        "ldap_user_base": ldap.BASE,
        "ldap_user_filter": ldap.OPENLDAP_FILTER,
        "ldap_id_attribute": "entryUUID",
        "ldap_admin_groups": [ldap.ADMINS],
        "ldap_level_groups": ldap.LEVEL_GROUPS,
        "ldap_timeout_s": 1.0,
        "ldap_connect_timeout_s": 1.0,
    }
    return make_settings(database_url, **(values | overrides))


@pytest.fixture
async def client(make_client, database_url, slapd, db):
    return await make_client(create_app(directory_settings(database_url, slapd)))


async def login(client, username: str, password: str) -> tuple[int, dict]:
    r = await client.post(LOGIN, json={"username": username, "password": password})
    return r.status, await r.json()


def person(slapd: ldap.Slapd, *groups: str) -> tuple[str, str]:
    """A directory user of this test alone (the module's directory is shared): (username, password)."""
    username, password = f"p{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex[:12]}"
    dn = slapd.add_person(username, password)
    for group in groups:
        slapd.add_to_group(group, dn)
    return username, password


async def test_a_directory_user_logs_in_with_the_role_and_level_of_their_groups(client, db, slapd):
    status, body = await login(client, "alice", "alice-pw-2026")
    assert status == 200, body
    assert body["user"]["username"] == "alice" and body["user"]["role"] == "admin"  # it-leads ⊂ wibot-admins
    row = await db.fetchrow("SELECT role, accreditation_level, directory_id, email FROM users WHERE username = 'alice'")
    assert (row["role"], row["accreditation_level"], row["email"]) == ("admin", "N4", "alice@widip.test")
    uuid.UUID(row["directory_id"])  # linked by the entry's entryUUID
    status, body = await login(client, "bob", "bob-pw-2026")
    assert (status, body["user"]["role"]) == (200, "user")
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE username = 'bob'") == "N2"
    assert (await login(client, "dave", "dave-pw-2026"))[0] == 200
    # dave is in no level group: the default level
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE username = 'dave'") == "N0"
    # The admin API shows where each account comes from.
    token = (await login(client, "alice", "alice-pw-2026"))[1]["token"]
    r = await client.get("/webhook/wibot/admin/users", headers={"Authorization": f"Bearer {token}"})
    sources = {u["username"]: u["source"] for u in (await r.json())["users"]}
    assert sources["alice"] == sources["bob"] == "directory"


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        ("bob", "wrong-password", "wrong_password"),
        ("carol", "carol-pw-2026", "disabled"),  # userAccountControl 514: bit 2
        ("twin", "twin-pw-2026", "ambiguous"),  # two entries answer to it
        ("nobody-here", "whatever-pw", None),  # unknown to the directory and to the local accounts
    ],
)
async def test_refusals_are_the_usual_401(client, db, username, password, reason):
    status, body = await login(client, username, password)
    assert (status, body["code"]) == (401, "INVALID_CREDENTIALS")
    assert body["error"] == "Identifiants invalides"
    trail = await db.fetchrow("SELECT action, details FROM audit_log ORDER BY audit_id DESC LIMIT 1")
    assert trail["action"] == "login_failed"
    assert (reason in trail["details"]) if reason else True
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", username) == 0


async def test_a_refusal_for_a_name_the_directory_knows_costs_what_an_unknown_name_costs(client):
    """No enumeration of directory accounts by timing: an unknown name falls through to the local check (bcrypt),
    so a wrong password for a known name pays one bcrypt check too (bench/RESULTS.md measures the times)."""
    before = PASSWORD_CHECKS._value.get()
    assert (await login(client, "bob", "wrong-password"))[0] == 401
    assert (await login(client, "carol", "carol-pw-2026"))[0] == 401  # disabled
    assert (await login(client, "nobody-here", "wrong-password"))[0] == 401  # unknown: the local check
    assert PASSWORD_CHECKS._value.get() - before == 3


@pytest.mark.parametrize(
    "username",
    [
        "al*ce",  # a wildcard: would match alice
        "alice)(cn=alice",  # a parenthesis: would add a clause and still match alice
        "alic\\65",  # a backslash: \65 is "e", would match alice
        "*",  # every entry
    ],
)
async def test_filter_characters_in_a_username_are_escaped_and_refused(client, username):
    status, body = await login(client, username, "alice-pw-2026")
    assert (status, body["code"]) == (401, "INVALID_CREDENTIALS")


async def test_a_username_that_needs_escaping_logs_in(client):
    status, body = await login(client, "r(d)*\\", "escape-pw-2026")
    assert status == 200, body


async def test_nul_and_empty_passwords_are_refused_before_any_bind(client, slapd):
    directory = client.app[DIRECTORY]
    slapd.pause()  # a bind would hang: these refusals must not need the directory
    try:
        with pytest.raises(DirectoryRefused, match="empty_password"):
            await directory.authenticate("bob", "")
    finally:
        slapd.resume()
    status, _ = await login(client, "bob\x00", "bob-pw-2026")
    assert status in (400, 401)  # the body's validation refuses control characters; never a match


async def test_a_rename_in_the_directory_keeps_the_account_and_its_conversations(client, db, slapd, factory):
    username, password = person(slapd)
    status, body = await login(client, username, password)
    user_id = body["user"]["id"]
    conversation = await factory.conversation(user_id)
    slapd.rename(username, username + "-renamed")
    status, body = await login(client, username + "-renamed", password)
    assert status == 200 and body["user"]["id"] == user_id
    assert await db.fetchval("SELECT username FROM users WHERE user_id = $1", user_id) == username + "-renamed"
    assert await db.fetchval("SELECT user_id FROM conversations WHERE conversation_id = $1", conversation) == user_id
    assert (await login(client, username, password))[0] == 401


async def test_leaving_the_admin_group_takes_the_role_away_at_the_next_request(client, db, slapd, factory):
    await factory.user("secours", "secours-pw-2026", role="admin")  # another admin stays
    username, password = person(slapd, ldap.ADMINS)
    token = (await login(client, username, password))[1]["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/webhook/wibot/admin/users", headers=headers)).status == 200
    slapd.remove_from_group(ldap.ADMINS, slapd.dn_of(username))
    counts = await sync_accounts(client.app[AppKeys.DB], client.app[DIRECTORY])
    assert counts["changed"] >= 1
    await sessions_caught_up(client, db)
    assert (await client.get("/webhook/wibot/admin/users", headers=headers)).status == 403  # the same token
    status, body = await login(client, username, password)  # and at every login
    assert (status, body["user"]["role"]) == (200, "user")


@pytest.mark.parametrize("removal", ["left_the_group", "deleted", "disabled"])
@pytest.mark.parametrize("by", ["sync", "login"])
async def test_the_directory_never_removes_the_last_active_admin(client, db, slapd, factory, removal, by, capsys):
    """#44: a directory that no longer lists anyone as admin (a renamed group, an entry gone) leaves the last
    active admin their role and account, loudly; with another active admin, the removal happens."""
    username, password = person(slapd, ldap.ADMINS)
    assert (await login(client, username, password))[1]["user"]["role"] == "admin"
    kept_before = DIRECTORY_LAST_ADMIN_KEPT._value.get()
    if removal == "left_the_group":
        slapd.remove_from_group(ldap.ADMINS, slapd.dn_of(username))
    elif removal == "deleted":
        slapd.delete(username)
    else:
        slapd.set_account_control(username, 514)
    if by == "sync" or removal != "left_the_group":  # a deleted or disabled entry cannot log in: the sync decides
        await sync_accounts(client.app[AppKeys.DB], client.app[DIRECTORY])
    else:
        assert (await login(client, username, password))[1]["user"]["role"] == "admin"
    row = await db.fetchrow("SELECT role, is_active FROM users WHERE directory_id IS NOT NULL")
    assert (row["role"], row["is_active"]) == ("admin", True)
    assert DIRECTORY_LAST_ADMIN_KEPT._value.get() == kept_before + 1
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "directory_last_admin_kept" in line]
    assert logged and logged[0]["level"] == "error"
    # Another admin appears: the directory's word applies again.
    await factory.user("secours", "secours-pw-2026", role="admin")
    await sync_accounts(client.app[AppKeys.DB], client.app[DIRECTORY])
    row = await db.fetchrow("SELECT role, is_active FROM users WHERE directory_id IS NOT NULL")
    assert (row["role"] == "admin" and row["is_active"]) is False


async def test_linking_a_local_account_to_its_directory_entry_ends_its_earlier_sessions(client, db, slapd, factory):
    username, password = person(slapd)
    await factory.user(username, "old-local-pw-2026")
    status, body = await login(client, username, "old-local-pw-2026")  # a session opened with the local password
    assert status == 200
    local_token = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.get("/webhook/auth/me", headers=local_token)).status == 200
    status, body = await login(client, username, password)  # the directory's: the account is linked
    assert status == 200
    await sessions_caught_up(client, db)
    assert (await client.get("/webhook/auth/me", headers=local_token)).status == 401
    directory_token = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.get("/webhook/auth/me", headers=directory_token)).status == 200
    assert (await login(client, username, "old-local-pw-2026"))[0] == 401  # the local password is gone


async def test_the_sync_deactivates_accounts_gone_or_disabled_and_their_tokens_stop(client, db, slapd):
    gone, gone_pw = person(slapd)
    disabled, disabled_pw = person(slapd)
    tokens = [(await login(client, name, pw))[1]["token"] for name, pw in ((gone, gone_pw), (disabled, disabled_pw))]
    slapd.delete(gone)
    slapd.set_account_control(disabled, 514)
    counts = await sync_accounts(client.app[AppKeys.DB], client.app[DIRECTORY])
    assert counts["deactivated"] == 2
    await sessions_caught_up(client, db)
    for token in tokens:
        r = await client.get("/webhook/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 401
    actives = await db.fetch("SELECT is_active FROM users WHERE username = ANY($1::text[])", [gone, disabled])
    assert [row["is_active"] for row in actives] == [False, False]
    # A deactivation decided here stands: the directory enabling the account again does not reopen it.
    slapd.set_account_control(disabled, 512)
    assert (await login(client, disabled, disabled_pw))[0] == 401


@pytest.mark.production_loop
async def test_the_directory_down_or_slow_is_a_503_in_time_and_local_admins_still_log_in(client, db, slapd, factory):
    await factory.user("secours", "secours-pw-2026", role="admin")  # the break-glass account
    await login(client, "bob", "bob-pw-2026")  # a known directory user
    slapd.pause()
    try:
        started = time.monotonic()
        status, body = await login(client, "bob", "bob-pw-2026")
        elapsed = time.monotonic() - started
        assert (status, body["code"]) == (503, "DIRECTORY_UNAVAILABLE")
        assert elapsed < 3.0  # LDAP_TIMEOUT_S is 1 s here: never a hung request
        status, body = await login(client, "secours", "secours-pw-2026")
        assert (status, body["user"]["role"]) == (200, "admin")
        assert (await client.get("/readyz")).status == 200  # the directory is not the service's readiness
        status, body = await login(client, "secours", "wrong-password")  # never a 401 while it cannot know
        assert status == 503
    finally:
        slapd.resume()
    assert (await login(client, "bob", "bob-pw-2026"))[0] == 200


@pytest.mark.production_loop
async def test_a_directory_that_refuses_connections_is_a_503(make_client, database_url, slapd, db):
    settings = directory_settings(database_url, slapd, ldap_url="ldap://127.0.0.1:9")
    client = await make_client(create_app(settings))
    status, body = await login(client, "bob", "bob-pw-2026")
    assert (status, body["code"]) == (503, "DIRECTORY_UNAVAILABLE")
    assert "Retry-After" in (await client.post(LOGIN, json={"username": "bob", "password": "x"})).headers


async def test_an_existing_local_account_is_linked_but_never_a_local_admin(client, db, slapd, factory):
    username, password = person(slapd)
    local_id = await factory.user(username, "old-local-pw")
    await factory.conversation(local_id)
    status, body = await login(client, username, password)
    assert status == 200 and body["user"]["id"] == local_id  # the same account, its history kept
    assert (await login(client, username, "old-local-pw"))[0] == 401  # no local password any more
    admin_name, admin_pw = person(slapd)
    await factory.user(admin_name, "local-admin-pw", role="admin")
    status, body = await login(client, admin_name, admin_pw)
    assert (status, body["code"]) == (409, "ACCOUNT_CONFLICT")


async def test_a_directory_users_password_cannot_be_set_locally(client, db):
    await login(client, "bob", "bob-pw-2026")
    user_id = await db.fetchval("SELECT user_id FROM users WHERE username = 'bob'")
    with pytest.raises(DirectoryAccount):
        await users.set_password(client.app[AppKeys.DB], PasswordHasher(4), user_id=user_id, password="nouveau-pw")


async def test_modes_local_directory_and_both(make_client, database_url, slapd, db, factory):
    await factory.user("localuser", "local-pw-2026")
    await factory.user("localadmin", "admin-pw-2026", role="admin")
    local = await make_client(create_app(directory_settings(database_url, slapd, auth_mode="local")))
    assert (await login(local, "bob", "bob-pw-2026"))[0] == 401  # the directory is not asked
    assert (await login(local, "localuser", "local-pw-2026"))[0] == 200
    both = await make_client(create_app(directory_settings(database_url, slapd, auth_mode="both")))
    assert (await login(both, "localuser", "local-pw-2026"))[0] == 200  # unknown to the directory: local
    directory_only = await make_client(create_app(directory_settings(database_url, slapd, auth_mode="directory")))
    assert (await login(directory_only, "bob", "bob-pw-2026"))[0] == 200
    assert (await login(directory_only, "localuser", "local-pw-2026"))[0] == 401
    assert (await login(directory_only, "localadmin", "admin-pw-2026"))[0] == 200  # break-glass


async def test_first_logins_at_once_make_one_account(client, db, slapd):
    username, password = person(slapd)
    results = await asyncio.gather(*(login(client, username, password) for _ in range(8)))
    assert {status for status, _ in results} == {200}
    assert len({body["user"]["id"] for _, body in results}) == 1
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", username) == 1


async def login_in_own_process(database_url: str, **env: str) -> int:
    """libldap keeps its TLS settings process-wide: each TLS case runs an auth service of its own, as production
    runs one directory configuration per process."""
    (port,) = free_ports(1)
    environment = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, "LOG_LEVEL": "WARNING",
                   **{name.upper(): value for name, value in env.items()}}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.auth", "--host", "127.0.0.1", "--port", str(port), env=environment,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, port)
        async with aiohttp.ClientSession() as http:
            payload = {"username": "bob", "password": "bob-pw-2026"}
            async with http.post(f"http://127.0.0.1:{port}{LOGIN}", json=payload) as r:
                return r.status
    finally:
        process.terminate()
        await process.wait()


def directory_env(slapd: ldap.Slapd, **overrides: str) -> dict[str, str]:
    return {
        "auth_mode": "both", "ldap_url": slapd.url, "ldap_start_tls": "false", "ldap_bind_dn": ldap.SERVICE_DN,
        "ldap_bind_password": ldap.SERVICE_PASSWORD, "ldap_user_base": ldap.BASE,
        "ldap_user_filter": ldap.OPENLDAP_FILTER, "ldap_id_attribute": "entryUUID", "ldap_timeout_s": "2",
    } | overrides  # fmt: skip


@pytest.fixture(scope="module")
def tls_slapd():
    server = ldap.start_slapd(tls=True)
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
async def test_tls_is_checked_against_the_sites_ca_unless_explicitly_disabled(database_url, tls_slapd, db, transport):
    url = tls_slapd.ldaps_url if transport == "ldaps" else tls_slapd.url
    tls = directory_env(tls_slapd, ldap_url=url, ldap_start_tls=str(transport == "starttls").lower())
    assert await login_in_own_process(database_url, **tls, ldap_ca_file=str(tls_slapd.ca_file)) == 200
    # The certificate checked against the system's CAs, which do not vouch for it: never a login.
    assert await login_in_own_process(database_url, **tls) == 503
    assert await login_in_own_process(database_url, **tls, ldap_verify_certificate="false") == 200


async def test_starttls_asked_of_a_directory_without_tls_is_a_503(database_url, slapd, tls_slapd, db):
    plain = directory_env(slapd, ldap_start_tls="true", ldap_ca_file=str(tls_slapd.ca_file))
    assert await login_in_own_process(database_url, **plain) == 503


async def test_the_scheduled_sync_runs_when_set(make_client, database_url, slapd, db):
    client = await make_client(create_app(directory_settings(database_url, slapd, ldap_sync_every_s=0.2)))
    username, password = person(slapd)
    assert (await login(client, username, password))[0] == 200
    slapd.delete(username)
    async with asyncio.timeout(10):  # the schedule's next round (every 0.2 s here)
        while await db.fetchval("SELECT is_active FROM users WHERE username = $1", username):
            await asyncio.sleep(0.05)
    trail = await db.fetchrow("SELECT action, details FROM audit_log ORDER BY audit_id DESC LIMIT 1")
    assert trail["action"] == "user_deactivated" and "directory_sync" in trail["details"]


async def test_one_address_flooding_logins_cannot_take_the_directory_from_another(make_client, database_url, slapd, db):
    """The directory's admission (LDAP_POOL_SIZE operations, 8 waiting each) is everyone's: one client address
    holds at most half of it. Here one connection, so nine: a first address's nine logins at once, the directory
    stalled, are four admitted and five 429s at once; another address's login is admitted, and answered."""
    settings = directory_settings(database_url, slapd, ldap_pool_size=1, ldap_timeout_s=10.0)
    client = await make_client(create_app(settings))
    assert (await login(client, "bob", "bob-pw-2026"))[0] == 200  # the service connection opened

    def from_address(address: str):
        return client.post(LOGIN, json={"username": "bob", "password": "bob-pw-2026"}, headers={"X-Real-IP": address})

    slapd.pause()
    try:
        flood = [asyncio.ensure_future(from_address("198.51.100.7")) for _ in range(9)]
        async with asyncio.timeout(5):
            while sum(request.done() for request in flood) < 5:
                await asyncio.sleep(0.02)
        refused = [request.result() for request in flood if request.done()]
        assert [r.status for r in refused] == [429] * 5
        assert {(await r.json())["code"] for r in refused} == {"RATE_LIMITED"}
        assert refused[0].headers["Retry-After"] == "1"
        other = asyncio.ensure_future(from_address("203.0.113.20"))
        await asyncio.sleep(0.3)
        assert not other.done()  # admitted (without the share: a 503 at once, the admission full)
    finally:
        slapd.resume()
    answers = await asyncio.gather(other, *(request for request in flood if not request.done()))
    assert [r.status for r in answers] == [200] * 5
