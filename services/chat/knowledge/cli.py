"""`python -m services.chat kb ingest PATH [--category C] [--full]`, `kb status` and `kb adopt-n8n`, for operators.

The same ingestion as POST /webhook/wibot/rag/ingest (services/chat/knowledge/ingest.py), with a progress bar
on the terminal. PATH must lie under KB_ROOT. One line on failure, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import asyncpg
import httpx2
from tqdm import tqdm

from services.chat.attachments import Extractor
from services.chat.knowledge import adopt, queries
from services.chat.knowledge.base import KnowledgeBase
from services.chat.knowledge.ingest import IngestStats, ingest
from services.chat.llm import build_client
from shared import DB_UNAVAILABLE_ERRORS, Settings, audit, create_pool, load_settings_or_exit
from shared.errors import DomainError
from shared.make_run import of_make_run


class ProgressBar:
    """tqdm on stderr, one step per file, the current file's path beside it."""

    def __init__(self) -> None:
        self.bar: tqdm[None] | None = None

    def start(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="fichier", file=sys.stderr, disable=None, dynamic_ncols=True)

    def advance(self, path: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(path[-40:], refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.chat kb", description="Base de connaissances (RAG)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("ingest", help="indexe un dossier (ou un fichier) de KB_ROOT")
    run.add_argument("path", nargs="?", help="sous KB_ROOT (par défaut : tout KB_ROOT)")
    run.add_argument("--category", help="catégorie des documents (par défaut : leur premier dossier)")
    run.add_argument("--full", action="store_true", help="tout réindexer, même les fichiers inchangés")
    commands.add_parser("status", help="documents et passages indexés, par catégorie")
    commands.add_parser(
        "adopt-n8n", help="reprend la table n8n_vectors d'un WIBOT n8n, sans appel au modèle d'embedding"
    )
    return parser


@contextlib.contextmanager
def progress_bar() -> Iterator[ProgressBar]:
    bar = ProgressBar()
    try:
        yield bar
    finally:
        bar.close()


def relative_to_root(settings: Settings, path: str | None) -> str | None:
    """PATH as the ingestion reads it: a relative one is a folder of KB_ROOT, as the HTTP API's `path` and the
    README's `kb ingest procedures` (#33: it was read from the current folder); an absolute one (a shell's
    completion) as it is, which must still lie under KB_ROOT."""
    if path is None or settings.kb_root is None or not Path(path).is_absolute():
        return path
    return str(Path(path).resolve())


async def run_ingest(settings: Settings, args: argparse.Namespace) -> IngestStats:
    pool = await create_pool(settings, application_name="wibot-kb-cli")
    extractor = Extractor(workers=settings.extraction_workers, timeout_s=settings.extraction_timeout_s)
    http_client = httpx2.AsyncClient(follow_redirects=True)
    try:
        kb = KnowledgeBase(settings, pool, build_client(settings, http_client), extractor)
        path = relative_to_root(settings, args.path)
        mode: Literal["full", "incremental"] = "full" if args.full else "incremental"
        with progress_bar() as bar:
            stats = await ingest(kb, path=path, mode=mode, category=args.category, progress=bar)
        details = {"via": "cli", "mode": mode, **stats.as_dict()}
        await audit.record(pool, audit.KB_INGESTION, actor_id=None, target=path or ".", details=details)
        return stats
    finally:
        await http_client.aclose()
        await asyncio.to_thread(extractor.close)
        await pool.close()


async def run_adopt(settings: Settings) -> str:
    pool = await create_pool(settings, application_name="wibot-kb-cli")
    try:
        return adopt.report(await adopt.adopt_n8n(settings, pool))
    finally:
        await pool.close()


async def run_status(settings: Settings) -> str:
    pool = await create_pool(settings, application_name="wibot-kb-cli")
    try:
        rows = await pool.fetch(queries.STATUS_SQL)
    finally:
        await pool.close()
    lines = [f"KB_ROOT : {settings.kb_root or '(non défini)'}"]
    for row in rows:
        last = row["last_update"].strftime("%Y-%m-%d %H:%M") if row["last_update"] else "-"
        lines.append(f"{row['category']:<24} {row['documents']:>6} documents {row['chunks']:>8} passages   {last} UTC")
    total_documents = sum(row["documents"] for row in rows)
    lines.append(f"{'total':<24} {total_documents:>6} documents {sum(row['chunks'] for row in rows):>8} passages")
    return "\n".join(lines)


def report(stats: IngestStats) -> str:
    lines = [
        f"{stats.files} fichiers : {stats.added} ajoutés, {stats.updated} mis à jour, {stats.skipped} inchangés,"
        f" {stats.removed} retirés ; {stats.chunks} passages écrits"
    ]
    lines += [f"  échec : {failure['path']} : {failure['error']}" for failure in stats.failed]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = of_make_run(load_settings_or_exit())
    try:
        if args.command == "status":
            print(asyncio.run(run_status(settings)))
            return 0
        if args.command == "adopt-n8n":
            print(asyncio.run(run_adopt(settings)))
            return 0
        stats = asyncio.run(run_ingest(settings, args))
    except DomainError as exc:
        print(f"Erreur : {exc.api_error().message}", file=sys.stderr)
        return 1
    except adopt.NoN8nTable:
        print("Erreur : cette base n'a pas de table n8n_vectors (le nœud PGVector de n8n).", file=sys.stderr)
        return 1
    except (*DB_UNAVAILABLE_ERRORS, asyncpg.InvalidCatalogNameError) as exc:
        where = settings.dsn.rsplit("@", 1)[-1]  # never the password
        print(f"Erreur : base de données injoignable ({where}) : {type(exc).__name__}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(report(stats))
    return 1 if stats.failed else 0
