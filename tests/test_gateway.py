"""Routed tests: the real stack as `make run` starts it (devtools.stack → devtools.supervisor → services + nginx + fake
Mistral), on free ports, against the test database. Needs Debian's nginx (installed by .ci/run).

Two chat processes run behind nginx here, so every routed test also exercises the scale-out topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.fake_mistral import REPLY_PREFIX
from devtools.stack import Topology, free_ports, wait_for_port, write_nginx_main
from tests import directory as ldap
from tests.conftest import TEST_SECRET, bearer, token_for
from tests.figures import FIGURES

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "http://localhost:3000"
CHAT_PATH = "/webhook/wibot/chat"
# Headless, as root, on a closed network (no background connections to Google's hosts).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Stack:
    url: str
    log: Path
    chat_ports: list[int]
    auth_port: int
    conversations_port: int

    async def wait_for(self, extract: Any, done: Any, within_s: float = 10.0) -> Any:
        """Log lines travel through the supervisor: poll until `done(extract(lines))` or the timeout."""
        deadline = time.monotonic() + within_s
        while True:
            found = extract(self.log_lines())
            if done(found) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)

    def log_lines(self) -> list[dict]:
        lines = []
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            _, sep, payload = raw.partition("| ")
            if sep and payload.startswith("{"):
                try:
                    lines.append(json.loads(payload))
                except json.JSONDecodeError:
                    continue
        return lines


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, slapd):
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), "nginx is required (apt-get install nginx-light)"
    run_dir = tmp_path_factory.mktemp("stack")
    gateway, auth, chat1, chat2, conversations, fake, safeguard = free_ports(7)
    env = {
        **os.environ,
        "JWT_SECRET": TEST_SECRET,
        "DATABASE_URL": database_url,
        "STACK_RUN_DIR": str(run_dir),
        "GATEWAY_PORT": str(gateway),
        "AUTH_PORTS": str(auth),
        "CHAT_PORTS": f"{chat1} {chat2}",
        "CONVERSATIONS_PORTS": str(conversations),
        "FAKE_MISTRAL_PORT": str(fake),
        "FAKE_SAFEGUARD_PORT": str(safeguard),
        # Streamed replies: one chunk every 100 ms (the JSON answer is not delayed).
        "FAKE_MISTRAL_CHUNK_DELAY_MS": "100",
        # The frontend's origin, and the loopback page of the browser streaming test.
        "CORS_ORIGIN_PATTERN": r"^http://(localhost:3000|127\.0\.0\.1:[0-9]+)$",
        "SAFEGUARD_URL": "",
        "MISTRAL_API_KEY": "",
        "LOGIN_RATE_LIMIT": "5r/s",
        "LOGIN_BURST": "10",
        "MAX_BODY_BYTES": str(1024 * 1024),
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "INFO",
        "CHAT_REQUESTS_PER_MINUTE": "1000",
        "CHAT_BURST": "0",
        # The demo corpus, ingested by the tests themselves (no sync at start to race with them).
        "KB_ROOT": str(ROOT / "devtools" / "kb_corpus"),
        "KB_SYNC_EVERY_S": "0",
        # Conversations idle for 30 days go (no test but the purge's makes one that old), checked twice a second.
        "RETENTION_DAYS": "30",
        "RETENTION_PURGE_EVERY_S": "0.5",
        # Directory accounts beside the local ones (#29), from the test directory.
        "AUTH_MODE": "both",
        "LDAP_URL": slapd.url,
        "LDAP_START_TLS": "false",
        "LDAP_BIND_DN": ldap.SERVICE_DN,
        "LDAP_BIND_PASSWORD": ldap.SERVICE_PASSWORD,
        "LDAP_USER_BASE": ldap.BASE,
        "LDAP_USER_FILTER": ldap.OPENLDAP_FILTER,
        "LDAP_ID_ATTRIBUTE": "entryUUID",
        "LDAP_ADMIN_GROUPS": json.dumps([ldap.ADMINS]),
        "LDAP_LEVEL_GROUPS": json.dumps(ldap.LEVEL_GROUPS),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log = run_dir / "stack.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.stack", "run"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for port in (gateway, auth, chat1, chat2, conversations, fake, safeguard):
            wait_for_port(port)
        # The environment handed to every process holds JWT_SECRET: it goes in their environment, in no file.
        assert not (run_dir / "stack.env").exists()
        yield Stack(f"http://127.0.0.1:{gateway}", log, [chat1, chat2], auth, conversations)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    # One Ctrl-C stopped everything: nothing listens any more.
    for port in (gateway, auth, chat1, chat2, conversations, fake, safeguard):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after Ctrl-C"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_spec_curl_tests_pass_through_the_gateway(stack, factory, database_url):
    await factory.user("khora", "test123", role="admin")
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(ROOT / "tests/e2e/spec_curl_tests.sh")],
        env={**os.environ, "BASE_URL": stack.url, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all spec curl tests passed" in result.stdout


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/webhook/wibot/chat"),
        ("GET", "/webhook/wibot/conversations"),
        ("POST", "/webhook/wibot/conversations"),
        ("GET", "/webhook/wibot/conversations/550e8400-e29b-41d4-a716-446655440000/messages"),
        ("GET", "/webhook/wibot/messages?conversationId=550e8400-e29b-41d4-a716-446655440000"),
        ("PATCH", "/webhook/wibot/conversation/rename"),
        ("DELETE", "/webhook/wibot/conversation/delete"),
        ("GET", "/webhook/wibot/user/tokens"),
        ("GET", "/webhook/wibot/user/export"),
        ("GET", "/webhook/wibot/admin/audit"),
        ("GET", "/webhook/auth/me"),
        ("POST", "/webhook/auth/logout"),
        ("GET", "/webhook/wibot/admin/users"),
        ("POST", "/webhook/wibot/admin/users"),
        ("PUT", "/webhook/wibot/admin/users"),
        ("DELETE", "/webhook/wibot/admin/users"),
        ("GET", "/webhook/wibot/analytics?period=7d"),
        ("GET", "/webhook/wibot/safeguard/requests?status=pending"),
        ("GET", "/webhook/wibot/safeguard/history?limit=50"),
        ("GET", "/webhook/wibot/safeguard/request/abc123"),
        ("POST", "/webhook/wibot/safeguard/approve"),
        ("POST", "/webhook/wibot/safeguard/reject"),
        ("POST", "/webhook/wibot/rag/ingest"),
    ],
)
async def test_every_route_reaches_its_service(stack, http, db, method, path):
    async with http.request(method, stack.url + path, json={}, headers={"Origin": ORIGIN}) as r:
        assert r.status == 401, await r.text()
        assert await r.json() == {"success": False, "error": "Token invalide ou expiré", "code": "INVALID_TOKEN"}
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN  # CORS on errors too


async def test_unknown_webhook_and_metrics_are_404_envelopes(stack, http, db):
    for method, path in [("POST", "/webhook/wibot/xyz"), ("GET", "/metrics"), ("GET", "/")]:
        async with http.request(method, stack.url + path) as r:
            assert r.status == 404, await r.text()
            assert r.content_type == "application/json"
            assert await r.json() == {"success": False, "error": "Ressource introuvable", "code": "NOT_FOUND"}


async def test_wrong_method_on_a_known_route_is_a_405_envelope(stack, http, db):
    async with http.get(stack.url + "/webhook/auth/login") as r:
        assert r.status == 405, await r.text()
        assert (await r.json())["success"] is False


async def test_cors_preflight_and_allow_list(stack, http, db):
    async with http.options(
        stack.url + "/webhook/wibot/chat",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert set(r.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {
            "GET",
            "POST",
            "PATCH",
            "DELETE",
            "OPTIONS",
        }
        assert {"Authorization", "Content-Type"} <= {
            h.strip() for h in r.headers["Access-Control-Allow-Headers"].split(",")
        }
    async with http.options(stack.url + "/webhook/wibot/chat", headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 204
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_body_over_the_limit_is_nginx_413_in_our_envelope(stack, http, db):
    async with http.post(
        stack.url + "/webhook/wibot/chat",
        data=io.BytesIO(b"x" * (2 * 1024 * 1024)),
        headers={"Content-Type": "application/json", "Origin": ORIGIN},
    ) as r:
        assert r.status == 413
        assert await r.json() == {"success": False, "error": "Requête trop volumineuse", "code": "PAYLOAD_TOO_LARGE"}
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_a_txt_and_a_pdf_as_the_newer_frontend_sends_them_reach_the_model_through_the_gateway(
    stack, http, factory, db
):
    from tests.documents import b64, text_pdf

    user_id = await factory.user("files")
    # The fake model echoes the first 80 characters of what it read: the decoded text, not base64.
    cases = [
        ({"name": "note.txt", "content": b64("Redémarrer le serveur GLPI".encode())}, "Redémarrer le serveur GLPI"),
        ({"name": "proc.pdf", "content": b64(text_pdf(["Panne Internet"]))}, "[Page 1/1]\nPanne Internet"),
        # Over nginx's 16 KiB body buffer: spooled by nginx to its own temporary file, then passed on whole
        # (under CHAT_FILES_MAX_CHARS: read whole, not indexed).
        ({"name": "long.md", "content": b64(("# Journal\n" + "ligne\n" * 15_000).encode())}, "# Journal\nligne"),
    ]
    for attachment, text in cases:
        payload = {"conversation_id": str(uuid.uuid4()), "message": "x", "mode": "code", "files": [attachment]}
        async with http.post(stack.url + CHAT_PATH, json=payload, headers=bearer(user_id)) as r:
            assert r.status == 200, await r.text()
            reply = (await r.json())["response"]
        assert f"Vous avez écrit : x\n\n--- Fichier : {attachment['name']} ---\n{text}" in reply, reply
    rows = await db.fetch("SELECT files_count, mode FROM messages WHERE role = 'user' AND user_id = $1", user_id)
    assert [tuple(r) for r in rows] == [(1, "code")] * 3
    payload = {"conversation_id": str(uuid.uuid4()), "message": "x", "files": [{"name": "a.exe", "content": "MZ"}]}
    async with http.post(stack.url + CHAT_PATH, json=payload, headers=bearer(user_id)) as r:
        assert (r.status, (await r.json())["code"]) == (415, "FILE_UNSUPPORTED_TYPE")


async def test_no_message_file_password_or_token_reaches_any_log(stack, http, factory, db):
    """#30: what a user sends is theirs; the logs of nginx, the services and the fake model carry none of it."""
    from tests.documents import b64

    password, wrong = "Cheval-Agrafe-7419", "Mauvais-Essai-8821"
    message = "Le serveur de Quimper-marqueur-5521 refuse la connexion"
    file_text = "Journal confidentiel marqueur-9043 de la résidente"
    await factory.user("discret", password)
    login = stack.url + "/webhook/auth/login"
    async with http.post(login, json={"username": "discret", "password": wrong}) as r:
        assert r.status == 401
    async with http.post(login, json={"username": "discret", "password": password}) as r:
        token = (await r.json())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    files = [{"name": "journal.txt", "content": b64(file_text.encode())}]
    for extra in ({}, {"stream": True}):
        payload = {"conversation_id": str(uuid.uuid4()), "message": message, "files": files, **extra}
        async with http.post(stack.url + CHAT_PATH, json=payload, headers=headers) as r:
            assert r.status == 200 and "marqueur-5521" in await r.text()
    async with http.get(stack.url + "/webhook/wibot/user/export", headers=headers) as r:
        assert r.status == 200 and "marqueur-5521" in await r.text()
    async with http.post(stack.url + "/webhook/auth/logout", headers=headers) as r:
        assert r.status == 200
    request_ids = await stack.wait_for(
        lambda lines: [line for line in lines if line.get("path") == "/webhook/auth/logout"], bool
    )
    assert request_ids, "the logs were read after the last request reached them"
    logged = stack.log.read_text(encoding="utf-8", errors="replace")
    secrets = [password, wrong, "marqueur-5521", "marqueur-9043", b64(file_text.encode())[:24], token.split(".")[2]]
    assert [secret for secret in secrets if secret in logged] == []


