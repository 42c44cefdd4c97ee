"""The directory login's mapping against a real Active Directory (#29): Samba's AD DC (tests/samba.py), with the
service's AD defaults (sAMAccountName filter on objectCategory/objectClass, objectGUID, memberOf,
userAccountControl) and only the DNs set."""

from __future__ import annotations

import pytest

from services.auth.app import create_app
from services.auth.directory import DIRECTORY
from services.auth.directory.accounts import sync_accounts
from shared import AppKeys
from tests import samba
from tests.conftest import make_settings

LOGIN = "/webhook/auth/login"


@pytest.fixture(scope="module")
def dc():
    server = samba.start_samba_dc()
    yield server
    server.stop()


@pytest.fixture
async def client(make_client, database_url, dc, db):
    settings = make_settings(
        database_url,
        auth_mode="directory",
        ldap_url=samba.URL,
        ldap_start_tls=False,  # loopback in a test; a site's DC: ldaps or StartTLS
        ldap_bind_dn=samba.ADMIN_DN,
        ldap_bind_password=samba.ADMIN_PASSWORD,
        ldap_user_base=samba.BASE,
        ldap_admin_groups=[samba.ADMINS],
        ldap_level_groups={"N3": samba.LEVEL_N3},
    )
    return await make_client(create_app(settings))


async def login(client, username: str, password: str) -> tuple[int, dict]:
    r = await client.post(LOGIN, json={"username": username, "password": password})
    return r.status, await r.json()


async def test_ad_groups_give_role_and_level_and_the_account_is_linked_by_object_guid(client, db, dc):
    status, body = await login(client, "alice", "Alice-pw-2026!")
    assert (status, body["user"]["role"]) == (200, "admin")  # IT-Leads ⊂ WIBOT-Admins
    row = await db.fetchrow("SELECT directory_id, accreditation_level FROM users WHERE username = 'alice'")
    assert row["directory_id"] == dc.show("alice")["objectGUID"]  # the GUID as AD shows it
    assert row["accreditation_level"] == "N3"
    status, body = await login(client, "bob", "Bob-pw-2026!")
    assert (status, body["user"]["role"]) == (200, "user")


async def test_ad_refusals(client):
    assert (await login(client, "carol", "Carol-pw-2026!"))[0] == 401  # userAccountControl 514
    assert (await login(client, "bob", "wrong-password"))[0] == 401
    assert (await login(client, "nobody", "wrong-password"))[0] == 401
    assert (await login(client, "b*b", "Bob-pw-2026!"))[0] == 401


async def test_ad_sync_follows_a_disabled_account_and_a_group_change(client, db, dc, factory):
    await factory.user("secours", "secours-pw-2026", role="admin")  # another active admin: alice may be demoted
    assert (await login(client, "bob", "Bob-pw-2026!"))[0] == 200
    assert (await login(client, "alice", "Alice-pw-2026!"))[0] == 200
    dc.tool("user", "disable", "bob")
    dc.tool("group", "removemembers", "IT-Leads", "alice")
    try:
        counts = await sync_accounts(client.app[AppKeys.DB], client.app[DIRECTORY])
        assert (counts["deactivated"], counts["changed"]) == (1, 1)
        users = {r["username"]: r for r in await db.fetch("SELECT username, role, is_active FROM users")}
        assert users["bob"]["is_active"] is False and users["alice"]["role"] == "user"
    finally:
        dc.tool("user", "enable", "bob")
        dc.tool("group", "addmembers", "IT-Leads", "alice")
