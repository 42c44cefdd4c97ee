"""Data protection steps of the chat workflow (PERSONAL_DATA: off | pseudonymise | block).

`refuse_personal_data`: in block mode, the user's new input (message, attachments) with identifiers is a 422
before anything costs. `pseudonymise`: everything the model is sent (memory, message, attachments, passages) with
identifiers replaced by placeholders; the reply is put back by `Protected.pseudonyms` (whole or streamed), so the
user sees, and the database stores, their own values. `for_embedding`: texts sent to the embedding model (the same
cloud) with each identifier replaced by its kind. Logs and metrics carry counts per kind, never a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from services.chat.errors import PersonalDataRefused
from services.chat.privacy.detect import KINDS, find_identifiers, replace_found
from services.chat.privacy.pseudonyms import Pseudonyms
from shared import Settings, get_logger
from shared.metrics import PERSONAL_DATA_FOUND

if TYPE_CHECKING:  # the embedding client, which retrieval uses, calls for_embedding
    from services.chat.attachments import ReadFile
    from services.chat.knowledge.retrieval import Passage

log = get_logger("wibot.privacy")

__all__ = ["Offload", "Protected", "Pseudonyms", "for_embedding", "pseudonymise", "refuse_personal_data"]

MODEL_INSTRUCTIONS = """

## Données personnelles
Des données personnelles ont été remplacées par des marqueurs comme [NIR_1], [TEL_1] ou [EMAIL_1] : reprends \
ces marqueurs tels quels quand tu en as besoin, sans chercher à deviner ce qu'ils cachent."""


def refuse_personal_data(settings: Settings, texts: list[str]) -> None:
    """PERSONAL_DATA=block: PersonalDataRefused naming the kinds found in the user's new input."""
    if settings.personal_data != "block":
        return
    kinds = Counter(
        found.kind for text in texts for found in find_identifiers(text, names=settings.personal_data_names)
    )
    if kinds:
        for kind, count in kinds.items():
            PERSONAL_DATA_FOUND.labels(kind, "refused").inc(count)
        log.info("personal_data_refused", **{kind.lower(): count for kind, count in kinds.items()})
        raise PersonalDataRefused([kind for kind in KINDS if kind in kinds])


@dataclass(frozen=True, slots=True)
class Protected:
    """What the model is sent, and how to put the user's values back in its reply."""

    memory: list[dict[str, str]]
    message: str
    files: list[ReadFile]
    passages: list[Passage]
    pseudonyms: Pseudonyms
    instructions: str  # for the system prompt, when something was replaced


# About 130-180 µs per KB of tickets (bench/RESULTS.md): beyond this much text (~2 ms), in a worker process. A
# thread was not enough: the detectors are Python holding the GIL, and a long conversation's 300,000 characters
# re-read at each turn (40 ms) held the event loop back for every other user's request (bench/attacks.py).
IN_WORKER_ABOVE_CHARS = 16_000

Offload = Callable[..., Awaitable[Any]]  # function, *args -> its result, computed in a worker process


async def pseudonymise(
    settings: Settings,
    memory: list[dict[str, str]],
    message: str,
    files: list[ReadFile],
    passages: list[Passage],
    *,
    offload: Offload,
) -> Protected:
    """Placeholders numbered in this order (memory first): a value keeps its number while the model sees it."""
    names = settings.personal_data_names
    if settings.personal_data == "off":
        return Protected(memory, message, files, passages, Pseudonyms(names=names), "")
    size = len(message) + sum(len(m["content"]) for m in memory) + sum(len(r.text) for r in files)
    if size > IN_WORKER_ABOVE_CHARS:
        protected: Protected = await offload(masked, names, memory, message, files, passages)
    else:
        protected = masked(names, memory, message, files, passages)
    if protected.pseudonyms.masked:  # counted here: a worker process's metrics are nobody's
        for kind, count in protected.pseudonyms.masked.items():
            PERSONAL_DATA_FOUND.labels(kind, "pseudonymised").inc(count)
        log.info("personal_data_pseudonymised", **{k.lower(): n for k, n in protected.pseudonyms.masked.items()})
    return protected


def masked(
    names: bool, memory: list[dict[str, str]], message: str, files: list[ReadFile], passages: list[Passage]
) -> Protected:
    pseudonyms = Pseudonyms(names=names)
    pseudonyms.keep_typed(
        [item["content"] for item in memory] + [message]
        + [text for read in files for text in (read.name, read.text)]
        + [text for passage in passages for text in (passage.source, passage.content)]
    )  # fmt: skip
    mask = pseudonyms.mask
    return Protected(
        memory=[item | {"content": mask(item["content"])} for item in memory],
        message=mask(message),
        files=[
            replace(read, name=mask(read.name), text=mask(read.text), cut_note=read.cut_note and mask(read.cut_note))
            for read in files
        ],
        passages=[replace(p, source=mask(p.source), content=mask(p.content)) for p in passages],
        pseudonyms=pseudonyms,
        instructions=MODEL_INSTRUCTIONS if pseudonyms.masked else "",
    )


async def for_embedding(settings: Settings, texts: list[str], *, offload: Offload) -> list[str]:
    """Each identifier replaced by its kind (`[NIR]`): what a passage is about survives, the value does not."""
    if settings.personal_data == "off":
        return texts
    if sum(len(text) for text in texts) > IN_WORKER_ABOVE_CHARS:
        kinds: list[str] = await offload(kinds_only, texts, settings.personal_data_names)
        return kinds
    return kinds_only(texts, settings.personal_data_names)


def kinds_only(texts: list[str], names: bool) -> list[str]:
    return [_kinds_only(text, names=names) for text in texts]


def _kinds_only(text: str, *, names: bool) -> str:
    found = find_identifiers(text, names=names)
    return replace_found(text, found, lambda item: f"[{item.kind}]") if found else text
