"""`make run` on a machine that lacks something: it stops before doing anything, with one line naming every
missing piece and the command that installs it (devtools/prerequisites.py, standard library only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check(path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.prerequisites"],
        cwd=ROOT,
        env={"PATH": path, "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nginx_hidden_from_path_is_named_in_one_line_with_its_install_command(tmp_path):
    # A PATH with neither nginx nor apt-get: nothing can be installed, nothing is done.
    result = check(str(tmp_path), POSTGRES_PORT="5432")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == ["make run cannot start: missing nginx. Install: sudo apt-get install nginx-light"], result.stderr
    assert result.stdout == ""  # no install attempted
    assert not (tmp_path / ".env").exists()


def test_every_missing_piece_is_listed_at_once(tmp_path):
    """No PostgreSQL answering where the settings point and no binaries on this PATH either... unless the
    machine has them under /usr/lib/postgresql, as Debian installs them (then only nginx is missing)."""
    result = check(str(tmp_path), DATABASE_URL="postgresql://postgres@127.0.0.1:9/wibot")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("make run cannot start: missing nginx")
    has_binaries = any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert ("PostgreSQL" in line) is not has_binaries
    assert ("postgresql" in line.split("Install:")[1]) is not has_binaries


def test_a_complete_machine_passes_silently():
    result = check(os.environ["PATH"] + ":/usr/sbin:/sbin")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