async def test_the_retention_purge_and_the_audit_trail_work_through_the_gateway(stack, http, factory, db):
    admin = await factory.user("gardien", "motdepasse-gardien", role="admin")
    user_id = await factory.user("ancien")
    old = await factory.conversation(user_id, updated_at="2020-01-01T00:00:00Z")
    await factory.message(old, user_id, "user", "Un vieux message")
    fresh = await factory.conversation(user_id)
    async with asyncio.timeout(10):  # the conversations service's schedule, every 0.5 s here
        while await db.fetchval("SELECT count(*) FROM conversations WHERE conversation_id = $1", old):
            await asyncio.sleep(0.1)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", old) == 0
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE conversation_id = $1", fresh) == 1

    login = {"username": "gardien", "password": "motdepasse-gardien"}
    async with http.post(stack.url + "/webhook/auth/login", json=login) as r:
        headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    audit_url = stack.url + "/webhook/wibot/admin/audit"
    async with http.get(audit_url, params={"action": "retention_purge"}, headers=headers) as r:
        purges = (await r.json())["rows"]
    assert r.status == 200 and any(row["details"]["conversations"] >= 1 for row in purges)
    async with http.get(audit_url, params={"action": "login", "user_id": str(admin)}, headers=headers) as r:
        [row] = (await r.json())["rows"]
    assert row["target"] == str(admin) and row["client_address"] == "127.0.0.1"  # as nginx saw the client
    assert len(row["request_id"]) >= 16


