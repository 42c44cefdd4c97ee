"""`python -m services.auth users ...`: operators manage people without writing SQL.

Every command is one step of services/auth/users.py (the same the admin API calls). The database is the one
`make run` uses: DATABASE_URL or POSTGRES_* (environment, then .env), or `make run`'s private cluster when no
server answers there. Whatever goes wrong, the operator reads one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import asyncpg

from services.auth import users
from services.auth.errors import UserError, UserExists
from services.auth.legacy import migrate_passwords
from services.auth.passwords import BCRYPT_MAX_BYTES, PasswordHasher
from services.auth.usernames import RULES, printable
from shared import DB_UNAVAILABLE_ERRORS, Settings, audit, create_pool, current_month, load_settings_or_exit
from shared.make_run import of_make_run

ROOT = Path(__file__).resolve().parent.parent.parent
PASSWORD_RULES = (
    f"Mots de passe : {users.MIN_PASSWORD_CHARS} caractères au moins, {BCRYPT_MAX_BYTES} octets au plus"
    " (demandés deux fois au terminal, ou lus sur la première ligne de l'entrée standard)."
)


def read_password(*, confirm: bool = True) -> str:
    """From the terminal (asked twice) or, when piped, the first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Mot de passe : ")
    if confirm and getpass.getpass("Confirmez : ") != password:
        raise UserError("Les deux saisies diffèrent")
    return password


def quota(value: str) -> int | str:
    if value == "default":
        return value
    number = int(value)
    if not 0 <= number <= 1_000_000_000_000:
        raise argparse.ArgumentTypeError("entre 0 et 1 000 000 000 000")
    return number


