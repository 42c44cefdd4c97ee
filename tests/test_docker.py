"""The image, built and run by the suite (#33): the real Dockerfile, against a base made here from Debian's packages
(no image registry answers on this machine: debootstrap, then `docker import`), its contents checked, its
services answering from it. A Docker daemon is started when none runs (as root, Debian's docker.io, which
.ci/run installs); where none can run the module is skipped with the reason said, never silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devtools.stack import free_ports, wait_for_port
from tests.conftest import TEST_SECRET
from tests.documents import b64, text_pdf

ROOT = Path(__file__).resolve().parent.parent
BASE = "wibot-base:bookworm"
IMAGE = "wibot-backend:suite"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


# On a fresh machine the module's first test also makes the base image (debootstrap) and builds the images:
# minutes, not the suite's 60 s a test. Each step has its own subprocess timeout.
pytestmark = pytest.mark.timeout(1500)


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check, **kwargs)


def daemon_answers() -> bool:
    return shutil.which("docker") is not None and docker("info", check=False, timeout=20).returncode == 0


@pytest.fixture(scope="module")
def daemon() -> Iterator[None]:
    started = None
    if not daemon_answers():
        if os.geteuid() != 0 or not shutil.which("dockerd"):
            pytest.skip("NO DOCKER DAEMON CAN RUN HERE (needs root and Debian's docker.io): the image is not tested")
        with open(Path(tempfile.gettempdir()) / "wibot-dockerd.log", "w") as log:  # the child keeps its own copy
            started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not daemon_answers():
            assert time.monotonic() < deadline and started.poll() is None, "dockerd did not start"
            time.sleep(0.5)
    yield
    if started is not None:
        started.terminate()
        started.wait(timeout=30)


@pytest.fixture(scope="module")
def base_image(daemon: None) -> str:
    """bookworm's python3 from Debian's packages, with this machine's CA bundle (pip and apt reach their registries
    through its proxy); made once per machine (~2 min), then found by name."""
    if docker("image", "inspect", BASE, check=False).returncode == 0:
        return BASE
    assert shutil.which("debootstrap"), "debootstrap is required (apt-get install debootstrap)"
    with tempfile.TemporaryDirectory(prefix="wibot-base-") as folder:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python-is-python3,ca-certificates",
             "bookworm", folder, "http://deb.debian.org/debian"],
            capture_output=True, timeout=600, check=True,
        )  # fmt: skip
        shutil.copy(CA_BUNDLE, Path(folder) / "etc/ssl/certs/ca-certificates.crt")
        with subprocess.Popen(["tar", "-C", folder, "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                ["docker", "import", "-", BASE], stdin=tar.stdout, capture_output=True, timeout=300, check=True
            )
        assert tar.returncode == 0
    return BASE


@pytest.fixture(scope="module")
def image(base_image: str) -> str:
    """The real Dockerfile; only its base is ours (the build argument whose default is the official image)."""
    built = docker(
        "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}", "-t", IMAGE, str(ROOT),
        timeout=1200, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


def run_in(image: str, script: str, *, network: str = "none") -> str:
    done = docker("run", "--rm", "--network", network, image, "sh", "-c", script, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_image_holds_the_services_only_run_by_an_unprivileged_user(image):
    out = run_in(
        image,
        "ls /app; id -u; command -v gcc cc || echo no-compiler; test -w /app/services && echo writable"
        " || echo read-only; test -w /tmp && echo tmp-writable; ls /venv/bin/pip >/dev/null && echo has-venv",
    ).split()
    assert out[:4] == ["db", "docs", "services", "shared"]  # no tests, devtools, bench
    assert out[4:] == ["10001", "no-compiler", "read-only", "tmp-writable", "has-venv"]


def test_the_unprivileged_user_runs_the_extraction_workers(image):
    """The worker processes (forkserver) start as user 10001 and read a PDF: what an attachment needs."""
    pdf = b64(text_pdf(["Bonjour depuis le conteneur"]))
    script = (
        "import asyncio, os\n"
        "from services.chat.attachments import Extractor\n"
        "async def main():\n"
        "    extractor = Extractor(workers=1, timeout_s=30)\n"
        f"    got = await extractor.run('{pdf}', max_bytes=10_000_000, max_pages=10)\n"
        "    extractor.close()\n"
        "    print(os.getuid(), got.kind, got.text)\n"
        "asyncio.run(main())\n"
    )
    out = run_in(image, f'python -c "{script}"')
    assert out.startswith("10001 pdf") and "Bonjour depuis le conteneur" in out


@contextlib.contextmanager
def container(image: str, *args: str, env: dict[str, str]) -> Iterator[str]:
    flags = [item for name, value in env.items() for item in ("-e", f"{name}={value}")]
    started = docker("run", "-d", "--network", "host", *flags, image, *args)
    container_id = started.stdout.strip()
    try:
        yield container_id
    finally:
        logs = docker("logs", container_id, check=False)
        docker("rm", "-f", container_id, check=False)
        print(logs.stdout[-2000:], logs.stderr[-2000:])


def service_command(service: str, port: int) -> list[str]:
    return ["python", "-m", f"services.{service}", "--host", "127.0.0.1", "--port", str(port)]


async def test_the_services_answer_from_the_image(image, database_url, factory, fake_mistral):
    await factory.user("khora", "test123")
    auth_port, chat_port = free_ports(2)
    env = {"DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, "MISTRAL_API_KEY": "suite",
           "MISTRAL_SERVER_URL": fake_mistral.url}  # fmt: skip
    with (
        container(
            image, "python", "-m", "services.auth", "--host", "127.0.0.1", "--port", str(auth_port), env=env
        ) as auth,
        container(
            image, "python", "-m", "services.chat", "--host", "127.0.0.1", "--port", str(chat_port), env=env
        ) as chat_id,
    ):
        wait_for_port(auth_port, 60)
        wait_for_port(chat_port, 60)
        for container_id in (auth, chat_id):  # the image's HEALTHCHECK probes the port of the service it runs
            assert docker("exec", container_id, "python", "-m", "shared.probe", check=False).returncode == 0
        async with aiohttp.ClientSession() as http:
            login = {"username": "khora", "password": "test123"}
            async with http.post(f"http://127.0.0.1:{auth_port}/webhook/auth/login", json=login) as r:
                assert r.status == 200, await r.text()
                token = (await r.json())["token"]
            chat = {"conversation_id": "550e8400-e29b-41d4-a716-446655440000", "message": "Bonjour",
                    "files": [{"name": "note.pdf", "content": b64(text_pdf(["Relevé du conteneur"]))}]}  # fmt: skip
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"http://127.0.0.1:{chat_port}/webhook/wibot/chat", json=chat, headers=headers) as r:
                assert r.status == 200, await r.text()
        assert "Relevé du conteneur" in fake_mistral.received[-1]["messages"][-1]["content"]