async def test_a_directory_user_logs_in_through_the_gateway_and_loses_the_admin_role_with_the_group(
    stack, http, slapd, db, factory
):
    """#29 done: the real login route through nginx; role and level from the directory's groups, then changed."""
    await factory.user("secours", "secours-pw-2026", role="admin")  # another active admin (#44: the last one stays)
    username, password = f"d{uuid.uuid4().hex[:8]}", "directory-pw-2026"
    dn = slapd.add_person(username, password)
    slapd.add_to_group(ldap.ADMINS, dn)
    slapd.add_to_group(ldap.LEVEL_GROUPS["N2"], dn)
    login = stack.url + "/webhook/auth/login"
    async with http.post(login, json={"username": username, "password": password}) as r:
        body = await r.json()
    assert r.status == 200 and body["user"]["role"] == "admin", body
    headers = {"Authorization": f"Bearer {body['token']}"}
    async with http.get(stack.url + "/webhook/wibot/admin/users", headers=headers) as r:
        listed = {u["username"]: u for u in (await r.json())["users"]}
    assert (listed[username]["source"], listed[username]["accreditation_level"]) == ("directory", "N2")
    slapd.remove_from_group(ldap.ADMINS, dn)
    async with http.post(login, json={"username": username, "password": password}) as r:
        assert (await r.json())["user"]["role"] == "user"  # applied at the login
    async with http.get(stack.url + "/webhook/wibot/admin/users", headers=headers) as r:
        assert r.status == 403  # and to the token issued before, at its next request (the session copies)
    async with http.post(login, json={"username": username, "password": "wrong-password"}) as r:
        assert (r.status, (await r.json())["code"]) == (401, "INVALID_CREDENTIALS")


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Bytes as a broken or hostile client sends them; the status, headers and body nginx answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"NOT-HTTP\r\n\r\n", 400, "BAD_REQUEST"),
        (b"TRACE /webhook/wibot/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 414, "URI_TOO_LONG"),
        (
            b"GET /webhook/wibot/conversations HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"b" * 70_000
            + b"\r\nConnection: close\r\n\r\n",
            400,  # nginx answers its 494 as a 400
            "HEADERS_TOO_LARGE",
        ),
        (
            b"POST /webhook/wibot/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
            b"Connection: close\r\n\r\n0\r\n\r\n",
            501,
            "NOT_IMPLEMENTED",
        ),
    ],
    ids=["400", "405", "414", "494", "501"],
)
async def test_nginx_own_errors_answer_the_json_envelope(stack, db, request_bytes, status, code):
    got, headers, body = await asyncio.to_thread(raw_exchange, stack.url, request_bytes)
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    envelope = json.loads(body)
    assert envelope["success"] is False and envelope["code"] == code and envelope["error"]


