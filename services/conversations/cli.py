"""`python -m services.conversations data ...`: the operator's side of data protection (#30).

purge [--dry-run]            the retention purge now (RETENTION_DAYS, AUDIT_RETENTION_DAYS); --dry-run counts
export USERNAME [-o FILE]    one user's data as JSON (what GET /webhook/wibot/user/export gives them)
audit [--user ID] [--action A] [--before-id N] [--limit N]    the audit trail, newest first
verify                       recompute the audit trail's chain; exit 1 if a row was edited or removed
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg
import orjson

from services.conversations import data
from shared import DB_UNAVAILABLE_ERRORS, Settings, audit, configure_logging, create_pool, load_settings_or_exit
from shared.contracts import format_utc
from shared.db import utc_now
from shared.make_run import of_make_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.conversations data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="commande")
    purge = sub.add_parser("purge", help="purge de rétention maintenant")
    purge.add_argument("--dry-run", action="store_true", help="compter sans rien supprimer")
    export = sub.add_parser("export", help="exporter les données d'un utilisateur (JSON)")
    export.add_argument("username")
    export.add_argument("-o", "--output", type=Path, help="fichier (défaut : la sortie standard)")
    trail = sub.add_parser("audit", help="lire la piste d'audit, la plus récente d'abord")
    trail.add_argument("--user", type=int, help="actor_id")
    trail.add_argument("--action")
    trail.add_argument("--before-id", type=int, help="page suivante : avant cet audit_id")
    trail.add_argument("--limit", type=int, default=50)
    sub.add_parser("verify", help="vérifier la chaîne de la piste d'audit")
    return parser


async def run(args: argparse.Namespace, settings: Settings) -> int:
    pool = await create_pool(settings, application_name="wibot-data-cli")
    try:
        return await COMMANDS[args.command](pool, settings, args)
    finally:
        await pool.close()


async def purge(pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace) -> int:
    done = await data.purge_inactive(pool, settings, now=utc_now(), dry_run=args.dry_run)
    if done is None:
        print("Une purge est déjà en cours dans un autre processus : rien fait.")
        return 1
    verb = "seraient supprimés" if args.dry_run else "supprimés"
    print(
        f"{verb.capitalize()} : {done.conversations} conversations, {done.messages} messages, {done.chunks} extraits"
        f" de pièces jointes, {done.audit_rows} lignes d'audit (rétention : "
        f"{settings.retention_days or 'illimitée'} j, audit : {settings.audit_retention_days} j)"
    )
    return 0


async def export(pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace) -> int:
    user_id = await pool.fetchval("SELECT user_id FROM users WHERE lower(username) = lower($1)", args.username)
    if user_id is None:
        print(f"Erreur : utilisateur inconnu : {args.username!r}", file=sys.stderr)
        return 1
    await audit.record(pool, audit.DATA_EXPORT, actor_id=None, target=str(user_id), details={"via": "cli"})
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    try:
        async for piece in data.export_user(pool, user_id, exported_at=utc_now()):
            out.write(piece)
    finally:
        if args.output:
            out.close()
    return 0


async def read_trail(pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace) -> int:
    rows = await audit.read(pool, actor_id=args.user, action=args.action, before_id=args.before_id, limit=args.limit)
    for row in rows:
        row["at"] = format_utc(row["at"])
        print(orjson.dumps(row).decode())
    return 0


async def verify(pool: asyncpg.Pool, settings: Settings, args: argparse.Namespace) -> int:
    result = await audit.verify(pool)
    if result.intact:
        print(f"Piste d'audit intacte : {result.rows} lignes, dernière {result.last_id} (empreinte {result.last_hash})")
        return 0
    for audit_id, fault in result.faults:
        said = "modifiée" if fault == "edited" else "une ligne précédente a été supprimée"
        print(f"Ligne {audit_id} : {said}", file=sys.stderr)
    return 1


COMMANDS = {"purge": purge, "export": export, "audit": read_trail, "verify": verify}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = of_make_run(load_settings_or_exit())
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="data-cli", stream=sys.stderr)
    try:
        return asyncio.run(run(args, settings))
    except (*DB_UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:  # a CLI: one line, never a traceback
        print(f"Erreur : base de données : {type(exc).__name__}: {str(exc)[:300]} (make migrate ?)", file=sys.stderr)
        return 1
