"""The LDAP / Active Directory client (bonsai: libldap under native asyncio): search the user with the service
account, then bind as the DN found with the user's password; read their groups (nested ones followed).

At most LDAP_POOL_SIZE operations run at once per process, each on one of as many service connections kept open;
a few callers may wait for one, the rest are refused at once (503), and every call is bounded by LDAP_TIMEOUT_S.
One client address holds at most half of the admitted operations (429 beyond): a flood of logins from one place
cannot fill the admission that everyone's logins share, and a site's staff behind one NAT address still have
half of it (18 logins in progress at once by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import bonsai
from bonsai.asyncio import AIOLDAPConnection

from services.auth.errors import DirectoryBusy, DirectoryUnavailable
from shared import Settings, get_logger
from shared.metrics import DIRECTORY_OPERATIONS

log = get_logger("wibot.directory")

T = TypeVar("T")

ACCOUNT_DISABLED = 0x2  # userAccountControl's ACCOUNTDISABLE bit
MAX_GROUP_DEPTH = 8
MAX_GROUPS = 500
WAITING_PER_CONNECTION = 8  # callers that may wait for a connection, per connection; beyond, 503 at once
SUBTREE, BASE = bonsai.LDAPSearchScope.SUBTREE, bonsai.LDAPSearchScope.BASE


@dataclass(frozen=True, slots=True)
class DirectoryAccount:
    directory_id: str  # objectGUID as its UUID string, or entryUUID
    dn: str
    username: str
    email: str | None
    groups: frozenset[str]  # normalised DNs, nested ones included
    disabled: bool


class DirectoryRefused(Exception):
    """The directory says no: `reason` is unknown, ambiguous, wrong_password, disabled or empty_password."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_dn(dn: str) -> str:
    return ",".join(part.strip() for part in str(dn).split(",")).casefold()