MANY_HEADERS = b"".join(b"X-Header-%d: %d\r\n" % (n, n) for n in range(200))


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        *(
            (method + b" /webhook/auth/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "METHOD_NOT_ALLOWED")
            for method in (b"BREW", b"X", b"GETS", b"PRI")
        ),
        (b"GET /webhook/auth/me HTTP/1.1\r\nHost: x\r\n" + MANY_HEADERS + b"Connection: close\r\n\r\n", 401, None),
        (b"GET /webhook/auth/me HTTP/1.0\r\n\r\n", 401, None),
    ],
    ids=["BREW", "X", "GETS", "PRI", "200-headers", "http1.0-without-host"],
)
async def test_what_aiohttp_would_answer_in_plain_text_is_answered_in_the_envelope(
    stack, db, request_bytes, status, code
):
    """F6: these reached the services, whose HTTP parser answered a plain-text 400 echoing the request line.
    Now an unknown method is nginx's 405 envelope, and the rest reach the route (401: no token)."""
    got, headers, body = await asyncio.to_thread(raw_exchange, stack.url, request_bytes)
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), (headers, body[:300])
    envelope = json.loads(body)
    assert envelope["success"] is False and envelope["error"], envelope
    assert envelope["code"] == (code or "INVALID_TOKEN"), envelope


async def test_request_id_is_the_same_in_nginx_and_service_logs(stack, http, db):
    async with http.post(stack.url + "/webhook/auth/login", json={}, headers={"X-Request-ID": "trace-e2e-42"}) as r:
        assert r.status == 400
        assert r.headers["X-Request-ID"] == "trace-e2e-42"
    async with http.get(stack.url + "/webhook/wibot/user/tokens") as r:
        generated = r.headers["X-Request-ID"]
        assert len(generated) == 32
    for request_id, service in [("trace-e2e-42", "auth"), (generated, "conversations")]:

        def services_logging(lines: list[dict], request_id: str = request_id) -> set:
            return {line.get("service") for line in lines if line.get("request_id") == request_id}

        services = await stack.wait_for(services_logging, lambda found, s=service: {"nginx", s} <= found)
        assert {"nginx", service} <= services, (request_id, services)


async def test_two_chat_processes_share_quota_and_history(stack, http, factory, db):
    user_id = await factory.user("scale")
    headers = bearer(user_id)
    conversation = str(uuid.uuid4())
    for i in range(8):
        payload = {"conversation_id": conversation, "message": f"message {i}"}
        async with http.post(stack.url + "/webhook/wibot/chat", json=payload, headers=headers) as r:
            assert r.status == 200, await r.text()
    rows = await db.fetch("SELECT role, content FROM messages ORDER BY created_at, message_id")
    assert [r["content"] for r in rows if r["role"] == "user"] == [f"message {i}" for i in range(8)]

    def chat_upstreams(lines: list[dict]) -> set:
        return {line["upstream"] for line in lines if line.get("service") == "nginx" and line.get("path") == CHAT_PATH}

    expected = {f"127.0.0.1:{p}" for p in stack.chat_ports}
    upstreams = await stack.wait_for(chat_upstreams, lambda found: expected <= found)
    assert {f"127.0.0.1:{p}" for p in stack.chat_ports} <= upstreams  # both processes served

    # Concurrent chats spread over both processes: the quota holds and the books balance.
    used_before = await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id)
    await db.execute("UPDATE user_token_usage SET quota_tokens = $2 WHERE user_id = $1", user_id, used_before + 8000)

    async def one() -> tuple[int, dict]:
        payload = {"conversation_id": str(uuid.uuid4()), "message": "concurrent"}
        async with http.post(stack.url + "/webhook/wibot/chat", json=payload, headers=headers) as r:
            return r.status, await r.json()

    results = await asyncio.gather(*[one() for _ in range(30)])
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    used, quota = await db.fetchrow(
        "SELECT used_tokens, quota_tokens FROM user_token_usage WHERE user_id = $1", user_id
    )
    assert used <= quota
    assert used - used_before == sum(body["tokens_used"] for status, body in results if status == 200)


async def test_make_run_says_where_everything_is_once_it_all_answers(stack, db):
    """#33: the URLs (API, Swagger, metrics), the demo login and where the logs are, after every /readyz."""

    def announcement(_: list[dict]) -> str:
        text = stack.log.read_text(encoding="utf-8", errors="replace")
        return text[text.find("WIBOT is ready.") :] if "WIBOT is ready." in text else ""

    said = await stack.wait_for(announcement, bool, within_s=30)
    assert f"Swagger (every route):     {stack.url}/docs" in said
    assert f"chat http://127.0.0.1:{stack.chat_ports[0]}/metrics" in said and "Demo login" in said


async def test_every_service_process_runs_on_uvloop(stack, db):
    def loops(lines: list[dict]) -> dict[str, str]:
        return {
            f"{line['service']}:{line['port']}": line["event_loop"]
            for line in lines
            if line.get("event") == "service_starting"
        }

    found = await stack.wait_for(loops, lambda found: len(found) == 4)
    assert found == {
        f"auth:{stack.auth_port}": "uvloop",
        **{f"chat:{port}": "uvloop" for port in stack.chat_ports},
        f"conversations:{stack.conversations_port}": "uvloop",
    }


