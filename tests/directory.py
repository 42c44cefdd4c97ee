"""A real OpenLDAP `slapd` (Debian's package) on loopback with an Active-Directory-like tree, for the directory
login tests (#29) and bench/directory.py.

The tree: users with `sAMAccountName` and `userAccountControl` (AD's attribute names and OIDs, declared by a small
schema of ours, since OpenLDAP has no AD schema), groups `groupOfNames` with `memberOf` kept by the memberof
overlay (as AD keeps it), a group nested in another, a disabled account (userAccountControl bit 2), an entry whose
username needs escaping, two entries sharing a username, and a service account for the searches. Entries are
added online (bonsai, as the root DN) so that the overlay computes `memberOf`; each entry has its `entryUUID`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bonsai

from devtools.stack import free_ports, wait_for_port

BASE = "dc=widip,dc=test"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
ROOT_DN, ROOT_PASSWORD = f"cn=admin,{BASE}", "root-secret-pw"
SERVICE_DN, SERVICE_PASSWORD = f"cn=wibot-search,{BASE}", "service-secret-pw"
ADMINS = f"cn=wibot-admins,{GROUPS}"  # members: the group of IT leads (nested)
LEADS = f"cn=it-leads,{GROUPS}"
LEVEL_GROUPS = {"N2": f"cn=wibot-n2,{GROUPS}", "N4": f"cn=wibot-n4,{GROUPS}"}
OPENLDAP_FILTER = "(&(objectClass=inetOrgPerson)(sAMAccountName={username}))"

SCHEMA = """
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
    EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.99999.30.1 NAME 'wibotTestAccount' SUP top AUXILIARY
    MAY ( sAMAccountName $ userAccountControl ) )
"""

CONFIG = """
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {dir}/wibot-test.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {dir}/slapd.pid
{tls}
database mdb
suffix "{base}"
rootdn "{root_dn}"
rootpw {root_password}
directory {dir}/data
maxsize 104857600
index objectClass,sAMAccountName,member,memberOf eq
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by anonymous auth by self write by * none
access to * by dn.exact="{service_dn}" read by self read by * none
"""

# (sAMAccountName, password, userAccountControl, groups)
PEOPLE_ENTRIES = [
    ("alice", "alice-pw-2026", 512, [LEADS, LEVEL_GROUPS["N4"]]),  # admin through it-leads ⊂ wibot-admins
    ("bob", "bob-pw-2026", 512, [LEVEL_GROUPS["N2"]]),
    ("carol", "carol-pw-2026", 514, [LEVEL_GROUPS["N2"]]),  # disabled (ACCOUNTDISABLE)
    ("dave", "dave-pw-2026", 512, []),
    ("r(d)*\\", "escape-pw-2026", 512, []),  # needs escaping in a filter
]


@dataclass
class Slapd:
    url: str
    port: int
    run_dir: Path
    process: subprocess.Popen[bytes]
    ldaps_url: str | None = None  # with TLS: the same directory over ldaps://
    ca_file: Path | None = None  # the CA its certificate is signed by

    def admin(self) -> bonsai.LDAPConnection:
        client = bonsai.LDAPClient(self.url)
        client.set_credentials("SIMPLE", user=ROOT_DN, password=ROOT_PASSWORD)
        return client.connect()

    def entry(self, conn: bonsai.LDAPConnection, username: str) -> bonsai.LDAPEntry:
        [found] = conn.search(
            BASE, bonsai.LDAPSearchScope.SUBTREE, f"(sAMAccountName={bonsai.escape_filter_exp(username)})"
        )
        return found

    def dn_of(self, username: str) -> str:
        with self.admin() as conn:
            return str(self.entry(conn, username).dn)

    def _change_group(self, group: str, member: str, *, add: bool) -> None:
        with self.admin() as conn:
            [entry] = conn.search(group, bonsai.LDAPSearchScope.BASE)
            if add:
                entry["member"].append(member)
            else:
                entry["member"].remove(member)
            entry.modify()

    def add_to_group(self, group: str, member: str) -> None:
        self._change_group(group, member, add=True)

    def remove_from_group(self, group: str, member: str) -> None:
        self._change_group(group, member, add=False)

    def set_account_control(self, username: str, value: int) -> None:
        with self.admin() as conn:
            entry = self.entry(conn, username)
            entry["userAccountControl"] = value
            entry.modify()

    def rename(self, username: str, new_username: str) -> None:
        with self.admin() as conn:
            entry = self.entry(conn, username)
            entry["sAMAccountName"] = new_username
            entry.modify()
            entry.rename(f"cn={bonsai.escape_attribute_value(new_username)},{PEOPLE}")

    def delete(self, username: str) -> None:
        with self.admin() as conn:
            conn.delete(str(self.entry(conn, username).dn))

    def add_person(self, username: str, password: str, *, ou: str = PEOPLE, control: int = 512) -> str:
        dn = f"cn={bonsai.escape_attribute_value(username)},{ou}"
        entry = bonsai.LDAPEntry(dn)
        entry["objectClass"] = ["inetOrgPerson", "wibotTestAccount"]
        entry["sn"] = username
        entry["sAMAccountName"] = username
        entry["userAccountControl"] = control
        entry["mail"] = f"{username}@widip.test"
        entry["userPassword"] = password
        with self.admin() as conn:
            conn.add(entry)
        return dn

    def pause(self) -> None:
        """The directory stops answering (its process stopped): connections hang, as a slow server's do."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.run_dir, ignore_errors=True)