def tokens(value: str) -> int:
    number = quota(value)
    if not isinstance(number, int):
        raise argparse.ArgumentTypeError("un nombre de tokens")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.auth users",
        description="Gestion des utilisateurs (la base de `make run` : DATABASE_URL ou POSTGRES_*, .env)",
        epilog=f"Noms d'utilisateur : {RULES}. {PASSWORD_RULES}",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="commande")

    def command(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        if named:
            parser.add_argument("username")
        return parser

    create = command("create", "créer un utilisateur (mot de passe demandé ou lu sur stdin)")
    create.add_argument("--role", default="user", choices=users.ROLES)
    create.add_argument("--email")
    create.add_argument("--accreditation", default=users.DEFAULT_ACCREDITATION, choices=users.ACCREDITATION_LEVELS,
                        help="niveau Safeguard (N0 lecture seule … N4 accès complet)")  # fmt: skip
    create.add_argument("--quota", type=tokens, help="quota mensuel permanent (défaut : DEFAULT_QUOTA_TOKENS)")
    create.add_argument("--if-missing", action="store_true", help="ne rien faire si l'utilisateur existe déjà")
    command("list", "lister les utilisateurs", named=False)
    command("set-password", "changer le mot de passe (ses sessions ouvertes sont fermées)")
    command("set-role", "changer le rôle").add_argument("role", choices=users.ROLES)
    set_quota = command("set-quota", "quota mensuel permanent (ou `default`), ou de ce mois seul avec --this-month")
    set_quota.add_argument("tokens", type=quota)
    set_quota.add_argument("--this-month", action="store_true", help="ce mois-ci seulement")
    command("add-tokens", "ajouter des tokens au quota de ce mois").add_argument("tokens", type=tokens)
    command("set-accreditation", "changer le niveau d'accréditation Safeguard").add_argument(
        "level", choices=users.ACCREDITATION_LEVELS
    )
    command("deactivate", "désactiver un compte (il ne peut plus se connecter)")
    command("reactivate", "réactiver un compte désactivé")
    command("delete", "supprimer un compte, ses conversations, messages et consommation (irréversible)")
    command("migrate-passwords", "hacher (bcrypt) les mots de passe en clair d'une base n8n WIBOT", named=False)
    return parser


@dataclass
class Context:
    args: argparse.Namespace
    pool: asyncpg.Pool
    settings: Settings
    month: date

    @property
    def name(self) -> str:
        return printable(self.args.username)

    async def user_id(self) -> int:
        return await users.user_id_by_name(self.pool, self.args.username)

    async def update(self, **changes: object) -> users.UserRecord:
        user_id = await self.user_id()
        record = await users.update_user(
            self.pool,
            user_id=user_id,
            month=self.month,
            default_quota=self.settings.default_quota_tokens,
            **changes,  # type: ignore[arg-type]
        )
        action = audit.USER_DEACTIVATED if changes.get("is_active") is False else audit.USER_CHANGED
        await self.audit(action, user_id, **changes)
        return record

    async def audit(self, action: str, user_id: int, **details: object) -> None:
        """Done from the command line: no actor id, no request (the trail says `via: cli`)."""
        details = {"via": "cli", **details}
        await audit.record(self.pool, action, actor_id=None, target=str(user_id), details=details)


async def create(ctx: Context) -> str:
    args = ctx.args
    try:
        user = await users.create_user(
            ctx.pool,
            PasswordHasher(ctx.settings.bcrypt_rounds),
            username=args.username,
            password=read_password(),
            email=args.email,
            role=args.role,
            accreditation_level=args.accreditation,
            standing_quota_tokens=args.quota,
            month=ctx.month,
            default_quota=ctx.settings.default_quota_tokens,
        )
    except UserExists:
        if args.if_missing:
            return f"L'utilisateur {ctx.name} existe déjà : rien à faire"
        raise
    await ctx.audit(audit.USER_CREATED, user.user_id, role=user.role, accreditation_level=user.accreditation_level)
    return (
        f"Utilisateur créé : {printable(user.username)} (id {user.user_id}, rôle {user.role},"
        f" niveau {user.accreditation_level})"
    )


async def list_users(ctx: Context) -> str:
    rows = await users.list_users(ctx.pool, month=ctx.month, default_quota=ctx.settings.default_quota_tokens)
    header = f"{'id':>5}  {'username':<24} {'role':<6} {'niveau':<7} {'actif':<6} {'origine':<9}"
    lines = [f"{header} {'tokens ce mois':>21}  email"]
    lines += [
        f"{u.user_id:>5}  {printable(u.username):<24} {printable(u.role):<6} {u.accreditation_level:<7}"
        f" {'oui' if u.is_active else 'non':<6} {'annuaire' if u.source == 'directory' else 'local':<9}"
        f" {f'{u.used_tokens}/{u.quota_tokens}':>21}  {printable(u.email or '')}"
        for u in rows
    ]
    return "\n".join(lines)


async def set_password(ctx: Context) -> str:
    hasher = PasswordHasher(ctx.settings.bcrypt_rounds)
    user_id = await ctx.user_id()
    await users.set_password(ctx.pool, hasher, user_id=user_id, password=read_password())
    await ctx.audit(audit.USER_CHANGED, user_id, changed="password")
    return f"Mot de passe changé : {ctx.name} (ses sessions ouvertes sont fermées)"


async def set_role(ctx: Context) -> str:
    await ctx.update(role=ctx.args.role)
    return f"Rôle de {ctx.name} : {ctx.args.role}"


async def set_quota(ctx: Context) -> str:
    value = ctx.args.tokens
    if ctx.args.this_month:
        if value == "default":
            raise UserError("--this-month attend un nombre de tokens")
        user = await ctx.update(quota_tokens=value)
        return f"Quota de {ctx.name} pour ce mois : {user.quota_tokens} tokens"
    user = await ctx.update(standing_quota_tokens=value)
    standing = "le quota par défaut" if user.standing_quota_tokens is None else f"{user.standing_quota_tokens} tokens"
    return f"Quota mensuel permanent de {ctx.name} : {standing} (ce mois-ci : {user.quota_tokens})"


async def add_tokens(ctx: Context) -> str:
    user = await ctx.update(add_tokens=ctx.args.tokens)
    return f"{ctx.args.tokens} tokens ajoutés à {ctx.name} pour ce mois : quota {user.quota_tokens}"


async def set_accreditation(ctx: Context) -> str:
    await ctx.update(accreditation_level=ctx.args.level)
    return f"Niveau d'accréditation de {ctx.name} : {ctx.args.level}"


async def deactivate(ctx: Context) -> str:
    await ctx.update(is_active=False)
    return f"Compte désactivé : {ctx.name} (ses sessions ouvertes sont fermées)"


async def reactivate(ctx: Context) -> str:
    await ctx.update(is_active=True)
    return f"Compte réactivé : {ctx.name}"


async def delete(ctx: Context) -> str:
    user_id, username = await users.delete_user(ctx.pool, user_id=await ctx.user_id())
    await ctx.audit(audit.USER_DELETED, user_id)
    return f"Compte supprimé : {printable(username)} (id {user_id}), avec ses conversations et sa consommation"


async def migrate_plain_passwords(ctx: Context) -> str:
    done = await migrate_passwords(ctx.pool, PasswordHasher(ctx.settings.bcrypt_rounds))
    lines = [f"Mots de passe en clair hachés : {done.hashed}"]
    if done.too_long:
        lines.append(f"Trop longs pour bcrypt (72 octets), laissés tels quels : {done.too_long} (set-password)")
    if done.changed_meanwhile:
        lines.append(f"Changés pendant la migration, laissés tels quels : {done.changed_meanwhile}")
    return "\n".join(lines)


COMMANDS: dict[str, Callable[[Context], Awaitable[str]]] = {
    "create": create,
    "list": list_users,
    "set-password": set_password,
    "set-role": set_role,
    "set-quota": set_quota,
    "add-tokens": add_tokens,
    "set-accreditation": set_accreditation,
    "deactivate": deactivate,
    "reactivate": reactivate,
    "delete": delete,
    "migrate-passwords": migrate_plain_passwords,
}


async def run(args: argparse.Namespace) -> str:
    settings = of_make_run(load_settings_or_exit())
    pool = await create_pool(settings, application_name="wibot-users-cli")
    try:
        return await COMMANDS[args.command](Context(args, pool, settings, current_month()))
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Every name in the output went through printable(): no control character reaches the terminal.
        print(asyncio.run(run(args)))
    except UserError as exc:
        print(f"Erreur : {printable(str(exc))}", file=sys.stderr)
        return 1
    except (*DB_UNAVAILABLE_ERRORS, asyncpg.InvalidCatalogNameError, asyncpg.InvalidPasswordError) as exc:
        where = load_settings_or_exit().dsn.rsplit("@", 1)[-1]  # never the password
        print(f"Erreur : base de données injoignable ({where}) : {type(exc).__name__}. Lancez `make run` ou"
              " vérifiez DATABASE_URL / POSTGRES_*.", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a CLI: one line, never a traceback
        print(f"Erreur inattendue : {type(exc).__name__}: {printable(str(exc))[:300]}", file=sys.stderr)
        return 1
    return 0