async def test_a_logout_or_a_deactivation_reaches_every_process_within_a_second(stack, http, factory, db):
    """Each process authenticates from its own copy of the sessions (shared/sessions.py), kept current by
    NOTIFY: what one process revokes, the two chat processes, the conversations and the auth service refuse
    within 1 s. Probes go to each process directly (nginx would pick one); an empty chat body is a 400 once
    the token is accepted, so a 401 can only be the token."""
    probes = [
        *((f"http://127.0.0.1:{port}", "POST", CHAT_PATH) for port in stack.chat_ports),
        (f"http://127.0.0.1:{stack.conversations_port}", "GET", "/webhook/wibot/user/tokens"),
        (f"http://127.0.0.1:{stack.auth_port}", "GET", "/webhook/auth/me"),
    ]

    async def status_of(probe: tuple[str, str, str], headers: dict[str, str]) -> int:
        base, method, path = probe
        async with http.request(method, base + path, json={}, headers=headers) as r:
            return r.status

    async def refused_after(probe: tuple[str, str, str], headers: dict[str, str], since: float) -> float:
        while await status_of(probe, headers) != 401 and time.monotonic() - since < 5:
            await asyncio.sleep(0.01)
        return time.monotonic() - since

    admin = await factory.user("khora", role="admin")
    await factory.user("lea", "pw-lea-123")
    async with http.post(stack.url + "/webhook/auth/login", json={"username": "lea", "password": "pw-lea-123"}) as r:
        assert r.status == 200, await r.text()
        lea = {"Authorization": f"Bearer {(await r.json())['token']}"}
    bob_id = await factory.user("bob")
    bob = bearer(bob_id, "bob")
    for headers in (lea, bob):  # accepted, and each process now holds the user
        assert [await status_of(probe, headers) for probe in probes] == [400, 400, 200, 200]

    async with http.post(stack.url + "/webhook/auth/logout", headers=lea) as r:
        assert r.status == 200
    since = time.monotonic()
    delays = await asyncio.gather(*(refused_after(probe, lea, since) for probe in probes))
    assert max(delays) <= 1.0, delays

    async with http.put(
        stack.url + "/webhook/wibot/admin/users",
        json={"user_id": bob_id, "is_active": False},
        headers=bearer(admin, role="admin"),
    ) as r:
        assert r.status == 200, await r.text()
    since = time.monotonic()
    delays = await asyncio.gather(*(refused_after(probe, bob, since) for probe in probes))
    assert max(delays) <= 1.0, delays


async def test_login_is_rate_limited_per_ip_in_our_envelope(stack, http, factory, db):
    await factory.user("khora", "test123")

    async def attempt() -> tuple[int, dict, str | None]:
        async with http.post(
            stack.url + "/webhook/auth/login", json={"username": "khora", "password": "bad"}, headers={"Origin": ORIGIN}
        ) as r:
            return r.status, await r.json(), r.headers.get("Access-Control-Allow-Origin")

    results = await asyncio.gather(*[attempt() for _ in range(40)])
    limited = [body for status, body, _ in results if status == 429]
    assert limited and {s for s, _, _ in results} == {401, 429}
    assert limited[0] == {
        "success": False,
        "error": "Trop de tentatives. Réessayez dans quelques instants.",
        "code": "RATE_LIMITED",
    }
    assert all(origin == ORIGIN for _, _, origin in results)


@contextlib.asynccontextmanager
async def lone_nginx(tmp_path: Path, **env: str) -> AsyncIterator[str]:
    """Only nginx, with the project's config rendered from `env`, in front of whatever the test provides."""
    gateway = free_ports(1)[0]
    topology = Topology.from_env({"GATEWAY_PORT": str(gateway), "NGINX_ACCESS_LOG": "/dev/null", **env})
    conf = write_nginx_main(topology, tmp_path)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(conf.parent)], stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_for_port, gateway)
        yield f"http://127.0.0.1:{gateway}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_upstream_down_is_a_502_envelope(tmp_path, http):
    dead = str(free_ports(1)[0])
    async with (
        lone_nginx(tmp_path, CONVERSATIONS_PORTS=dead) as url,
        http.get(url + "/webhook/wibot/conversations") as r,
    ):
        assert r.status == 502
        assert await r.json() == {
            "success": False,
            "error": "Service indisponible. Réessayez dans quelques instants.",
            "code": "BAD_GATEWAY",
        }


def nginx_processes(run_dir: Path) -> list[int]:
    master = int((run_dir / "nginx" / "nginx.pid").read_text())
    return [master, *(int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split())]


def spooled_bytes(run_dir: Path) -> int:
    """Bytes of request bodies nginx holds in its spool files (unlinked at once: found through its open files)."""
    total = 0
    for pid in nginx_processes(run_dir):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if "/client_body/" in os.readlink(fd):
                    total += fd.stat().st_size
    return total


def nginx_rss_mb(run_dir: Path) -> float:
    """Resident memory of the gateway: its master and worker processes."""
    total_kb = 0
    for pid in nginx_processes(run_dir):
        status = Path(f"/proc/{pid}/status").read_text()
        total_kb += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return total_kb / 1024