class Directory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: list[AIOLDAPConnection] = []
        self._connections = asyncio.Semaphore(settings.ldap_pool_size)
        admitted = settings.ldap_pool_size * (1 + WAITING_PER_CONNECTION)
        self._admitted = asyncio.Semaphore(admitted)
        self._caller_share = max(1, admitted // 2)
        self._per_caller: Counter[str | None] = Counter()  # admitted operations per client address
        self._attributes = [settings.ldap_id_attribute, settings.ldap_username_attribute,
                            settings.ldap_email_attribute, "userAccountControl", "memberOf"]  # fmt: skip

    async def authenticate(self, username: str, password: str, *, caller: str | None = None) -> DirectoryAccount:
        """The account, its password checked; DirectoryRefused, or DirectoryUnavailable (never a hung call), or
        DirectoryBusy when the client address `caller` already has half of the operations in progress."""
        if not password:  # an empty simple bind is an unauthenticated bind that "succeeds" (RFC 4513 §5.1.2)
            raise DirectoryRefused("empty_password")
        return await self._run("login", self._authenticate(username, password), caller=caller)

    async def lookup(self, directory_id: str) -> DirectoryAccount | None:
        """The entry of a linked account as it is now (the sync); None when it is gone."""
        return await self._run("lookup", self._lookup(directory_id))

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            _release(conn)

    async def _run(self, operation: str, work: Awaitable[T], *, caller: str | None = None) -> T:
        if self._admitted.locked():
            DIRECTORY_OPERATIONS.labels(operation, "busy").inc()
            work.close()  # type: ignore[attr-defined]  # a coroutine never awaited
            raise DirectoryUnavailable
        if caller is not None and self._per_caller[caller] >= self._caller_share:
            DIRECTORY_OPERATIONS.labels(operation, "caller_busy").inc()
            work.close()  # type: ignore[attr-defined]
            raise DirectoryBusy
        self._per_caller[caller] += 1  # the sync's lookups (caller None) are counted, never bounded
        try:
            return await self._admitted_run(operation, work)
        finally:
            self._per_caller[caller] -= 1
            if not self._per_caller[caller]:
                del self._per_caller[caller]

    async def _admitted_run(self, operation: str, work: Awaitable[T]) -> T:
        async with self._admitted:
            try:
                async with asyncio.timeout(self.settings.ldap_timeout_s):
                    result = await work
            except DirectoryRefused as refused:
                DIRECTORY_OPERATIONS.labels(operation, refused.reason).inc()
                raise
            except (TimeoutError, bonsai.LDAPError, OSError) as exc:
                DIRECTORY_OPERATIONS.labels(operation, "unavailable").inc()
                log.warning("directory_unavailable", operation=operation, error=type(exc).__name__)
                raise DirectoryUnavailable from None
        DIRECTORY_OPERATIONS.labels(operation, "ok").inc()
        return result

    async def _authenticate(self, username: str, password: str) -> DirectoryAccount:
        settings = self.settings
        query = settings.ldap_user_filter.replace("{username}", bonsai.escape_filter_exp(username))
        async with self._service() as conn:
            entries = await _search(conn, settings.ldap_user_base, SUBTREE, query, self._attributes, sizelimit=2)
            if len(entries) != 1:
                if not entries:  # as long as a wrong password: no user enumeration by timing
                    await self._bind(f"cn=wibot-nobody,{settings.ldap_user_base}", password)
                raise DirectoryRefused("unknown" if not entries else "ambiguous")
            entry = entries[0]
            if not await self._bind(str(entry.dn), password):
                raise DirectoryRefused("wrong_password")
            account = await self._account(conn, entry)
        if account.disabled:
            raise DirectoryRefused("disabled")
        return account

    async def _lookup(self, directory_id: str) -> DirectoryAccount | None:
        async with self._service() as conn:
            query = self._id_filter(directory_id)
            entries = await _search(conn, self.settings.ldap_user_base, SUBTREE, query, self._attributes, sizelimit=2)
            return await self._account(conn, entries[0]) if len(entries) == 1 else None

    def _id_filter(self, directory_id: str) -> str:
        attribute = self.settings.ldap_id_attribute
        if attribute.casefold() == "objectguid":  # binary on AD: its bytes, little-endian as Windows stores them
            return f"({attribute}=" + "".join(f"\\{byte:02x}" for byte in uuid.UUID(directory_id).bytes_le) + ")"
        return f"({attribute}={bonsai.escape_filter_exp(directory_id)})"

    async def _account(self, conn: AIOLDAPConnection, entry: Any) -> DirectoryAccount:
        settings = self.settings
        raw_id = _first(entry.get(settings.ldap_id_attribute))
        if isinstance(raw_id, bytes) and len(raw_id) == 16:  # objectGUID
            directory_id = str(uuid.UUID(bytes_le=raw_id))
        else:
            directory_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id or "")
        control = _first(entry.get("userAccountControl"))
        return DirectoryAccount(
            directory_id=directory_id,
            dn=str(entry.dn),
            username=str(_first(entry.get(settings.ldap_username_attribute)) or ""),
            email=_first(entry.get(settings.ldap_email_attribute)) or None,
            groups=frozenset(await self._groups(conn, str(entry.dn), [str(g) for g in entry.get("memberOf") or []])),
            disabled=bool(int(control or 0) & ACCOUNT_DISABLED),
        )

    async def _groups(self, conn: AIOLDAPConnection, dn: str, member_of: list[str]) -> set[str]:
        """memberOf (or a group search), then the groups of those groups, level by level."""
        settings = self.settings
        direct = member_of if settings.ldap_group_source == "memberof" else await self._groups_with_member(conn, dn)
        found = {normalise_dn(group): group for group in direct}
        level = list(found.values())
        for _ in range(MAX_GROUP_DEPTH if settings.ldap_nested_groups else 0):
            parents: list[str] = []
            for group in level:
                parents += await self._parents_of(conn, group)
            level = [group for group in parents if normalise_dn(group) not in found]
            found.update((normalise_dn(group), group) for group in level)
            if not level or len(found) > MAX_GROUPS:
                break
        return set(found)

    async def _parents_of(self, conn: AIOLDAPConnection, group: str) -> list[str]:
        if self.settings.ldap_group_source == "search":
            return await self._groups_with_member(conn, group)
        entries = await _search(conn, group, BASE, "(objectClass=*)", ["memberOf"])
        return [str(g) for g in entries[0].get("memberOf") or []] if entries else []

    async def _groups_with_member(self, conn: AIOLDAPConnection, dn: str) -> list[str]:
        settings = self.settings
        query = settings.ldap_group_filter.replace("{dn}", bonsai.escape_filter_exp(dn))
        base = settings.ldap_group_base or settings.ldap_user_base
        return [str(entry.dn) for entry in await _search(conn, base, SUBTREE, query, ["cn"])]

    async def _bind(self, dn: str, password: str) -> bool:
        """True when the directory accepts this DN and password; False for invalid credentials."""
        client = self._client()
        client.set_credentials("SIMPLE", user=dn, password=password)
        try:
            conn = await _connect(client, self.settings.ldap_connect_timeout_s)
        except bonsai.AuthenticationError:
            return False
        _release(conn)
        return True

    @asynccontextmanager
    async def _service(self) -> AsyncIterator[AIOLDAPConnection]:
        """One of the service account's connections; a connection that failed is dropped, never reused."""
        async with self._connections:
            conn = self._idle.pop() if self._idle else await self._open_service()
            try:
                yield conn
            except BaseException:  # a timeout's cancellation included: the search may still be in flight
                _release(conn)
                raise
            self._idle.append(conn)

    async def _open_service(self) -> AIOLDAPConnection:
        settings, client = self.settings, self._client()
        if settings.ldap_bind_dn:
            password = settings.ldap_bind_password.get_secret_value() if settings.ldap_bind_password else ""
            client.set_credentials("SIMPLE", user=settings.ldap_bind_dn, password=password)
        try:
            conn = await _connect(client, settings.ldap_connect_timeout_s)
        except bonsai.AuthenticationError:
            log.error("directory_service_bind_failed")
            raise OSError("the directory refused the service account") from None
        return conn

    def _client(self) -> bonsai.LDAPClient:
        settings = self.settings
        url = settings.ldap_url or ""
        client = bonsai.LDAPClient(url, tls=settings.ldap_start_tls and url.startswith("ldap:"))
        client.set_cert_policy("demand" if settings.ldap_verify_certificate else "never")
        if settings.ldap_ca_file:
            client.set_ca_cert(str(settings.ldap_ca_file))
        client.set_server_chase_referrals(False)
        if settings.ldap_id_attribute.casefold() == "objectguid":
            client.set_raw_attributes([settings.ldap_id_attribute])
        return client


