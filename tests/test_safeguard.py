"""The Safeguard gateway against a real fake Safeguard server on loopback (devtools.fake_safeguard).

Levels come from the database: N1+ to see, the approver's level must reach the request's (checked here,
before the upstream is called); an unreachable server gives empty lists that say so and 503 on decisions,
never an approval that did not happen.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devtools.fake_safeguard import FakeSafeguard, create_app, held_request, iso
from devtools.stack import free_ports
from services.auth.app import create_app as auth_app
from tests.conftest import bearer, make_settings

SAFEGUARD = "/webhook/wibot/safeguard"
HEADER = ("X-API-Key", "safeguard-test-key")


@pytest.fixture
async def upstream(aiohttp_server):
    state = FakeSafeguard(required_header=HEADER)
    server = await aiohttp_server(create_app(state))
    state.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return state


@pytest.fixture
async def client(make_client, database_url, upstream):
    settings = make_settings(
        database_url, safeguard_url=upstream.url, safeguard_auth_header=f"{HEADER[0]}: {HEADER[1]}"
    )
    return await make_client(auth_app(settings))


@pytest.fixture
async def people(factory, db):
    """One user per level, N0 … N4."""
    ids = {}
    for level in ("N0", "N1", "N2", "N3", "N4"):
        ids[level] = await factory.user(f"tech{level.lower()}")
        await db.execute("UPDATE users SET accreditation_level = $1 WHERE user_id = $2", level, ids[level])
    return ids


def as_(people, level):
    return bearer(people[level], f"tech{level.lower()}")


@pytest.fixture
def held(upstream):
    """Three pending requests (L1, L2, L3), one expired, one already approved."""
    return {
        "l1": upstream.add(
            held_request(
                approval_id="req-l1",
                tool_name="ad_unlock_account",
                security_level="L1",
                expires_in_s=3600,
                context={"ticket_id": 42},
            )
        ),
        "l2": upstream.add(
            held_request(approval_id="req-l2", tool_name="ad_reset_password", security_level="L2", expires_in_s=600)
        ),
        "l3": upstream.add(
            held_request(approval_id="req-l3", tool_name="ad_disable_account", security_level="L3", expires_in_s=120)
        ),
        "expired": upstream.add(
            held_request(approval_id="req-old", tool_name="glpi_close_ticket", security_level="L1", expires_in_s=-5)
        ),
        "done": upstream.add(
            held_request(
                approval_id="req-done",
                tool_name="glpi_assign_ticket",
                security_level="L1",
                expires_in_s=900,
                status="approved",
            )
        ),
    }


async def test_pending_list_adds_time_left_and_what_the_caller_may_approve(client, people, held, upstream):
    r = await client.get(f"{SAFEGUARD}/requests", params={"status": "pending"}, headers=as_(people, "N2"))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert set(body) == {"success", "requests", "total"}  # no "message": the server answered
    by_id = {item["approval_id"]: item for item in body["requests"]}
    assert list(by_id) == ["req-l1", "req-l2", "req-l3"]  # the expired one is left out
    assert body["total"] == 3
    assert {i: item["can_approve"] for i, item in by_id.items()} == {"req-l1": True, "req-l2": True, "req-l3": False}
    assert 3590 <= by_id["req-l1"]["time_remaining_seconds"] <= 3600
    assert 110 <= by_id["req-l3"]["time_remaining_seconds"] <= 120
    # The upstream's own fields pass through as they are.
    assert by_id["req-l1"]["context"] == {"ticket_id": 42}
    assert by_id["req-l1"]["tool_name"] == "ad_unlock_account"
    assert upstream.unauthorized == 0  # the configured header was sent


@pytest.mark.parametrize(("level", "approvable"), [("N1", {"req-l1"}), ("N3", {"req-l1", "req-l2", "req-l3"})])
async def test_can_approve_follows_the_level_in_the_database(client, people, held, level, approvable):
    r = await client.get(f"{SAFEGUARD}/requests", headers=as_(people, level))
    assert {item["approval_id"] for item in (await r.json())["requests"] if item["can_approve"]} == approvable


async def test_n0_sees_nothing_and_no_token_is_401(client, people, held, upstream):
    for path in ("/requests", "/history", "/request/req-l1"):
        r = await client.get(SAFEGUARD + path, headers=as_(people, "N0"))
        assert r.status == 403, path
        assert (await r.json())["code"] == "FORBIDDEN"
        r = await client.get(SAFEGUARD + path)
        assert r.status == 401, path
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-l1"}, headers=as_(people, "N0"))
    assert r.status == 403
    assert upstream.decisions == []


async def test_detail_of_one_request(client, people, held):
    r = await client.get(f"{SAFEGUARD}/request/req-l2", headers=as_(people, "N1"))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["success"] is True
    assert body["request"]["approval_id"] == "req-l2"
    assert body["request"]["can_approve"] is False
    r = await client.get(f"{SAFEGUARD}/request/unknown-id", headers=as_(people, "N1"))
    assert r.status == 404
    assert (await r.json())["code"] == "NOT_FOUND"


@pytest.mark.parametrize("approval_id", ["../pending", "a b", "x" * 129, "%2e%2e"])
async def test_ids_that_would_reach_elsewhere_upstream_are_refused(client, people, held, upstream, approval_id):
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": approval_id}, headers=as_(people, "N4"))
    assert r.status == 400, await r.text()
    assert upstream.decisions == []


async def test_approval_within_the_level_is_relayed_with_the_approver(client, people, held, upstream, db):
    r = await client.post(
        f"{SAFEGUARD}/approve",
        json={"approval_id": "req-l2", "comment": "ok, vu au téléphone"},
        headers=as_(people, "N2"),
    )
    assert r.status == 200, await r.text()
    assert await r.json() == {"success": True, "approval_id": "req-l2", "status": "approved", "message": "approved"}
    assert upstream.decisions == [
        {
            "approval_id": "req-l2",
            "action": "approve",
            "approver": "techn2",
            "approver_level": "N2",
            "comment": "ok, vu au téléphone",
        }
    ]
    assert held["l2"]["status"] == "approved"
    trail = await db.fetchrow(
        "SELECT action, actor_id, target, details->>'decision' AS decision, details->>'security_level' AS level"
        " FROM audit_log ORDER BY audit_id DESC LIMIT 1"
    )
    assert tuple(trail) == ("safeguard_decision", people["N2"], "req-l2", "approve", "L2")


async def test_rejection_is_relayed(client, people, held, upstream):
    r = await client.post(f"{SAFEGUARD}/reject", json={"approval_id": "req-l1"}, headers=as_(people, "N1"))
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "rejected"
    assert upstream.decisions[0]["action"] == "reject"
    assert upstream.decisions[0]["approver"] == upstream.decisions[0]["rejector"] == "techn1"


@pytest.mark.parametrize("action", ["approve", "reject"])
async def test_a_level_below_the_requests_is_403_before_the_upstream_is_called(client, people, held, upstream, action):
    r = await client.post(f"{SAFEGUARD}/{action}", json={"approval_id": "req-l3"}, headers=as_(people, "N2"))
    assert r.status == 403, await r.text()
    body = await r.json()
    assert body["code"] == "ACCREDITATION_TOO_LOW" and "N2" in body["error"] and "L3" in body["error"]
    assert upstream.decisions == []
    assert held["l3"]["status"] == "pending"


async def test_a_level_lowered_in_the_database_applies_to_the_next_request(client, people, held, upstream, db):
    await db.execute("UPDATE users SET accreditation_level = 'N1' WHERE user_id = $1", people["N3"])
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-l3"}, headers=as_(people, "N3"))
    assert r.status == 403
    assert upstream.decisions == []


@pytest.mark.parametrize(("approval_id", "status"), [("req-old", 409), ("req-done", 409), ("nope", 404)])
async def test_expired_decided_or_unknown_requests_cannot_be_decided(
    client, people, held, upstream, approval_id, status
):
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": approval_id}, headers=as_(people, "N4"))
    assert r.status == status, await r.text()
    assert upstream.decisions == []


async def test_an_unreadable_level_is_approved_by_nobody(client, people, upstream):
    upstream.add(held_request(approval_id="req-odd", tool_name="x", security_level="critical", expires_in_s=600))
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-odd"}, headers=as_(people, "N4"))
    assert r.status == 403
    assert upstream.decisions == []


async def test_history_lists_decided_requests(client, people, held):
    await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-l1"}, headers=as_(people, "N1"))
    r = await client.get(f"{SAFEGUARD}/history", params={"limit": "50"}, headers=as_(people, "N1"))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert [item["approval_id"] for item in body["requests"]] == ["req-l1", "req-done"]
    assert body["total"] == 2
    assert not any(item["can_approve"] for item in body["requests"])  # decided: nothing left to approve
    r = await client.get(f"{SAFEGUARD}/history", params={"limit": "1"}, headers=as_(people, "N1"))
    assert (await r.json())["total"] == 1
    for bad in ("0", "501", "abc"):
        r = await client.get(f"{SAFEGUARD}/history", params={"limit": bad}, headers=as_(people, "N1"))
        assert r.status == 400, bad


async def test_an_unknown_status_filter_is_a_400(client, people, held):
    r = await client.get(f"{SAFEGUARD}/requests", params={"status": "whatever"}, headers=as_(people, "N1"))
    assert r.status == 400


@pytest.mark.parametrize("server", ["unreachable", "not configured"])
async def test_no_server_lists_say_so_and_decisions_are_503(make_client, database_url, people, server):
    (closed_port,) = free_ports(1)
    url = f"http://127.0.0.1:{closed_port}" if server == "unreachable" else None
    client = await make_client(auth_app(make_settings(database_url, safeguard_url=url, safeguard_timeout_s=2)))
    for path in ("/requests", "/history"):
        r = await client.get(SAFEGUARD + path, headers=as_(people, "N1"))
        assert r.status == 200, await r.text()
        assert await r.json() == {
            "success": True,
            "requests": [],
            "total": 0,
            "message": "Serveur Safeguard non disponible",
        }
    for action in ("approve", "reject"):
        r = await client.post(f"{SAFEGUARD}/{action}", json={"approval_id": "req-l1"}, headers=as_(people, "N4"))
        assert r.status == 503, await r.text()
        body = await r.json()
        assert body == {"success": False, "error": "Serveur Safeguard non disponible", "code": "SAFEGUARD_UNAVAILABLE"}
    r = await client.get(f"{SAFEGUARD}/request/req-l1", headers=as_(people, "N1"))
    assert r.status == 503


async def test_a_wrong_upstream_key_is_unavailable_never_a_fake_success(
    make_client, database_url, upstream, people, held
):
    settings = make_settings(database_url, safeguard_url=upstream.url, safeguard_auth_header="X-API-Key: wrong")
    client = await make_client(auth_app(settings))
    r = await client.get(f"{SAFEGUARD}/requests", headers=as_(people, "N1"))
    assert (await r.json())["requests"] == []
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-l1"}, headers=as_(people, "N4"))
    assert r.status == 503
    assert upstream.unauthorized == 2 and upstream.decisions == []
    assert held["l1"]["status"] == "pending"


async def test_a_race_lost_upstream_is_a_409_not_a_success(client, people, held, upstream):
    """Someone decided the request between our check and our call: the upstream's refusal is passed on."""
    upstream.decided_elsewhere.add("req-l1")
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-l1"}, headers=as_(people, "N1"))
    assert r.status == 409, await r.text()
    assert await r.json() == {
        "success": False,
        "error": "Safeguard : already approved",
        "code": "SAFEGUARD_REFUSED",
    }