async def slow_upload(
    url: str, sent: int, declared: int = 20_000_000, token: str | None = None
) -> tuple[asyncio.StreamReader, Any]:
    """A client that announces a large chat body, sends `sent` bytes of it, and then waits."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    authorization = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    writer.write(
        b"POST /webhook/wibot/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + authorization
        + f"Content-Length: {declared}\r\n\r\n".encode()
    )
    writer.write(b"x" * sent)
    await writer.drain()
    return reader, writer


async def test_200_slow_large_uploads_do_not_grow_the_gateways_memory(tmp_path):
    """Bodies are spooled to disk past 16 KiB: 200 clients holding 512 KiB each (100 MiB in all) cost nginx
    almost no RAM (with 4 MiB in-memory buffers, the same attack made it hold 817 MiB)."""
    uploads, per_client = 200, 512 * 1024
    env = {"CONN_LIMIT_PER_IP": "1000", "CLIENT_TIMEOUT": "60s", "MAX_BODY_BYTES": str(25 * 1024 * 1024)}
    async with lone_nginx(tmp_path, **env) as url:
        before = nginx_rss_mb(tmp_path)
        clients = await asyncio.gather(*(slow_upload(url, per_client) for _ in range(uploads)))
        try:
            async with asyncio.timeout(45):  # until nginx has taken in every byte sent (to its spool files)
                while spooled_bytes(tmp_path) < uploads * (per_client - 16384):
                    await asyncio.sleep(0.1)
            during = nginx_rss_mb(tmp_path)
        finally:
            for _, writer in clients:
                writer.close()
    growth = during - before
    FIGURES["gateway_rss_growth_mb"] = round(growth, 1)
    assert growth < 32, f"nginx grew by {growth:.0f} MiB holding {uploads} x {per_client // 1024} KiB"


async def test_connections_beyond_the_per_ip_limit_get_a_429_envelope(tmp_path, http):
    async with lone_nginx(tmp_path, CONN_LIMIT_PER_IP="5", CLIENT_TIMEOUT="60s") as url:
        held = [await slow_upload(url, 64 * 1024) for _ in range(5)]
        try:
            # Counted once nginx has read their headers; it spools their bodies only after that: wait for it.
            async with asyncio.timeout(30):
                while spooled_bytes(tmp_path) < 5 * (64 * 1024 - 16384):
                    await asyncio.sleep(0.05)
            async with http.get(url + "/webhook/wibot/conversations") as r:
                assert r.status == 429
                body = await r.json()
                assert body["success"] is False and body["code"] == "RATE_LIMITED"
        finally:
            for _, writer in held:
                writer.close()


async def held_until_spooled(tmp_path: Path, uploads: list, per_upload: int) -> None:
    """Connections are counted once nginx has read their headers; it spools their bodies only after that."""
    async with asyncio.timeout(30):
        while spooled_bytes(tmp_path) < len(uploads) * (per_upload - 16384):
            await asyncio.sleep(0.05)


async def test_one_clients_slow_uploads_leave_its_address_to_the_others(tmp_path, http):
    """F8: one client holding its address's connections (a byte every few seconds) made every other client
    behind the same NAT get 429. Now one client (one token) holds CONN_LIMIT_PER_CLIENT at most."""
    slow_client, other_client = token_for(1, "lent"), token_for(2, "voisin")
    env = {"CONN_LIMIT_PER_IP": "20", "CONN_LIMIT_PER_CLIENT": "3", "CLIENT_TIMEOUT": "60s"}
    async with lone_nginx(tmp_path, CONVERSATIONS_PORTS=str(free_ports(1)[0]), **env) as url:
        held = [await slow_upload(url, 64 * 1024, token=slow_client) for _ in range(3)]
        try:
            await held_until_spooled(tmp_path, held, 64 * 1024)
            statuses = {}
            for who, token in (("slow", slow_client), ("other", other_client), ("no token", None)):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.get(url + "/webhook/wibot/conversations", headers=headers) as r:
                    statuses[who] = (r.status, (await r.json())["code"])
            # Past the slow client's share: its own next request is refused; the others reach the service (here
            # a port where nothing listens: 502).
            assert statuses == {
                "slow": (429, "RATE_LIMITED"),
                "other": (502, "BAD_GATEWAY"),
                "no token": (502, "BAD_GATEWAY"),
            }
        finally:
            for _, writer in held:
                writer.close()


async def test_the_default_per_address_limit_is_not_held_by_100_slow_uploads(tmp_path, http):
    """The finding's own figure, with the shipped defaults (sized for a NAT): 100 slow uploads from one address
    without a token, and another client of that address is still served."""
    async with lone_nginx(tmp_path, CONVERSATIONS_PORTS=str(free_ports(1)[0]), CLIENT_TIMEOUT="60s") as url:
        held = [await slow_upload(url, 32 * 1024) for _ in range(100)]
        try:
            await held_until_spooled(tmp_path, held, 32 * 1024)
            async with http.get(url + "/webhook/wibot/conversations", headers=bearer(2, "voisin")) as r:
                assert (r.status, (await r.json())["code"]) == (502, "BAD_GATEWAY")
        finally:
            for _, writer in held:
                writer.close()


async def test_a_client_that_stalls_is_cut_off_at_the_client_timeout(tmp_path):
    async with lone_nginx(tmp_path, CLIENT_TIMEOUT="1s") as url:
        reader, writer = await slow_upload(url, 1024)
        try:
            async with asyncio.timeout(15):  # nginx closes it after ~1 s of silence (default: a minute)
                answer = await reader.read()
        finally:
            writer.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]


async def test_docs_page_renders_the_api_in_headless_chromium(stack, http, db):
    async with http.get(stack.url + "/webhook/openapi.json") as r:
        assert r.status == 200 and (await r.json())["openapi"] == "3.1.0"
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required (apt-get install chromium)"
    profile = tempfile.mkdtemp()
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        stack.url + "/docs",
    ]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=90)
    shutil.rmtree(profile, ignore_errors=True)
    dom = result.stdout
    # Swagger UI rendered the operations (it is JavaScript: the raw page does not contain them).
    assert "/webhook/auth/login" in dom and "opblock" in dom, dom[:2000]
    assert "Unable to render" not in dom


async def test_upstream_too_slow_is_a_504_envelope(tmp_path, http):
    silent = free_ports(1)[0]
    release = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # reads nothing, says nothing until the test is over
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", silent)
    try:
        async with (
            lone_nginx(tmp_path, CONVERSATIONS_PORTS=str(silent), PROXY_TIMEOUT="1s") as url,
            http.get(url + "/webhook/wibot/conversations") as r,
        ):
            assert r.status == 504
            assert await r.json() == {
                "success": False,
                "code": "GATEWAY_TIMEOUT",
                "error": "Le service a mis trop de temps à répondre. Réessayez.",
            }
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_the_newer_frontends_supervision_and_safeguard_pages_work_through_nginx(stack, http, factory, db):
    """What the Supervision and Safeguard pages call, as `make run` serves them: the analytics of an admin, a
    non-admin refused, and the fake Safeguard server's demo requests approved by an N4 (no demo-mode answer)."""
    admin = await factory.user("khora", role="admin")
    await db.execute("UPDATE users SET accreditation_level = 'N4' WHERE user_id = $1", admin)
    tech = await factory.user("tech")  # N1 by default
    async with http.get(
        stack.url + "/webhook/wibot/analytics?period=30d", headers={**bearer(admin, role="admin"), "Origin": ORIGIN}
    ) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["period"] == "30d" and len(body["stats"]["messages"]["byDay"]) == 31
        assert body["stats"]["users"] == {"total": 2, "directory": 0}
    async with http.get(stack.url + "/webhook/wibot/analytics", headers=bearer(tech, "tech")) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "FORBIDDEN"

    async with http.get(
        stack.url + "/webhook/wibot/safeguard/requests?status=pending", headers=bearer(tech, "tech")
    ) as r:
        assert r.status == 200, await r.text()
        listed = await r.json()
    assert "message" not in listed  # the fake server answered: no "not available" banner
    assert sorted(item["security_level"] for item in listed["requests"]) == ["L1", "L2", "L3"]
    l1 = next(item for item in listed["requests"] if item["security_level"] == "L1")
    l3 = next(item for item in listed["requests"] if item["security_level"] == "L3")
    assert (l1["can_approve"], l3["can_approve"]) == (True, False)

    async with http.post(
        stack.url + "/webhook/wibot/safeguard/approve",
        json={"approval_id": l3["approval_id"]},
        headers=bearer(tech, "tech"),
    ) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "ACCREDITATION_TOO_LOW"
    async with http.post(
        stack.url + "/webhook/wibot/safeguard/approve",
        json={"approval_id": l3["approval_id"], "comment": "vu"},
        headers=bearer(admin, role="admin"),
    ) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {
            "success": True,
            "approval_id": l3["approval_id"],
            "status": "approved",
            "message": "approved",
        }
    async with http.get(stack.url + "/webhook/wibot/safeguard/history", headers=bearer(tech, "tech")) as r:
        assert [item["approval_id"] for item in (await r.json())["requests"]] == [l3["approval_id"]]


