"""`make run`'s first step: what this machine lacks, installed when it can be, else named in one line.

Standard library only: it runs before the virtual environment exists. Needed: nginx, Python's venv module,
PostgreSQL (a server answering where the settings point, or its binaries for the private cluster that
`make run` starts otherwise), and OpenLDAP's headers (the directory login's client is built against them). As
root with apt-get (a fresh Debian machine, CI), missing packages are installed; otherwise nothing is done and one
line lists every missing piece with the command that installs it.

    python3 -m devtools.prerequisites      exit 0 when everything is there (after installing it), 1 otherwise
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from urllib.parse import urlsplit


def nginx_found() -> bool:
    return shutil.which("nginx") is not None


def venv_found() -> bool:
    try:
        import ensurepip  # noqa: F401 - Debian ships it apart (python3-venv)
    except ImportError:
        return False
    return True


def database_address() -> tuple[str, int]:
    url = os.environ.get("DATABASE_URL")
    if url:
        parts = urlsplit(url)
        return parts.hostname or "127.0.0.1", parts.port or 5432
    return os.environ.get("POSTGRES_HOST", "127.0.0.1"), int(os.environ.get("POSTGRES_PORT", "5432"))


def postgres_found() -> bool:
    host, port = database_address()
    with socket.socket() as sock:
        sock.settimeout(1.0)
        if sock.connect_ex((host, port)) == 0:
            return True
    # No server: make run starts a private cluster, which needs PostgreSQL's own binaries.
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or shutil.which("initdb") is not None


def ldap_headers_found() -> bool:
    """bonsai, the directory login's LDAP client, is built by `make install` against OpenLDAP's libldap."""
    return os.path.exists("/usr/include/ldap.h") and os.path.exists("/usr/include/sasl/sasl.h")


# (what, is it there, Debian packages)
CHECKS = [
    ("nginx", nginx_found, "nginx-light"),
    ("Python venv", venv_found, "python3-venv"),
    ("PostgreSQL", postgres_found, "postgresql"),
    ("OpenLDAP headers", ldap_headers_found, "libldap2-dev libsasl2-dev"),
]


def missing() -> list[tuple[str, str]]:
    return [(name, package) for name, found, package in CHECKS if not found()]


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install(packages: list[str]) -> bool:
    print(f"Installing {' '.join(packages)} (apt-get)...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]]
    return all(subprocess.run(step, env=env, check=False).returncode == 0 for step in steps)


def main() -> int:
    lacking = missing()
    if lacking and can_install() and install([package for _, packages in lacking for package in packages.split()]):
        lacking = missing()
    if not lacking:
        return 0
    names = ", ".join(name for name, _ in lacking)
    packages = " ".join(package for _, package in lacking)
    print(f"make run cannot start: missing {names}. Install: sudo apt-get install {packages}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