def test_iso_dates_of_the_fake_are_utc_z():
    assert iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(0)) == "2026-01-02T03:04:05Z"


async def test_an_answer_arriving_in_two_writes_is_read_whole(client, people, held, upstream):
    """F4: the gateway read only what had arrived of the body (`content.read(n)`), so an answer sent in two
    writes 20 ms apart read as a cut JSON: lists empty, decisions 503."""
    upstream.split_answer_s = 0.02
    r = await client.get(f"{SAFEGUARD}/requests", headers=as_(people, "N2"))
    body = await r.json()
    assert "message" not in body, body  # "Serveur Safeguard non disponible" would be here
    assert [item["approval_id"] for item in body["requests"]] == ["req-l1", "req-l2", "req-l3"]
    r = await client.post(f"{SAFEGUARD}/approve", json={"approval_id": "req-l1"}, headers=as_(people, "N2"))
    assert r.status == 200, await r.text()
    assert upstream.requests["req-l1"]["status"] == "approved"


def add_large_requests(upstream, count: int) -> None:
    """`count` pending requests of about 1 KB each."""
    for number in range(count):
        upstream.add(
            held_request(
                approval_id=f"req-{number:03d}",
                tool_name="glpi_close_ticket",
                security_level="L1",
                expires_in_s=3600,
                context={"description": "x" * 1000},
            )
        )


async def test_an_answer_larger_than_a_socket_read_is_read_whole(client, people, upstream):
    """F4: an answer over ~64 KB arrives in several socket reads; 300 requests of 1 KB each must all be listed."""
    add_large_requests(upstream, 300)
    r = await client.get(f"{SAFEGUARD}/requests", headers=as_(people, "N1"))
    body = await r.json()
    assert body["total"] == 300, {k: v for k, v in body.items() if k != "requests"}


@pytest.mark.parametrize("split_s", [0.0, 0.01], ids=["content-length", "chunked"])
async def test_an_answer_past_the_upstream_limit_is_unavailable_not_held(
    client, people, upstream, monkeypatch, split_s
):
    import services.auth.safeguard.client as safeguard

    monkeypatch.setattr(safeguard, "MAX_UPSTREAM_BYTES", 10_000)
    add_large_requests(upstream, 30)
    upstream.split_answer_s = split_s  # chunked: no Content-Length, the count while reading refuses it
    r = await client.get(f"{SAFEGUARD}/requests", headers=as_(people, "N1"))
    body = await r.json()
    assert body["requests"] == [] and body["message"] == "Serveur Safeguard non disponible"