async def test_a_streamed_reply_reaches_the_client_chunk_by_chunk_through_nginx(stack, http, factory, db):
    """With the fake model emitting a chunk every 100 ms: the first chunk is there in < 300 ms, the whole reply
    takes > 1 s (nginx buffering would deliver everything at the end)."""
    user_id = await factory.user("stream")
    payload = {"conversation_id": str(uuid.uuid4()), "message": "Explique la procédure de sauvegarde"}
    headers = {**bearer(user_id), "Accept": "text/event-stream", "Origin": ORIGIN}
    started = time.monotonic()
    arrivals: list[tuple[float, bytes]] = []
    async with http.post(stack.url + CHAT_PATH, json=payload, headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        async for piece in r.content.iter_any():
            arrivals.append((time.monotonic() - started, piece))
    body = b"".join(piece for _, piece in arrivals).decode()
    first_delta = next(at for at, piece in arrivals if b"event: delta" in piece)
    assert first_delta < 0.3, arrivals[:3]
    assert arrivals[-1][0] > 1.0
    assert len([1 for _, piece in arrivals if b"event: delta" in piece]) >= 8  # many reads, not one
    done = json.loads(body.split("event: done\ndata: ")[1].split("\n")[0])
    deltas = [json.loads(line[6:])["content"] for line in body.splitlines() if line.startswith('data: {"content')]
    assert done["response"] == "".join(deltas) and done["success"] is True
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_ndjson_and_early_refusals_through_nginx(stack, http, factory):
    user_id = await factory.user("ndjson")
    payload = {"conversation_id": str(uuid.uuid4()), "message": "Bonjour"}
    async with http.post(
        stack.url + CHAT_PATH, json=payload, headers={**bearer(user_id), "Accept": "application/x-ndjson"}
    ) as r:
        lines = [json.loads(line) for line in (await r.text()).splitlines() if line.strip()]
    assert lines[0]["type"] == "begin" and lines[-1]["type"] == "end"
    async with http.post(stack.url + CHAT_PATH, json=payload, headers={"Accept": "text/event-stream"}) as r:
        assert (r.status, r.content_type) == (401, "application/json")


async def test_a_client_leaving_mid_stream_through_nginx_keeps_the_partial_exchange(stack, http, factory, db):
    """The real service process (no handler cancellation) notices the closed connection, drops the model call,
    saves what was produced and charges it."""
    user_id = await factory.user("leaver")
    message = "Une longue explication de la procédure de restauration des sauvegardes du site, s'il vous plaît"
    payload = {"conversation_id": str(uuid.uuid4()), "message": message}
    response = await http.post(
        stack.url + CHAT_PATH, json=payload, headers={**bearer(user_id), "Accept": "text/event-stream"}
    )
    received = b""
    while received.count(b"event: delta") < 2:
        received += await response.content.readany()
    response.connection.transport.abort()
    response.release()

    async def saved() -> list:
        while len(rows := await db.fetch("SELECT role, content, tokens FROM messages ORDER BY message_id")) < 2:
            await asyncio.sleep(0.1)
        return rows

    rows = await asyncio.wait_for(saved(), timeout=15)
    partial = rows[1]["content"]
    assert rows[0]["content"] == payload["message"]
    whole = f"{REPLY_PREFIX} Vous avez écrit : {message[:80]}"  # ~22 chunks, 2.2 s at 100 ms each
    assert partial and whole.startswith(partial) and len(partial) < len(whole)
    used = await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id)
    assert used == rows[0]["tokens"] + rows[1]["tokens"] > 0


