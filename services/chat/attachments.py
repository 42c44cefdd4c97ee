"""Chat step `read_attachments`: every file's text, extracted off the event loop, cut to the message's budget.

Decoding and extraction (services/chat/extraction.py) run in worker processes owned by the chat app: a hostile
PDF is stopped at EXTRACTION_TIMEOUT_S by killing its worker, and the event loop keeps serving meanwhile.
Nothing of a file is written anywhere; only its metadata ({name, size, type, pages?, chars, truncated}) is kept.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pebble

from services.chat.errors import ExtractionBusy, ExtractionTimeSpent, FileRefused, FilesTooLarge, TooManyFiles
from services.chat.extraction import (
    Extracted,
    FileProblem,
    at_least_niced,
    extract,
    extract_unless_pdf,
    least_size,
    prepare_worker,
)
from services.chat.french import thousands
from services.chat.privacy import Offload
from shared import Settings, get_logger
from shared.contracts import FileAttachment
from shared.lanes import LaneFull, Lanes, OutOfTime, TimeBudget
from shared.metrics import EXTRACTIONS_REFUSED

log = get_logger("wibot.attachments")

# By name: the frontend's types, and .log (the spec's own example sends `error.log` as text).
MIME_BY_EXTENSION = {
    ".pdf": "application/pdf",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
    ".log": "text/plain",
}
BASE64_OVERHEAD = 4 / 3
PAGE_MARKER = re.compile(r"\[Page (\d+)/\d+\]")


def suffix_of(name: str) -> str:
    """What the logs say of a file: its kind, never its name (a name may hold a resident's name or number)."""
    return PurePosixPath(name.lower()).suffix[:10] or "(none)"


@dataclass(frozen=True, slots=True)
class ReadFile:
    """One attachment as the model will read it."""

    name: str
    type: str
    size: int
    text: str
    pages: int | None
    chars: int  # of the whole extracted text, before any cut
    cut_note: str | None = None  # says where and why the text was cut (or that it was indexed instead)
    indexed: bool = False  # too long for the message: indexed for its conversation (services/chat/knowledge)

    @property
    def truncated(self) -> bool:
        return self.cut_note is not None and not self.indexed

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "size": self.size, "type": self.type}
        if self.pages is not None:
            meta["pages"] = self.pages
        return meta | {"chars": self.chars, "truncated": self.truncated} | ({"indexed": True} if self.indexed else {})


# Text files up to this many characters of content (~12 KB decoded) are read on the event loop: under a millisecond,
# where a worker's round trip is several, and a user's small note never waits behind someone's slow PDFs.
INLINE_MAX_CHARS = 16_384
# How a file's job is cancelled when its request's client left: charged to its user's time budget until its deadline,
# not only as long as it ran. Its worker was stopped before the file's time was known, and a user sending slow files
# and leaving half a second later, again and again, was charged half a second each while a worker read their
# files a quarter of the time: other users' chat p99 2.1x idle (bench/attacks.py, extraction); 1.6x charged so.
CLIENT_LEFT = "client left"
WORKER_NICENESS = 10
# What the workers run: imported once by the forkserver, not again by every worker it forks.
WORKER_MODULES = [
    "pebble",
    "pypdf",
    "services.chat.extraction",
    "services.chat.privacy",
    "services.chat.knowledge.chunks",
    "services.chat.knowledge.documents",
]