async def _connect(client: bonsai.LDAPClient, connect_timeout_s: float) -> AIOLDAPConnection:
    """An open connection; one that did not open (refused, timed out, cancelled) is released, never left behind."""
    conn: AIOLDAPConnection = client.connect(is_async=True, timeout=connect_timeout_s)  # opens; awaited below
    # While libldap is set up (a thread of bonsai's), fileno() is a socket pair's descriptor, which is also the id of
    # the pending open (bonsai's ldapconnection_open); afterwards it is the socket to the directory. A pending open
    # holds its connection (connection -> pending operations -> the open -> the connection: a cycle the garbage
    # collector does not see), so an open that timed out or was cancelled while binding would keep its socket
    # open for the life of the process, unless abandoned. Abandoning before libldap is set up dereferences no
    # handle at all (a segfault): then there is no socket yet either.
    opening = conn.fileno()
    try:
        await conn
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(bonsai.LDAPError):
            if conn.fileno() != opening:
                conn.abandon(opening)
        _release(conn)
        raise
    except BaseException:  # the open finished, with an error: nothing is pending
        _release(conn)
        raise
    return conn


def _release(conn: AIOLDAPConnection) -> None:
    """Closes a connection after taking its socket off the event loop.

    bonsai's AIOLDAPConnection stops watching its socket when an operation fails, but not when the operation is
    cancelled (CancelledError is not an Exception; asyncio.timeout cancels): the loop still watched a socket that
    closing it then freed. Under uvloop, libuv aborts the whole process (SIGABRT) when that descriptor number is
    polled again or reused by the next connection; asyncio's selector happens to survive it. So every connection
    an operation touched is taken off the loop first, whatever ended the operation."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(bonsai.LDAPError):  # never opened, or already closed: nothing is watched
        descriptor = conn.fileno()
        loop.remove_reader(descriptor)
        loop.remove_writer(descriptor)
    with contextlib.suppress(bonsai.LDAPError):
        conn.close()


async def _search(
    conn: AIOLDAPConnection, base: str, scope: Any, query: str, attributes: list[str], *, sizelimit: int = 0
) -> list[Any]:
    """The entries found; more than `sizelimit` gives `sizelimit` + 1 of them (ambiguous), a missing base none."""
    try:
        return list(await conn.search(base, scope, query, attrlist=attributes, sizelimit=sizelimit))
    except bonsai.SizeLimitError:
        return [None] * (sizelimit + 1)
    except bonsai.NoSuchObjectError:
        return []


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value