BROWSER_PAGE = """<!doctype html><meta charset="utf-8"><pre id="reply"></pre><script>
(async () => {
  const started = performance.now();
  const response = await fetch(%(url)s, {
    method: "POST",
    headers: {"Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": %(auth)s},
    body: JSON.stringify({conversation_id: %(cid)s, message: "Bonjour depuis le navigateur"}),
  });
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let raw = "", growth = [];
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    raw += decoder.decode(value, {stream: true});
    const shown = [...raw.matchAll(/^event: delta\\ndata: (.*)$/gm)].map(m => JSON.parse(m[1]).content).join("");
    document.getElementById("reply").textContent = shown;
    growth.push([Math.round(performance.now() - started), shown.length]);
  }
  const done = JSON.parse(raw.split("event: done\\ndata: ")[1].split("\\n")[0]);
  window.__result = {status: response.status, growth, shown: document.getElementById("reply").textContent, done};
})().catch(error => { window.__result = {error: String(error)}; });
</script>"""


async def test_a_browser_shows_the_reply_growing_chunk_by_chunk(stack, http, factory, aiohttp_server):
    """Headless Chromium, `fetch` + `ReadableStream`, from a page of another origin (CORS) through nginx."""
    from aiohttp import web

    user_id = await factory.user("browser")
    page = BROWSER_PAGE % {
        "url": json.dumps(stack.url + CHAT_PATH),
        "auth": json.dumps(bearer(user_id)["Authorization"]),
        "cid": json.dumps(str(uuid.uuid4())),
    }

    async def serve_page(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve_page)
    server = await aiohttp_server(app)
    result = await run_in_chromium(http, str(server.make_url("/")), "window.__result")
    assert "error" not in result, result
    assert result["status"] == 200
    lengths = [length for _, length in result["growth"]]
    assert len([1 for before, after in itertools.pairwise(lengths) if after > before]) >= 5  # grew step by step
    assert result["growth"][-1][0] - next(t for t, length in result["growth"] if length) > 500  # over time
    assert result["shown"] == result["done"]["response"] and result["done"]["success"] is True


async def run_in_chromium(http, url: str, expression: str, within_s: float = 30) -> dict:
    """Open `url` in headless Chromium and poll `expression` (over the DevTools protocol) until it is set."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required (apt-get install chromium)"
    (port,) = free_ports(1)
    profile = tempfile.mkdtemp()
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--remote-debugging-port={port}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(within_s):
            targets: list = []
            while not targets:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = [t for t in await r.json() if t.get("type") == "page"]
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10_000))

                async def call(method: str, **params: object) -> dict:
                    number = next(ids)
                    await ws.send_json({"id": number, "method": method, "params": params})
                    while (message := await ws.receive_json()).get("id") != number:
                        pass
                    return message["result"]

                await call("Page.navigate", url=url)
                while True:
                    answer = await call(
                        "Runtime.evaluate", expression=f"JSON.stringify({expression} || null)", returnByValue=True
                    )
                    value = json.loads(answer["result"].get("value") or "null")
                    if value is not None:
                        return value
                    await asyncio.sleep(0.2)
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def test_the_knowledge_base_is_ingested_and_used_through_nginx(stack, http, factory, db):
    admin = await factory.user("chef", role="admin")
    user = await factory.user("khora")
    async with http.post(
        stack.url + "/webhook/wibot/rag/ingest", json={"path": "procedures"}, headers=bearer(user, "khora")
    ) as r:
        assert r.status == 403
    async with http.post(
        stack.url + "/webhook/wibot/rag/ingest", json={"path": "procedures"}, headers=bearer(admin, "chef", "admin")
    ) as r:
        body = await r.json()
        assert r.status == 200, body
    assert (body["stats"]["files"], body["stats"]["added"], body["stats"]["failed"]) == (5, 5, [])
    # Both chat processes hear of it (NOTIFY): wait for each one's index to hold every chunk.
    chunks = await db.fetchval("SELECT count(*) FROM kb_chunks")
    async with asyncio.timeout(10):
        for port in stack.chat_ports:
            while f"wibot_kb_index_chunks {float(chunks)}" not in await metrics_of(http, port):
                await asyncio.sleep(0.05)
    payload = {"conversation_id": str(uuid.uuid4()), "message": "Sur quel port se connecte le VPN FortiClient ?"}
    async with http.post(stack.url + CHAT_PATH, json=payload, headers=bearer(user, "khora")) as r:
        assert r.status == 200, await r.text()
    assert await db.fetchval("SELECT rag_used FROM messages WHERE role = 'user'") is True
    logs = stack.log.read_text(encoding="utf-8")
    assert '"event": "kb_retrieved"' in logs and "vpn-forticlient.md" in logs


async def metrics_of(http, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()
