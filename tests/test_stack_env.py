"""One reading of `.env` (#44): what `make run` starts sees exactly the values the services read from the same file.

Before, make run handed `.env` to honcho, whose own parser stripped the double quotes of the README's JSON examples
(every service then exited with SettingsError), cut a password at its '#', and stopped at an unbalanced quote. Now
devtools/stack.py reads it once with python-dotenv (the services' reader, through pydantic-settings) and the
supervisor (devtools/supervisor.py) hands those values to each process in its environment. These tests run a
process under the real supervisor and compare what it sees with what the services read from the file: for the
spellings operators write (JSON, '#', quotes, spaces, `export`), and for generated values.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.stack import stack_environment
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import json, os, sys; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(sys.argv[1])}))"
SETTINGS_PROBE = (
    "import json; from shared.settings import Settings; s = Settings();"
    " print(json.dumps({'groups': s.ldap_admin_groups, 'levels': s.ldap_level_groups,"
    " 'password': s.postgres_password.get_secret_value(), 'secret': s.jwt_secret.get_secret_value(),"
    " 'kb': str(s.kb_root)}))"
)


def under_supervisor(folder: Path, command: list[str], env: dict[str, str]) -> str:
    """The output line of `command`, run as a program of the stack's supervisor (then stopped)."""
    import shlex

    (folder / "Procfile").write_text("probe: " + shlex.join(command) + "\n")
    done = subprocess.Popen(
        [sys.executable, "-m", "devtools.supervisor", str(folder / "Procfile")], cwd=folder, env=env,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert done.stdout is not None
    printed = []
    for line in done.stdout:
        printed.append(line)
        if "service_restarting" in line:  # the probe failed: say how
            done.terminate()
            done.communicate(timeout=20)
            raise AssertionError("".join(printed)[-3000:])
        _, sep, payload = line.partition("| ")
        if sep and line.split()[1] == "probe" and payload.startswith("{"):
            done.terminate()
            done.communicate(timeout=20)
            return payload
    done.wait(timeout=20)
    raise AssertionError("the probe printed nothing")


PREFIXES = ("WIBOT_PROBE_", "LDAP_", "POSTGRES_", "KB_", "JWT_")


def environment_from(folder: Path) -> dict[str, str]:
    """devtools.stack's reading of folder/.env (with none of the names it sets in this process's environment), for a
    process started in a folder with no .env of its own: what it sees is only what it was handed."""
    cleared = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith(PREFIXES)}
    try:
        return {**stack_environment(folder), "PYTHONPATH": str(ROOT)}
    finally:
        os.environ.update(cleared)


DOTENV = r"""# what operators write, README's examples included
LDAP_ADMIN_GROUPS=["cn=wibot-admins,ou=groups,dc=widip,dc=fr"]
LDAP_LEVEL_GROUPS='{"N2": "cn=wibot-n2,ou=groups,dc=widip,dc=fr", "N4": "cn=wibot-n4,ou=groups,dc=widip,dc=fr"}'
POSTGRES_PASSWORD="p#ss w0rd \"quoted\" and 'single'"   # a comment after the value
export JWT_SECRET=Zq8vR2mL5pWn0sKd7fJ3hYt6uBx1cEa9#not-a-comment-without-a-space
KB_ROOT = /srv/documents/procédures internes
"""


def test_the_services_under_make_run_read_what_they_read_from_the_file(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / ".env").write_text(DOTENV, encoding="utf-8")
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    env = environment_from(tmp_path / "site")
    seen = json.loads(under_supervisor(probe_dir, [sys.executable, "-c", SETTINGS_PROBE], env))
    cleared = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith(PREFIXES)}
    try:
        direct = Settings(_env_file=tmp_path / "site" / ".env")  # type: ignore[call-arg]
    finally:
        os.environ.update(cleared)
    assert seen == {
        "groups": direct.ldap_admin_groups,
        "levels": direct.ldap_level_groups,
        "password": direct.postgres_password.get_secret_value(),
        "secret": direct.jwt_secret.get_secret_value(),
        "kb": str(direct.kb_root),
    }
    # And those are the values written, not something a parser made of them.
    assert seen["groups"] == ["cn=wibot-admins,ou=groups,dc=widip,dc=fr"]
    assert seen["password"] == "p#ss w0rd \"quoted\" and 'single'"
    assert seen["secret"] == "Zq8vR2mL5pWn0sKd7fJ3hYt6uBx1cEa9#not-a-comment-without-a-space"
    assert seen["kb"] == "/srv/documents/procédures internes"


# Values as typed in a .env line: anything printable but the line's end, written double-quoted with the two
# escapes python-dotenv decodes there (backslash, double quote).
VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\0"), max_size=40
)


def quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(VALUES, min_size=1, max_size=12), spelling=st.sampled_from(["quoted", "single", "export"]))
def test_generated_values_reach_the_processes_as_the_services_read_them(tmp_path_factory, values, spelling):
    folder = tmp_path_factory.mktemp("env")
    if spelling == "single":  # single quotes: taken literally, so no value may hold one
        values = [value.replace("'", "") for value in values]
    lines = []
    for index, value in enumerate(values):
        written = f"'{value}'" if spelling == "single" else quoted(value)
        lines.append(f"{'export ' if spelling == 'export' else ''}WIBOT_PROBE_{index}={written}")
    (folder / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = {k: v for k, v in dotenv_values(folder / ".env").items() if v is not None}  # the services' reading
    for index, value in enumerate(values):  # the generator writes what it means (but ${…}, which both expand)
        if spelling != "single" and "$" not in value:
            assert expected[f"WIBOT_PROBE_{index}"] == value
    probe_dir = folder / "probe"
    probe_dir.mkdir()
    seen = json.loads(
        under_supervisor(probe_dir, [sys.executable, "-c", PROBE, "WIBOT_PROBE_"], environment_from(folder))
    )
    assert seen == expected


@pytest.mark.parametrize("exit_code", [3, -9])
async def test_the_supervisor_restarts_a_program_that_exits_and_stops_all_on_sigterm(tmp_path, exit_code):
    from devtools.supervisor import Program, Supervisor

    crash = "import os, signal, sys; sys.exit(3) if sys.argv[1] == '3' else os.kill(os.getpid(), signal.SIGKILL)"
    lines: list[str] = []

    class Lines:
        def write(self, text: str) -> None:
            lines.extend(part for part in text.splitlines() if part)

        def flush(self) -> None:
            pass

    steady = Program("steady", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
    crashing = Program("crashing", [sys.executable, "-c", crash, str(exit_code)])
    supervisor = Supervisor([steady, crashing], out=Lines(), first_backoff_s=0.05)
    running = asyncio.ensure_future(supervisor.run())
    try:
        async with asyncio.timeout(20):
            while sum("service_restarting" in line for line in lines) < 3:
                await asyncio.sleep(0.05)
        assert steady.process is not None and steady.process.returncode is None  # the others keep running
        restarts = [json.loads(line.split("| ", 1)[1]) for line in lines if "service_restarting" in line]
        assert [r["exit_code"] for r in restarts[:3]] == [exit_code] * 3
        assert [r["backoff_s"] for r in restarts[:3]] == [0.05, 0.1, 0.2]  # doubling
        assert all(r["level"] == "error" and r["program"] == "crashing" for r in restarts)
    finally:
        supervisor.stopping.set()  # what SIGINT and SIGTERM do
        assert await asyncio.wait_for(running, 30) == 0
    assert steady.process.returncode is not None  # stopped with the stack
