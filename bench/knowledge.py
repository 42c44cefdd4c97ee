"""Knowledge base benchmark: `python -m bench.knowledge` (part of `make bench`).

On a database of its own, with the fake Mistral server on loopback (its hashed-word embedder):
1. ingestion throughput: a folder of FILES_MD Markdown copies of the demo corpus and PDFS generated PDFs of
   PDF_PAGES pages each, ingested through the real pipeline (worker processes, SDK, COPY): pages/s, chunks/s;
2. quality: the demo corpus ingested, then the questions of bench/kb_questions.json (each answered by one
   document) asked through the chat step's retrieval: recall@5 = share of questions whose document is among
   the five passages kept;
3. scale: distractor chunks added until the index holds 10,000 then 100,000 chunks (150-word texts, a share
   --corpus-share of their words from the corpus's own vocabulary and the rest from other subjects, so full
   text and vectors both compete; the first 10,000 embedded by the fake embedder, the rest given random vectors
   by PostgreSQL to keep the setup short), and at each size: recall@5,
   retrieval p50/p95 (question embedding + hybrid query + fusion), the time the index takes to load, its RAM.
Writes bench/knowledge.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
from aiohttp.test_utils import TestServer

from bench.run import SECRET, drop_database, recreate_database
from devtools.fake_mistral import FakeMistral, fake_embedding
from devtools.fake_mistral import create_app as fake_mistral_app
from services.chat.attachments import Extractor
from services.chat.knowledge.base import KnowledgeBase
from services.chat.knowledge.consult import consult_knowledge
from services.chat.knowledge.index import IndexFollower, VectorIndex, keep_current
from services.chat.knowledge.ingest import ingest
from services.chat.knowledge.retrieval import Scope
from services.chat.llm import build_client
from services.chat.quota import Budget, Reservation
from shared import Settings, apply_migrations, configure_logging, create_pool
from shared.background import Background
from tests.documents import text_pdf

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "devtools" / "kb_corpus"
QUESTIONS = json.loads((ROOT / "bench" / "kb_questions.json").read_text(encoding="utf-8"))
SERVER_URL = os.environ.get(
    "BENCH_SERVER_URL", os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)

DISTRACTOR_DOCUMENT_SQL = """
INSERT INTO kb_documents (source, category, path, content_hash, chunk_count)
VALUES ($1, 'bruit', $1, repeat('0', 64), $2) RETURNING document_id
"""
RANDOM_CHUNKS_SQL = """
INSERT INTO kb_chunks (document_id, position, content, embedding)
SELECT $1, i, ($3::text[])[1 + i % cardinality($3::text[])],
       array(SELECT (random() - 0.5 + i * 0)::real FROM generate_series(1, $4::int))