TLS_CONFIG = """
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
"""


def make_certificates(run_dir: Path) -> None:
    """A CA and the server's certificate for 127.0.0.1 (openssl), as a site's PKI would issue them."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=run_dir, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=WIBOT test CA",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (run_dir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip


def start_slapd(*, tls: bool = False) -> Slapd:
    slapd = shutil.which("slapd") or "/usr/sbin/slapd"
    assert Path(slapd).exists(), "slapd is required (apt-get install slapd ldap-utils)"
    run_dir = Path(tempfile.mkdtemp(prefix="wibot-slapd-"))
    (run_dir / "data").mkdir()
    (run_dir / "wibot-test.schema").write_text(SCHEMA)
    if tls:
        make_certificates(run_dir)
    config = run_dir / "slapd.conf"
    config.write_text(
        CONFIG.format(
            dir=run_dir, base=BASE, root_dn=ROOT_DN, root_password=ROOT_PASSWORD, service_dn=SERVICE_DN,
            tls=TLS_CONFIG.format(dir=run_dir) if tls else "",
        )
    )  # fmt: skip
    port, tls_port = free_ports(2)
    url, ldaps_url = f"ldap://127.0.0.1:{port}", f"ldaps://127.0.0.1:{tls_port}"
    listen = url + "/" + (f" {ldaps_url}/" if tls else "")
    # -d 0: in the foreground (a child we can stop), quiet.
    process = subprocess.Popen(
        [slapd, "-f", str(config), "-h", listen, "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    wait_for_port(port)
    directory = Slapd(url, port, run_dir, process)
    if tls:
        wait_for_port(tls_port)
        directory.ldaps_url, directory.ca_file = ldaps_url, run_dir / "ca.pem"
    _load_tree(directory)
    return directory


def _load_tree(directory: Slapd) -> None:
    with directory.admin() as conn:
        for dn, attributes in [
            (BASE, {"objectClass": ["dcObject", "organization"], "dc": "widip", "o": "WIDIP"}),
            (PEOPLE, {"objectClass": ["organizationalUnit"], "ou": "people"}),
            (f"ou=elsewhere,{BASE}", {"objectClass": ["organizationalUnit"], "ou": "elsewhere"}),
            (GROUPS, {"objectClass": ["organizationalUnit"], "ou": "groups"}),
            (SERVICE_DN, {"objectClass": ["inetOrgPerson"], "sn": "wibot", "cn": "wibot-search",
                          "userPassword": SERVICE_PASSWORD}),
        ]:  # fmt: skip
            conn.add(_entry(dn, attributes))
    members: dict[str, list[str]] = {}
    for username, password, control, groups in PEOPLE_ENTRIES:
        dn = directory.add_person(username, password, control=control)
        for group in groups:
            members.setdefault(group, []).append(dn)
    # Two entries answer to "twin": a login with it is ambiguous.
    directory.add_person("twin", "twin-pw-2026")
    directory.add_person("twin", "twin-pw-2026", ou=f"ou=elsewhere,{BASE}")
    members.setdefault(ADMINS, []).append(LEADS)  # it-leads is nested in wibot-admins
    with directory.admin() as conn:
        for group in (LEADS, LEVEL_GROUPS["N2"], LEVEL_GROUPS["N4"], ADMINS):  # nested group first
            cn = group.split(",")[0][3:]
            # groupOfNames needs a member: the service account stands in for an empty group
            attributes = {"objectClass": ["groupOfNames"], "cn": cn, "member": members.get(group) or [SERVICE_DN]}
            conn.add(_entry(group, attributes))


def _entry(dn: str, attributes: Mapping[str, object]) -> bonsai.LDAPEntry:
    entry = bonsai.LDAPEntry(dn)
    for name, value in attributes.items():
        entry[name] = value
    return entry


def wait_until_gone(directory: Slapd, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while directory.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
