"""Directory login (#29): AUTH_MODE local | directory | both, behind the same POST /webhook/auth/login.

`directory`: only the directory's accounts, and local admins (break-glass).
`both`: the directory's accounts and the local ones.
In both modes the local accounts are checked first, apart from the directory (views.check_credentials): a local
admin logs in while the directory is down, hung or flooded, and an entry of its name in the directory never locks
it out. When the local password does not match, the directory decides; while it is down, a directory user gets a
503, never a 401 saying their password is wrong.
client.py speaks LDAP (search, bind, groups); accounts.py keeps the local account of each directory user.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from services.auth.directory.accounts import scheduled_sync, sign_in
from services.auth.directory.client import Directory, DirectoryRefused
from services.auth.errors import DirectoryUnavailable
from shared import AppKeys, Settings
from shared.background import Background
from shared.contracts import LoginUser

DIRECTORY = web.AppKey("directory", Directory)

SignedIn = tuple[LoginUser, int]  # the user and their token generation
LocalCheck = Callable[[bool], Awaitable[SignedIn]]  # admins_only -> the local user


async def check_with_directory(
    app: web.Application,
    username: str,
    password: str,
    local: LocalCheck | None,
    refused: Callable[[str], Exception],
    local_cost: Callable[[], Awaitable[object]],
    *,
    caller: str | None = None,
) -> SignedIn:
    """The user (and their token generation) the credentials are for, by AUTH_MODE; `local(admins_only)`
    checks the local accounts (in `directory` mode, local admins only: break-glass), None when a local password
    was already checked and refused; `refused(reason)` is the 401, `local_cost()` costs what a local check costs
    (bcrypt): every refusal takes as long, whoever the username is.
    `caller`: the client's address, whose share of the directory's operations this login takes."""
    settings, directory = app[AppKeys.SETTINGS], app[DIRECTORY]
    admins_only = settings.auth_mode == "directory"
    try:
        account = await directory.authenticate(username, password, caller=caller)
    except DirectoryRefused as refusal:
        if local is None:  # the local password was checked (and refused): that cost is paid
            raise refused(refusal.reason) from None
        if refusal.reason == "unknown":  # not the directory's: a local account, if any
            return await local(admins_only)
        # The directory knows the name: its answer stands, in the time a name it does not know takes
        # (measured: bench/RESULTS.md "Directory login").
        await local_cost()
        raise refused(refusal.reason) from None
    except DirectoryUnavailable:
        if local is None:  # a wrong local password, and the directory cannot say whether it knows the name
            raise
        try:  # an account the local check did not know (an n8n password not yet migrated, say)
            return await local(admins_only)
        except Exception:
            raise DirectoryUnavailable from None
    user = await sign_in(app[AppKeys.DB], settings, account)
    # Role and level may have changed: this process re-reads them at once, the others when notified.
    app[AppKeys.SESSIONS].forget(user["user_id"])
    if not user["is_active"]:  # deactivated here: that decision stands whatever the directory says
        raise refused("inactive")
    return LoginUser(id=user["user_id"], username=user["username"], role=user["role"] or "user"), user["generation"]


def directory_context(settings: Settings) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """The directory client and, with LDAP_SYNC_EVERY_S, its sync, for AUTH_MODE directory/both."""

    @contextlib.asynccontextmanager
    async def _open(app: web.Application) -> AsyncIterator[None]:
        if settings.auth_mode == "local":
            yield
            return
        directory = Directory(settings)
        app[DIRECTORY] = directory
        background = Background()
        if settings.ldap_sync_every_s > 0:
            background.loop(scheduled_sync(app[AppKeys.DB], directory), name="directory_sync")
        try:
            yield
        finally:
            await background.close()
            await directory.close()

    return _open
