"""Data protection steps of the chat workflow (PERSONAL_DATA: off | pseudonymise | block).

`refuse_personal_data`: in block mode, the user's new input (message, attachments) with identifiers is a 422
before anything costs. `pseudonymise`: everything the model is sent (memory, message, attachments, passages) with
identifiers replaced by placeholders; the reply is put back by `Protected.pseudonyms` (whole or streamed), so the
user sees, and the database stores, their own values. `for_embedding`: texts sent to the embedding model (the same
cloud) with each identifier replaced by its kind. Logs and metrics carry counts per kind, never a value.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from services.chat.errors import PersonalDataRefused
from services.chat.privacy.detect import KINDS, find_identifiers, replace_found
from services.chat.privacy.pseudonyms import Pseudonyms
from shared import Settings, get_logger
from shared.metrics import PERSONAL_DATA_FOUND

if TYPE_CHECKING:  # the embedding client, which retrieval uses, calls for_embedding
    from services.chat.attachments import ReadFile
    from services.chat.knowledge.retrieval import Passage

log = get_logger("wibot.privacy")

__all__ = ["Protected", "Pseudonyms", "for_embedding", "pseudonymise", "refuse_personal_data"]

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


# About 180 µs per KB of tickets (bench/RESULTS.md): beyond this much text, off the event loop.
IN_THREAD_ABOVE_CHARS = 32_000


async def pseudonymise(
    settings: Settings, memory: list[dict[str, str]], message: str, files: list[ReadFile], passages: list[Passage]
) -> Protected:
    """Placeholders numbered in this order (memory first): a value keeps its number while the model sees it."""
    size = len(message) + sum(len(m["content"]) for m in memory) + sum(len(r.text) for r in files)
    if settings.personal_data != "off" and size > IN_THREAD_ABOVE_CHARS:
        return await asyncio.to_thread(_pseudonymise, settings, memory, message, files, passages)
    return _pseudonymise(settings, memory, message, files, passages)


def _pseudonymise(
    settings: Settings, memory: list[dict[str, str]], message: str, files: list[ReadFile], passages: list[Passage]
) -> Protected:
    pseudonyms = Pseudonyms(names=settings.personal_data_names)
    if settings.personal_data == "off":
        return Protected(memory, message, files, passages, pseudonyms, "")
    mask = pseudonyms.mask
    protected = Protected(
        memory=[item | {"content": mask(item["content"])} for item in memory],
        message=mask(message),
        files=[replace(read, name=mask(read.name), text=mask(read.text)) for read in files],
        passages=[replace(p, source=mask(p.source), content=mask(p.content)) for p in passages],
        pseudonyms=pseudonyms,
        instructions=MODEL_INSTRUCTIONS if pseudonyms.masked else "",
    )
    if pseudonyms.masked:
        for kind, count in pseudonyms.masked.items():
            PERSONAL_DATA_FOUND.labels(kind, "pseudonymised").inc(count)
        log.info("personal_data_pseudonymised", **{kind.lower(): n for kind, n in pseudonyms.masked.items()})
    return protected


def for_embedding(settings: Settings, texts: list[str]) -> list[str]:
    """Each identifier replaced by its kind (`[NIR]`): what a passage is about survives, the value does not."""
    if settings.personal_data == "off":
        return texts
    return [_kinds_only(text, names=settings.personal_data_names) for text in texts]


def _kinds_only(text: str, *, names: bool) -> str:
    found = find_identifiers(text, names=names)
    return replace_found(text, found, lambda item: f"[{item.kind}]") if found else text