class Extractor:
    """Worker processes for decoding and extraction, started on first use, stopped with the app.

    Admission is bounded (shared/lanes.py): at most `max_jobs` jobs admitted (running or waiting) per process and
    `max_jobs_per_user` per user, beyond which a job is refused at once (LaneFull) instead of joining a queue
    nobody can see the end of; a user's jobs run on `workers - 1` workers at most, so that one user's slow files
    always leave a worker to the others. A job's deadline counts from its submission (time spent waiting
    included), and cancelling the awaiting task (the client left) withdraws a waiting job or kills the worker
    running it. Over time, a user's jobs may keep the workers busy `seconds_per_user_per_minute` (TimeBudget):
    without it, one user sending files that each run to the deadline held a worker for good, at no cost to them
    (an extraction that fails is not charged in tokens).
    """

    def __init__(
        self,
        *,
        workers: int,
        timeout_s: float,
        max_jobs: int = 0,
        max_jobs_per_user: int = 0,
        seconds_per_user_per_minute: float = 0,
    ) -> None:
        self.workers, self.timeout_s = workers, timeout_s
        self.lanes = Lanes(running_per_user=max(1, workers - 1), max_jobs=max_jobs, max_jobs_per_user=max_jobs_per_user)
        self.time_budget = TimeBudget(seconds_per_user_per_minute)
        self._pool: pebble.ProcessPool | None = None
        self._starting = threading.Lock()
        self._closed = False

    @property
    def jobs(self) -> int:
        return self.lanes.jobs

    @property
    def submitted(self) -> int:
        return self.lanes.submitted

    async def run(self, content: str, *, max_bytes: int, max_pages: int, owner: int | None = None) -> Extracted:
        if len(content) <= INLINE_MAX_CHARS:  # a short text is read here: no worker, no queue behind PDFs
            inline = extract_unless_pdf(content, max_bytes=max_bytes)
            if inline is not None:
                return inline
        if owner is not None:  # before anything is queued: a user whose time is spent costs a dictionary lookup
            self.time_budget.check(owner)
        result: Extracted = await self.call(extract, content, max_bytes=max_bytes, max_pages=max_pages, owner=owner)
        return result

    async def call(self, function: Callable[..., Any], *args: Any, owner: int | None = None, **kwargs: Any) -> Any:
        """`function(*args, **kwargs)` in a worker process; TimeoutError past the timeout from now. `owner` is the
        user whose request needs it (None: the operators' ingestion, which no user limit applies to). The job is
        charged to its user's time budget from its turn to run (its user's share and the process's allowing) to its
        end, killed or not, and to its deadline when it is cancelled with CLIENT_LEFT (see read_attachments); only
        a file's extraction (`run`) is refused for a spent budget: the other jobs are the steps of a message whose
        file was already admitted, or its pseudonymisation, which every message needs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        async with asyncio.timeout_at(deadline), self.lanes.slot(owner):
            started = loop.time()
            client_left = False
            try:
                return await self._schedule(function, args, kwargs)
            except asyncio.CancelledError as cancelled:
                client_left = CLIENT_LEFT in cancelled.args
                raise
            finally:
                if owner is not None:
                    self.time_budget.charge(owner, (deadline if client_left else loop.time()) - started)

    def offload(self, owner: int | None) -> Offload:
        """`function(*args)` of a user's request (`owner`; None: the operators') in a worker process, within its
        bounds: CPU-heavy Python that a thread would run holding the event loop's GIL. 429/503 EXTRACTION_BUSY
        when the user or the process has too much in progress, or the workers are that late."""

        async def run(function: Callable[..., Any], *args: Any) -> Any:
            try:
                return await self.call(function, *args, owner=owner)
            except LaneFull as busy:
                raise extraction_busy(busy) from None
            except TimeoutError:  # never sent unprotected, never waited for without end
                raise ExtractionBusy(per_user=False) from None

        return run

    async def _schedule(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # pebble starts the pool, and replaces the workers it killed, inside schedule(): a fork through the
        # forkserver that took tens of milliseconds of the event loop while abandoned files were being killed
        # (bench/attacks.py, extraction): submitted from a thread instead.
        submitting = asyncio.ensure_future(asyncio.to_thread(self._submit, function, args, kwargs))
        try:
            future = await asyncio.shield(submitting)
        except asyncio.CancelledError:
            submitting.add_done_callback(_cancel_submitted)  # submitted after all: withdrawn or its worker killed
            raise
        # Cancelling the awaiting task (client gone, deadline passed) cancels the job: pebble kills a worker
        # that is running it.
        return await asyncio.wrap_future(future)

    def _submit(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._starting:
            if self._closed:  # a submission that reached its thread as the app stopped: no pool started again
                raise RuntimeError("extractor closed")
            if self._pool is None:
                start_forkserver()
                # forkserver: workers never inherit the event loop's threads and sockets. Niced (by birth, and
                # by their initializer should another forkserver be running): the event loops of this
                # machine's services come before any extraction when CPU is short.
                context: Any = multiprocessing.get_context("forkserver")
                self._pool = pebble.ProcessPool(
                    max_workers=self.workers, context=context, initializer=prepare_worker, initargs=(WORKER_NICENESS,)
                )
            return self._pool.schedule(function, args=args, kwargs=kwargs, timeout=self.timeout_s)

    def close(self) -> None:
        with self._starting:
            self._closed = True
        if self._pool is not None:
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool.join(timeout=5)


def start_forkserver() -> None:
    """The process's forkserver, started (once) at WORKER_NICENESS with WORKER_MODULES imported: every worker it
    forks, the first ones and each one replacing a worker killed with its abandoned job, is born niced and ready.
    Forked from a forkserver at the services' priority, a worker spent its first ~25 ms of CPU there, then
    hundreds more at its own importing what it runs: per abandoned file, a burst that slowed everyone's chats
    (bench/attacks.py, extraction)."""
    multiprocessing.forkserver.set_forkserver_preload(WORKER_MODULES)
    starter = threading.Thread(target=_start_forkserver_niced, name="forkserver-start")
    starter.start()
    starter.join()


def _start_forkserver_niced() -> None:
    # On Linux a thread's niceness is its own, and what it starts inherits it: the services' threads keep theirs.
    at_least_niced(WORKER_NICENESS)
    multiprocessing.forkserver.ensure_running()


def _cancel_submitted(submitting: asyncio.Future[Any]) -> None:
    if not submitting.cancelled() and submitting.exception() is None:
        submitting.result().cancel()


def extraction_busy(busy: LaneFull | OutOfTime) -> ExtractionBusy:
    if isinstance(busy, OutOfTime):
        EXTRACTIONS_REFUSED.labels("user_time").inc()
        return ExtractionTimeSpent(busy.retry_after_s)
    EXTRACTIONS_REFUSED.labels("user" if busy.per_user else "process").inc()
    return ExtractionBusy(per_user=busy.per_user)


# Room in a chat's body for what is not the message or a file's content: names, keys, the conversation's id.
BODY_FRAME_BYTES = 65_536


def worker_free_body_max(settings: Settings) -> int:
    """The most a chat's body may weigh when none of its files needs a worker: the message and every file short
    enough to be read inline, at six bytes a character (JSON's `\\u00e9`), and their frame."""
    characters = settings.chat_message_max_chars + settings.chat_files_max_count * INLINE_MAX_CHARS
    return characters * 6 + BODY_FRAME_BYTES


def check_extraction_time(extractor: Extractor, settings: Settings, owner: int, body_bytes: int | None) -> None:
    """Before a body is read: one too heavy for files read without a worker, from a user whose extraction time is
    spent, is refused now (429 EXTRACTION_BUSY) instead of after its megabytes were parsed for a file refused anyway.
    A body of unknown length (chunked) is read, and its files checked one by one as before."""
    if body_bytes is None or body_bytes <= worker_free_body_max(settings):
        return
    try:
        extractor.time_budget.check(owner)
    except OutOfTime as spent:
        raise extraction_busy(spent) from None


def file_refused(name: str, problem: FileProblem, settings: Settings) -> FileRefused:
    return FileRefused(name, problem.fault, reason=problem.reason, limit_bytes=settings.chat_file_max_bytes)


def check_files(files: list[FileAttachment], settings: Settings) -> None:
    """What can be refused before decoding anything: count, names, and contents too long to fit once decoded."""
    if len(files) > settings.chat_files_max_count:
        raise TooManyFiles(settings.chat_files_max_count)
    for attachment in files:
        if PurePosixPath(attachment.name.lower()).suffix not in MIME_BY_EXTENSION:
            raise FileRefused(attachment.name, "type")
        if len(attachment.content) > settings.chat_file_max_bytes * BASE64_OVERHEAD + 1024:
            raise FileRefused(attachment.name, "size", limit_bytes=settings.chat_file_max_bytes)
    if sum(least_size(attachment.content) for attachment in files) > settings.chat_files_max_bytes:
        raise FilesTooLarge(settings.chat_files_max_bytes)


async def read_attachments(
    extractor: Extractor, files: list[FileAttachment], settings: Settings, *, owner: int
) -> list[ReadFile]:
    """The step: decode and extract every file (in parallel), check the sizes (check_files ran before the quota
    was reserved). The text is whole: what does not fit the message's budget is indexed or cut by the next step
    (services/chat/knowledge/consult.py)."""
    if not files:
        return []
    tasks = [asyncio.ensure_future(extract_one(extractor, attachment, settings, owner)) for attachment in files]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        refused = [task.exception() for task in done if isinstance(task.exception(), ExtractionBusy)]
        if refused:  # a file was refused a worker: the message is refused, its other files' work is for nothing
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise refused[0]  # type: ignore[misc]
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:  # the request cancelled (its client left): every file's job withdrawn or killed
            task.cancel(CLIENT_LEFT)
    for result in results:  # the first file's problem, in the order the user attached them
        if isinstance(result, BaseException):
            raise result
    extracted: list[ReadFile] = [r for r in results if isinstance(r, ReadFile)]
    if sum(f.size for f in extracted) > settings.chat_files_max_bytes:  # the exact sizes, once decoded
        raise FilesTooLarge(settings.chat_files_max_bytes)
    return extracted


async def extract_one(extractor: Extractor, attachment: FileAttachment, settings: Settings, owner: int) -> ReadFile:
    try:
        result = await extractor.run(
            attachment.content, max_bytes=settings.chat_file_max_bytes, max_pages=settings.pdf_max_pages, owner=owner
        )
    except (LaneFull, OutOfTime) as busy:
        raise extraction_busy(busy) from None
    except FileProblem as problem:
        raise file_refused(attachment.name, problem, settings) from None
    except TimeoutError:
        log.warning(
            "attachment_extraction_timeout",
            file_type=suffix_of(attachment.name),
            timeout_s=settings.extraction_timeout_s,
        )
        reason = f"extraction interrompue après {settings.extraction_timeout_s:g} s"
        raise FileRefused(attachment.name, "unreadable", reason=reason) from None
    suffix = PurePosixPath(attachment.name.lower()).suffix
    mime = "application/pdf" if result.kind == "pdf" else MIME_BY_EXTENSION.get(suffix, "text/plain")
    if mime == "application/pdf" and result.kind == "text":
        mime = "text/plain"  # a `.pdf` whose content is text already extracted (the spec's example)
    return ReadFile(attachment.name, mime, result.size, result.text, result.pages, len(result.text))


# What becomes of a file that does not fit the characters left: the file as the prompt shows it, and the characters
# left after it.
Overflow = Callable[[ReadFile, int], Awaitable[tuple[ReadFile, int]]]


async def place_in_budget(
    files: list[ReadFile], budget: int, overflow: Overflow | None = None
) -> tuple[list[ReadFile], int]:
    """Files in order while the budget of characters lasts; one that does not fit goes to `overflow` (by default
    it is cut where the budget ends). Returns the files as the prompt shows them and the characters left."""
    placed: list[ReadFile] = []
    left = budget
    for read in files:
        if len(read.text) <= left:
            placed.append(read)
            left -= len(read.text)
            continue
        shown, left = await overflow(read, left) if overflow else (cut(read, keep=left, limit=budget), 0)
        placed.append(shown)
    return placed, left


def cut(read: ReadFile, *, keep: int, limit: int) -> ReadFile:
    """The file's first `keep` characters, with a note naming file, page and character (`limit`: the limit named)."""
    kept = read.text[:keep]
    where = f"au caractère {thousands(keep)} sur {thousands(len(read.text))}"
    page = page_at(kept)
    if page is not None:
        where = f"à la page {page}, {where}"
    note = (
        f"[Contenu tronqué : le fichier {read.name} est coupé {where} "
        f"(limite de {thousands(limit)} caractères de fichiers par message).]"
    )
    log.warning("attachment_truncated", file_type=read.type, kept_chars=keep, total_chars=len(read.text), page=page)
    return ReadFile(read.name, read.type, read.size, kept, read.pages, read.chars, cut_note=note)


def page_at(text: str) -> int | None:
    """The page the text ends in: the last complete `[Page n/N]` marker (extraction.pdf_text writes them)."""
    markers = PAGE_MARKER.findall(text)
    return int(markers[-1]) if markers else None