FROM generate_series(0, $2::int - 1) AS i
"""


def corpus_words() -> list[str]:
    text = " ".join(path.read_text(encoding="utf-8") for path in CORPUS.rglob("*") if path.is_file())
    return [word for word in re.findall(r"\w+", text) if len(word) > 2]


def synthetic_vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    """Words of other subjects: pronounceable, not in the corpus."""
    syllables = ["ba", "co", "di", "fu", "ga", "li", "mo", "nu", "pa", "ri", "so", "tu", "ve", "za", "ch", "ou"]
    return ["".join(rng.choices(syllables, k=rng.randint(2, 4))) + "e" for _ in range(size)]


def word_salad(rng: random.Random, words: list[str], count: int, *, corpus_share: float) -> list[str]:
    """Texts of 150 words: `corpus_share` of them drawn from the corpus's own vocabulary, the rest from other
    subjects (1.0: every word could be the corpus's, the harshest case for full text)."""
    other = synthetic_vocabulary(rng)
    return [
        " ".join(rng.choice(words) if rng.random() < corpus_share else rng.choice(other) for _ in range(150))
        for _ in range(count)
    ]


async def measure_ingestion(kb: KnowledgeBase, root: Path, files_md: int, pdfs: int, pages: int) -> dict[str, Any]:
    folder = root / "ingestion"
    folder.mkdir()
    sources = sorted(CORPUS.rglob("*.md"))
    for n in range(files_md):
        source = sources[n % len(sources)]
        (folder / f"{source.stem}-{n}.md").write_text(source.read_text(encoding="utf-8") + f"\n\nCopie {n}.\n")
    text = (CORPUS / "procedures" / "glpi-tickets.md").read_text(encoding="utf-8")
    for n in range(pdfs):
        (folder / f"rapport-{n}.pdf").write_bytes(
            text_pdf([f"Rapport {n}, page {p}. {text[:1500]}" for p in range(pages)])
        )
    started = time.perf_counter()
    stats = await ingest(kb, path="ingestion", mode="full", category=None)
    elapsed = time.perf_counter() - started
    assert not stats.failed, stats.failed
    started = time.perf_counter()
    again = await ingest(kb, path="ingestion", mode="incremental", category=None)
    unchanged_s = time.perf_counter() - started
    await kb.pool.execute("DELETE FROM kb_documents WHERE starts_with(path, 'ingestion/')")
    return {
        "files": stats.files,
        "pdf_pages": pdfs * pages,
        "chunks": stats.chunks,
        "seconds": round(elapsed, 2),
        "files_per_s": round(stats.files / elapsed, 1),
        "chunks_per_s": round(stats.chunks / elapsed, 1),
        "pdf_pages_per_s_whole_run": round(pdfs * pages / elapsed, 1),
        "unchanged_rerun_s": round(unchanged_s, 2),
        "unchanged_skipped": again.skipped,
    }


async def recall_and_latency(kb: KnowledgeBase, samples: int) -> dict[str, Any]:
    scope = Scope(user_id=1, conversation_id=uuid.uuid4())
    # Questions without attachments: nothing is embedded for them, nothing is held.
    budget = Budget(kb.pool, Background(), Reservation(uuid.uuid4(), 1, date.today(), 0, 0), max_tokens=0)
    found = 0
    timings = []
    for _ in range(max(1, samples // len(QUESTIONS))):
        found = 0
        for item in QUESTIONS:
            started = time.perf_counter()
            consulted = await consult_knowledge(kb, scope, item["question"], [], budget, has_documents=False)
            timings.append((time.perf_counter() - started) * 1000)
            found += item["source"] in {passage.source for passage in consulted.passages}
    timings.sort()
    vector_timings = []  # the in-process exact search alone, for the same questions
    index = kb.index
    if isinstance(index, VectorIndex):
        for item in QUESTIONS:
            vector = fake_embedding(item["question"])
            started = time.perf_counter()
            index.search(vector, limit=20, min_similarity=kb.settings.kb_min_similarity)
            vector_timings.append((time.perf_counter() - started) * 1000)
    return {
        "recall_at_5": round(found / len(QUESTIONS), 3),
        "retrieval_p50_ms": round(statistics.median(timings), 2),
        "retrieval_p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
        "vector_search_p50_ms": round(statistics.median(vector_timings), 2),
    }


async def add_distractors(conn: asyncpg.Connection, embedded: int, random_rows: int, *, corpus_share: float) -> None:
    rng = random.Random(42)
    words = corpus_words()
    if embedded:
        texts = word_salad(rng, words, embedded, corpus_share=corpus_share)
        document_id = await conn.fetchval(DISTRACTOR_DOCUMENT_SQL, "bruit-texte.md", embedded)
        await conn.copy_records_to_table(
            "kb_chunks",
            records=[(document_id, n, text, fake_embedding(text)) for n, text in enumerate(texts)],
            columns=["document_id", "position", "content", "embedding"],
        )
    if random_rows:
        texts = word_salad(rng, words, 500, corpus_share=corpus_share)
        document_id = await conn.fetchval(DISTRACTOR_DOCUMENT_SQL, "bruit-aleatoire.md", random_rows)
        await conn.execute(RANDOM_CHUNKS_SQL, document_id, random_rows, texts, 1024)
    await conn.execute("ANALYZE kb_chunks")


async def index_load(settings: Settings) -> tuple[float, int, float]:
    """A fresh index loaded as a starting chat process loads it: seconds, chunks, MiB of vectors."""
    kb_index = VectorIndex()
    follower = IndexFollower(kb_index)
    started = time.perf_counter()
    task = asyncio.create_task(keep_current(follower, settings.dsn))
    await asyncio.wait_for(follower.loaded.wait(), timeout=600)
    elapsed = time.perf_counter() - started
    task.cancel()
    return elapsed, kb_index.size, kb_index.nbytes / 2**20


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    name = f"wibot_bench_knowledge_{os.getpid()}"
    url = await recreate_database(SERVER_URL, name)
    await asyncio.to_thread(apply_migrations, url)
    fake = TestServer(fake_mistral_app(FakeMistral()), host="127.0.0.1")
    await fake.start_server()
    scratch = Path(tempfile.mkdtemp(prefix="wibot-bench-kb-"))
    shutil.copytree(CORPUS, scratch / "corpus")
    settings = Settings(
        _env_file=None,
        database_url=url,
        jwt_secret=SECRET,
        log_level="WARNING",
        kb_root=scratch,
        mistral_server_url=str(fake.make_url("")).rstrip("/"),
        mistral_api_key="bench",
        kb_min_similarity=0.15,
        extraction_timeout_s=120,
    )
    pool = await create_pool(settings, application_name="wibot-bench-kb")
    http_client = httpx2.AsyncClient()
    extractor = Extractor(workers=settings.extraction_workers, timeout_s=settings.extraction_timeout_s)
    kb = KnowledgeBase(settings, pool, build_client(settings, http_client), extractor)
    listener = asyncio.create_task(keep_current(kb.follower, settings.dsn))
    report: dict[str, Any] = {"distractor_corpus_share": args.corpus_share}
    try:
        await kb.follower.loaded.wait()
        report["ingestion"] = await measure_ingestion(kb, scratch, args.files, args.pdfs, args.pdf_pages)
        await ingest(kb, path="corpus", mode="full", category=None)
        report["sizes"] = {}
        conn = await asyncpg.connect(url)
        try:
            for total, embedded, random_rows in ((0, 0, 0), (10_000, 10_000, 0), (100_000, 0, 90_000)):
                if total > args.max_chunks:
                    break
                await add_distractors(conn, embedded, random_rows, corpus_share=args.corpus_share)
                chunks = await conn.fetchval("SELECT count(*) FROM kb_chunks")
                async with asyncio.timeout(600):  # the listener applies the NOTIFY of the distractors
                    while kb.index.size != chunks:  # noqa: ASYNC110 - the index has no event to await
                        await asyncio.sleep(0.1)
                load_s, loaded_chunks, mib = await index_load(settings)
                figures = await recall_and_latency(kb, args.samples)
                report["sizes"][str(chunks)] = {
                    **figures,
                    "index_load_s": round(load_s, 2),
                    "index_chunks": loaded_chunks,
                    "index_mib": round(mib, 1),
                }
        finally:
            await conn.close()
    finally:
        listener.cancel()
        await http_client.aclose()
        await asyncio.to_thread(extractor.close)
        await pool.close()
        await fake.close()
        shutil.rmtree(scratch, ignore_errors=True)
        await drop_database(SERVER_URL, name)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.knowledge", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="Markdown files of the ingestion run")
    parser.add_argument("--pdfs", type=int, default=20, help="PDFs of the ingestion run")
    parser.add_argument("--pdf-pages", type=int, default=10)
    parser.add_argument("--samples", type=int, default=96, help="retrievals timed per size")
    parser.add_argument("--max-chunks", type=int, default=100_000)
    parser.add_argument(
        "--corpus-share", type=float, default=0.05, help="share of a distractor's words taken from the corpus"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "knowledge.json")
    args = parser.parse_args()
    configure_logging(level="WARNING", fmt="console", service="bench")
    report = asyncio.run(main_async(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ingestion = report["ingestion"]
    print(
        f"ingestion: {ingestion['files']} files ({ingestion['pdf_pages']} PDF pages) in {ingestion['seconds']} s:"
        f" {ingestion['files_per_s']} files/s, {ingestion['chunks_per_s']} chunks/s;"
        f" unchanged re-run {ingestion['unchanged_rerun_s']} s"
    )
    for chunks, figures in report["sizes"].items():
        print(
            f"{chunks:>7} chunks: recall@5 {figures['recall_at_5']}, retrieval p50 {figures['retrieval_p50_ms']} ms"
            f" p95 {figures['retrieval_p95_ms']} ms (vector search alone {figures['vector_search_p50_ms']} ms),"
            f" index load {figures['index_load_s']} s,"
            f" {figures['index_mib']} MiB"
        )


if __name__ == "__main__":
    main()
