"""The compose stack, up (#33): the project's docker-compose.yml with deploy/local/compose.yml (images from Debian's
packages on a base made here, host networking, two chat replicas), the migrate job first, every service healthy,
nginx on 5678; then the spec's curl tests, a streamed chat with an attachment, an ingestion of the knowledge
base's mounted folder, and the two replicas agreeing (a logout, the index)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import yaml

from devtools.stack import port_open
from tests.documents import b64, text_pdf
from tests.test_docker import base_image, daemon  # noqa: F401 - the daemon and the base image of test_docker

ROOT = Path(__file__).resolve().parent.parent
# On a fresh machine the module's first test also makes the base image (debootstrap) and builds the images:
# minutes, not the suite's 60 s a test. Each step has its own subprocess timeout.
pytestmark = pytest.mark.timeout(1500)

PROJECT = "wibotsuite"
GATEWAY = "http://127.0.0.1:5678"
PASSWORD = "compose-db-pw-2026"
DATABASE = f"postgresql://widip:{PASSWORD}@127.0.0.1:25432/wibot"
FAKE_MISTRAL_PORT = 8097
SERVICES = ("postgres", "auth", "chat", "chat-2", "conversations", "nginx")


def compose(*args: str, env: dict[str, str], timeout: float = 300, stdin: str | None = None) -> str:
    """docker-compose on the merged configuration (merged_configuration)."""
    command = ["docker-compose", "-p", PROJECT, "-f", env["WIBOT_COMPOSE_FILE"], *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, input=stdin)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def merged_configuration(env: dict[str, str], target: Path) -> Path:
    """The project's docker-compose.yml with deploy/local/compose.yml, as `docker-compose config` merges them, less
    the published ports of host-networked services: Compose v1 (Debian's) cannot drop a key in an override, and
    refuses ports with host networking (Compose v2 would take `ports: !reset []` in the override)."""
    merged = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "deploy/local/compose.yml", "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    configuration = yaml.safe_load(merged)
    for service in configuration["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    target.write_text(yaml.safe_dump(configuration, sort_keys=False))
    return target


STATUS_FORMAT = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"


def health(container: str) -> str:
    done = subprocess.run(
        ["docker", "inspect", "--format", STATUS_FORMAT, container],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture(scope="module")
def stack(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:  # noqa: F811
    for port in (5678, 8001, 8002, 8003, 8012, 25432, FAKE_MISTRAL_PORT):
        assert not port_open("127.0.0.1", port), f"port {port} is taken: stop `make run` (or what holds it)"
    env_file = tmp_path_factory.mktemp("compose") / "compose.env"
    env_file.write_text(
        "JWT_SECRET=compose-suite-secret-0d41c2a95f7e4b3c9a8d6e1f\n"
        f"MISTRAL_API_KEY=suite\nMISTRAL_SERVER_URL=http://127.0.0.1:{FAKE_MISTRAL_PORT}\n"
        "CHAT_REQUESTS_PER_MINUTE=1000\nCHAT_BURST=0\nKB_SYNC_EVERY_S=0\nBCRYPT_ROUNDS=4\n"
    )
    env = {
        **os.environ,
        "BASE_IMAGE": base_image,
        "WIBOT_ENV_FILE": str(env_file),
        "POSTGRES_PASSWORD": PASSWORD,
        "KB_ROOT_DIR": str(ROOT / "devtools" / "kb_corpus"),
    }
    env["WIBOT_COMPOSE_FILE"] = str(merged_configuration(env, env_file.parent / "compose.yml"))
    fake = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_mistral", "--port", str(FAKE_MISTRAL_PORT)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        compose("up", "-d", "--build", env=env, timeout=1200)
        deadline = time.monotonic() + 240
        while any(health(f"{PROJECT}_{service}_1") != "healthy" for service in SERVICES):
            assert time.monotonic() < deadline, {s: health(f"{PROJECT}_{s}_1") for s in SERVICES}
            time.sleep(1)
        yield env
    finally:
        project = ["docker-compose", "-p", PROJECT, "-f", env["WIBOT_COMPOSE_FILE"]]
        logs = subprocess.run([*project, "logs", "--tail", "30"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        print(logs.stdout[-6000:])
        subprocess.run([*project, "down", "-v", "--timeout", "10"], cwd=ROOT, env=env, capture_output=True,
                       timeout=300, check=False)  # fmt: skip
        fake.terminate()
        fake.wait(timeout=10)


def test_the_migrate_job_ran_first_and_every_service_is_healthy(stack):
    state = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{PROJECT}_migrate_1"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert state == ["exited", "0"]
    # No pgvector in the local image (bookworm has none recent enough for halfvec): the path is said, not hidden.
    said = compose("logs", "--no-color", "migrate", env=stack)
    assert "knowledge-base vectors: in process (this server has no pgvector extension)" in said
    for port in (8002, 8012):
        ready = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/readyz"], capture_output=True, text=True)
        assert '"knowledge_vectors":"in_process"' in ready.stdout.replace(" ", ""), ready.stdout
    assert all(health(f"{PROJECT}_{service}_1") == "healthy" for service in SERVICES)


def test_the_spec_curl_tests_pass_through_the_stacks_gateway(stack):
    compose("exec", "-T", "auth", "python", "-m", "services.auth", "users", "create", "khora", "--role", "admin",
            env=stack, stdin="test123\n")  # fmt: skip
    result = subprocess.run(
        ["bash", str(ROOT / "tests/e2e/spec_curl_tests.sh")],
        env={**os.environ, "BASE_URL": GATEWAY, "DATABASE_URL": DATABASE},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all spec curl tests passed" in result.stdout


async def login(http: aiohttp.ClientSession, username: str, password: str) -> dict[str, str]:
    async with http.post(f"{GATEWAY}/webhook/auth/login", json={"username": username, "password": password}) as r:
        assert r.status == 200, await r.text()
        return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def test_a_streamed_chat_with_an_attachment_and_an_ingestion_of_the_mounted_folder(stack):
    compose("exec", "-T", "auth", "python", "-m", "services.auth", "users", "create", "chef", "--role", "admin",
            "--if-missing", env=stack, stdin="chef-pw-2026\n")  # fmt: skip
    async with aiohttp.ClientSession() as http:
        headers = await login(http, "chef", "chef-pw-2026")
        body = {"conversation_id": str(uuid.uuid4()), "message": "Lis ceci", "stream": True,
                "files": [{"name": "note.pdf", "content": b64(text_pdf(["Relevé de la baie"]))}]}  # fmt: skip
        async with http.post(f"{GATEWAY}/webhook/wibot/chat", json=body, headers=headers) as r:
            text = await r.text()
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert "event: done" in text and "Relevé de la baie" in text
        async with http.post(f"{GATEWAY}/webhook/wibot/rag/ingest", json={}, headers=headers) as r:
            stats = (await r.json())["stats"]
        assert r.status == 200 and stats["files"] == stats["added"] == 11  # the demo corpus, mounted at /kb
        # Each chat replica asked directly: both find the passage (each process follows the index).
        for port in (8002, 8012):
            question = {"conversation_id": str(uuid.uuid4()), "message": "J'ai perdu mon FortiToken pour le VPN"}
            async with http.post(f"http://127.0.0.1:{port}/webhook/wibot/chat", json=question, headers=headers) as r:
                assert r.status == 200, await r.text()
    db = await asyncpg.connect(DATABASE)
    try:
        used = await db.fetch("SELECT rag_used FROM messages WHERE role = 'user' AND content LIKE '%FortiToken%'")
        assert [row["rag_used"] for row in used] == [True, True]
    finally:
        await db.close()


async def test_a_logout_on_one_replica_is_refused_on_the_other(stack):
    async with aiohttp.ClientSession() as http:
        headers = await login(http, "chef", "chef-pw-2026")
        async with http.post(f"{GATEWAY}/webhook/auth/logout", headers=headers) as r:
            assert r.status == 200
        body = {"conversation_id": str(uuid.uuid4()), "message": "Encore là ?"}
        for port in (8002, 8012):
            async with asyncio.timeout(5):
                while True:  # each replica hears of the revocation within a second (LISTEN/NOTIFY)
                    async with http.post(
                        f"http://127.0.0.1:{port}/webhook/wibot/chat", json=body, headers=headers
                    ) as r:
                        if r.status == 401:
                            break
                    await asyncio.sleep(0.1)


async def test_one_chat_replica_killed_the_gateway_keeps_serving_chats_and_docker_brings_it_back(stack):
    """#44: a replica that crashes (its process killed, as the OOM killer does): nginx sends the chats to the other
    replica, and the restart policy (unless-stopped) starts it again. A chat sent on a connection nginx kept alive
    to the dead replica is answered 502 in the envelope, not replayed (a chat is not idempotent)."""
    container = f"{PROJECT}_chat-2_1"

    def inspect(field: str) -> str:
        command = ["docker", "inspect", "--format", "{{" + field + "}}", container]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    os.kill(int(await asyncio.to_thread(inspect, ".State.Pid")), 9)
    statuses = []
    async with aiohttp.ClientSession() as http:
        headers = await login(http, "chef", "chef-pw-2026")
        for _ in range(12):  # within the user's quota (the fake model's replies cost ~500 tokens each)
            body = {"conversation_id": str(uuid.uuid4()), "message": "Toujours là ?"}
            async with http.post(f"{GATEWAY}/webhook/wibot/chat", json=body, headers=headers) as r:
                statuses.append(r.status)
                if r.status != 200:
                    assert (await r.json())["success"] is False
    lost = statuses.index(200) if 200 in statuses else len(statuses)
    assert lost <= 2 and statuses[lost:] == [200] * (len(statuses) - lost), statuses
    deadline = time.monotonic() + 120
    while await asyncio.to_thread(health, container) != "healthy":  # restarted by Docker, then healthy again
        assert time.monotonic() < deadline, health(container)
        await asyncio.sleep(1)
    assert int(await asyncio.to_thread(inspect, ".RestartCount")) >= 1
