"""`python -m services.auth users ...`: operators manage people without writing SQL."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from services.auth import users
from services.auth.legacy import migrate_passwords
from services.auth.passwords import PasswordHasher
from services.auth.usernames import RULES, printable
from shared import create_pool, current_month, load_settings_or_exit


def read_password(*, confirm: bool = True) -> str:
    """From the terminal (asked twice) or, when piped, the first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Mot de passe : ")
    if confirm and getpass.getpass("Confirmez : ") != password:
        raise users.UserError("Les deux saisies diffèrent")
    return password


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.auth users",
        description="Gestion des utilisateurs",
        epilog=f"Noms d'utilisateur : {RULES}. Mots de passe : {users.MIN_PASSWORD_CHARS} caractères au moins,"
        f" {users.BCRYPT_MAX_BYTES} octets au plus.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="créer un utilisateur (mot de passe demandé ou lu sur stdin)")
    create.add_argument("username")
    create.add_argument("--role", default="user", choices=users.ROLES)
    create.add_argument("--email")
    create.add_argument(
        "--accreditation",
        default=users.DEFAULT_ACCREDITATION,
        choices=users.ACCREDITATION_LEVELS,
        help="niveau Safeguard (N0 lecture seule … N4 accès complet)",
    )
    create.add_argument("--if-missing", action="store_true", help="ne rien faire si l'utilisateur existe déjà")
    set_password = sub.add_parser("set-password", help="changer le mot de passe")
    set_password.add_argument("username")
    deactivate = sub.add_parser("deactivate", help="désactiver un compte (il ne peut plus se connecter)")
    deactivate.add_argument("username")
    accreditation = sub.add_parser("set-accreditation", help="changer le niveau d'accréditation Safeguard")
    accreditation.add_argument("username")
    accreditation.add_argument("level", choices=users.ACCREDITATION_LEVELS)
    sub.add_parser("list", help="lister les utilisateurs")
    sub.add_parser(
        "migrate-passwords",
        help="hacher (bcrypt) les mots de passe en clair d'une base n8n WIBOT, sur place (sans rien afficher d'eux)",
    )
    return parser


async def run(args: argparse.Namespace) -> str:
    settings = load_settings_or_exit()
    pool = await create_pool(settings, application_name="wibot-users-cli")
    try:
        hasher = PasswordHasher(settings.bcrypt_rounds)
        month, default_quota = current_month(), settings.default_quota_tokens
        if args.command == "create":
            try:
                user = await users.create_user(
                    pool,
                    hasher,
                    username=args.username,
                    password=read_password(),
                    email=args.email,
                    role=args.role,
                    accreditation_level=args.accreditation,
                    month=month,
                    default_quota=default_quota,
                )
            except users.UserExists:
                if args.if_missing:
                    return f"L'utilisateur {printable(args.username)} existe déjà : rien à faire"
                raise
            return (
                f"Utilisateur créé : {printable(user.username)} (id {user.user_id}, rôle {user.role},"
                f" niveau {user.accreditation_level})"
            )
        if args.command == "set-password":
            user_id = await users.user_id_by_name(pool, args.username)
            await users.set_password(pool, hasher, user_id=user_id, password=read_password())
            return f"Mot de passe changé : {printable(args.username)} (ses sessions ouvertes sont fermées)"
        if args.command == "deactivate":
            user_id = await users.user_id_by_name(pool, args.username)
            await users.update_user(pool, user_id=user_id, month=month, default_quota=default_quota, is_active=False)
            return f"Compte désactivé : {printable(args.username)}"
        if args.command == "set-accreditation":
            user_id = await users.user_id_by_name(pool, args.username)
            await users.update_user(
                pool, user_id=user_id, month=month, default_quota=default_quota, accreditation_level=args.level
            )
            return f"Niveau d'accréditation de {printable(args.username)} : {args.level}"
        if args.command == "migrate-passwords":
            done = await migrate_passwords(pool, hasher)
            lines = [f"Mots de passe en clair hachés : {done.hashed}"]
            if done.too_long:
                lines.append(f"Trop longs pour bcrypt (72 octets), laissés tels quels : {done.too_long} (set-password)")
            if done.changed_meanwhile:
                lines.append(f"Changés pendant la migration, laissés tels quels : {done.changed_meanwhile}")
            return "\n".join(lines)
        rows = await users.list_users(pool, month=month, default_quota=default_quota)
        lines = [f"{'id':>5}  {'username':<24} {'role':<8} {'niveau':<7} {'actif':<6} email"]
        lines += [
            f"{u.user_id:>5}  {printable(u.username):<24} {printable(u.role):<8} {u.accreditation_level:<7}"
            f" {'oui' if u.is_active else 'non':<6} {printable(u.email or '')}"
            for u in rows
        ]
        return "\n".join(lines)
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Every name in the output went through printable(): no control character reaches the terminal.
        print(asyncio.run(run(args)))
    except users.UserError as exc:
        print(f"Erreur : {printable(str(exc))}", file=sys.stderr)
        return 1
    return 0
