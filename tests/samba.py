"""A real Active Directory domain controller for the directory login's mapping tests (#29): Debian's Samba
(`samba-tool domain provision` into a folder of its own, then `samba` in the foreground, LDAP service only, on
loopback: 127.0.0.1:389/636, AD's fixed ports). Provisioned and running in about 10 s here.

Users and groups are made with samba-tool, as an AD administrator would: a nested admin group, a level group, a
disabled account. Plain LDAP simple binds are allowed here (`ldap server require strong auth = no`); a site's DC
is reached over ldaps or StartTLS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REALM, DOMAIN = "WIDIP.TEST", "WIDIP"
BASE = "DC=widip,DC=test"
USERS = f"CN=Users,{BASE}"
ADMIN_DN, ADMIN_PASSWORD = f"CN=Administrator,{USERS}", "Adm1n-Passw0rd!"
ADMINS, LEADS, LEVEL_N3 = f"CN=WIBOT-Admins,{USERS}", f"CN=IT-Leads,{USERS}", f"CN=WIBOT-N3,{USERS}"
URL = "ldap://127.0.0.1:389"


@dataclass
class SambaDC:
    folder: Path
    process: subprocess.Popen[bytes]

    def tool(self, *args: str) -> str:
        done = subprocess.run(
            ["samba-tool", *args, "-s", str(self.folder / "etc" / "smb.conf")],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    def show(self, username: str) -> dict[str, str]:
        lines = self.tool("user", "show", username).splitlines()
        return dict(line.split(": ", 1) for line in lines if ": " in line)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_samba_dc() -> SambaDC:
    assert shutil.which("samba-tool") and shutil.which("samba"), (
        "Samba's AD DC is required (apt-get install samba samba-ad-dc samba-ad-provision)"
    )
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 389)) != 0, "port 389 is taken: another directory runs here"
    folder = Path(tempfile.mkdtemp(prefix="wibot-samba-"))
    subprocess.run(
        ["samba-tool", "domain", "provision", f"--targetdir={folder}", f"--realm={REALM}", f"--domain={DOMAIN}",
         "--server-role=dc", "--dns-backend=NONE", f"--adminpass={ADMIN_PASSWORD}",
         "--option=interfaces=lo", "--option=bind interfaces only=yes"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    process = subprocess.Popen(
        ["samba", "-i", "-s", str(folder / "etc" / "smb.conf"), "--option=server services = ldap",
         "--option=ldap server require strong auth = no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    dc = SambaDC(folder, process)
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 389)) == 0:
                break
        assert time.monotonic() < deadline and process.poll() is None, "samba did not start"
        time.sleep(0.2)
    for args in (
        ("user", "create", "alice", "Alice-pw-2026!"),
        ("user", "create", "bob", "Bob-pw-2026!"),
        ("user", "create", "carol", "Carol-pw-2026!"),
        ("group", "add", "WIBOT-Admins"),
        ("group", "add", "IT-Leads"),
        ("group", "add", "WIBOT-N3"),
        ("group", "addmembers", "WIBOT-Admins", "IT-Leads"),  # nested
        ("group", "addmembers", "IT-Leads", "alice"),
        ("group", "addmembers", "WIBOT-N3", "alice,bob"),
        ("user", "disable", "carol"),
    ):
        dc.tool(*args)
    return dc
