"""The chat service's domain errors, and how a client sees each: the one place where they meet HTTP.

The steps (workflow, quota, admission, attachments, extraction, knowledge, llm) raise these with what happened;
the error middleware (and the stream writer, after the first byte) turns them into the envelope through
`api_error()` (hail's auth/exceptions.py gives each exception its `http_response()` the same way).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from services.chat.french import human_size, thousands
from shared.errors import ApiError, DomainError

ACCEPTED_TYPES = "PDF, TXT, MD, CSV, JSON"


class OverLimit(DomainError):
    """A limit reached; `limit` is the one a client is told."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class MessageEmpty(DomainError):
    def api_error(self) -> ApiError:
        return ApiError(400, "Le champ message ne peut pas être vide", "VALIDATION_ERROR")


class MessageTooLong(OverLimit):
    def api_error(self) -> ApiError:
        return ApiError(400, f"Le message dépasse {self.limit} caractères", "VALIDATION_ERROR")


class ChatBusy(OverLimit):
    """The user already has their share of chats in progress in this process."""

    def api_error(self) -> ApiError:
        return ApiError(
            429,
            f"Vous avez déjà {self.limit} messages en cours de traitement : attendez leur réponse avant d'en envoyer"
            " d'autres.",
            "CHAT_BUSY",
            headers={"Retry-After": "2"},
        )


class QuotaExceeded(OverLimit):
    """The month's quota (`limit`, in tokens) cannot hold this request."""

    def api_error(self) -> ApiError:
        return ApiError(429, f"Quota tokens mensuel dépassé. Limite : {self.limit:,} tokens/mois.", "QUOTA_EXCEEDED")


class TooManyFiles(OverLimit):
    def api_error(self) -> ApiError:
        return ApiError(413, f"Trop de fichiers : {self.limit} au maximum", "FILES_TOO_LARGE")


class FilesTooLarge(OverLimit):
    """All the files together, once decoded (`limit` in bytes)."""

    def api_error(self) -> ApiError:
        return ApiError(
            413, f"Fichiers trop volumineux : {human_size(self.limit)} au total au maximum", "FILES_TOO_LARGE"
        )


class PersonalDataRefused(DomainError):
    """PERSONAL_DATA=block: the message or a file holds identifiers (`kinds`, their placeholder names)."""

    def __init__(self, kinds: list[str]) -> None:
        super().__init__(kinds)
        self.kinds = kinds

    def api_error(self) -> ApiError:
        named = ", ".join(PERSONAL_DATA_NAMES.get(kind, kind) for kind in self.kinds)
        return ApiError(
            422,
            f"Données personnelles détectées ({named}) : retirez-les avant d'envoyer votre message.",
            "PERSONAL_DATA",
        )


PERSONAL_DATA_NAMES = {
    "NIR": "numéro de sécurité sociale",
    "IBAN": "IBAN",
    "CARTE": "numéro de carte bancaire",
    "TEL": "numéro de téléphone",
    "EMAIL": "adresse e-mail",
    "NOM": "nom de personne",
}


FileFault = Literal["type", "size", "unreadable"]


class FileRefused(DomainError):
    """One file that cannot be used: of a type we do not read, too large, or unreadable (`reason`, in French)."""

    def __init__(self, name: str, fault: FileFault, *, reason: str = "", limit_bytes: int = 0) -> None:
        super().__init__(name, fault, reason)
        self.name, self.fault, self.reason, self.limit_bytes = name, fault, reason, limit_bytes

    def api_error(self) -> ApiError:
        """The user is told their file's name; the log only its extension (a name may hold a resident's name or
        number, #45)."""
        if self.fault == "type":
            return self._error(415, "Type de fichier non pris en charge : ", f". Types acceptés : {ACCEPTED_TYPES}.",
                               "FILE_UNSUPPORTED_TYPE")  # fmt: skip
        if self.fault == "size":
            limit = human_size(self.limit_bytes)
            return self._error(413, "Fichier trop volumineux : ", f" ({limit} au maximum)", "FILES_TOO_LARGE")
        return self._error(422, "Fichier illisible : ", f" ({self.reason}).", "FILE_UNREADABLE")

    def _error(self, status: int, before: str, after: str, code: str) -> ApiError:
        extension = PurePosixPath(self.name.lower()).suffix[:10] or "sans extension"
        return ApiError(status, before + self.name + after, code, logged=f"{before}<fichier {extension}>{after}")


class ExtractionBusy(DomainError):
    """The extraction workers' queue is full, for this user (`per_user`) or for the whole process."""

    def __init__(self, *, per_user: bool) -> None:
        super().__init__(per_user)
        self.per_user = per_user

    def api_error(self) -> ApiError:
        if self.per_user:
            return ApiError(
                429,
                "Vos fichiers précédents sont encore en cours d'analyse : attendez leur réponse avant d'en envoyer"
                " d'autres.",
                "EXTRACTION_BUSY",
                headers={"Retry-After": "5"},
            )
        return ApiError(
            503,
            "Trop de fichiers en cours d'analyse. Réessayez dans quelques instants.",
            "EXTRACTION_BUSY",
            headers={"Retry-After": "5"},
        )


class ExtractionTimeSpent(ExtractionBusy):
    """The user's files have kept the extraction workers busy as long as EXTRACTION_SECONDS_PER_USER_PER_MINUTE
    allows for now."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(per_user=True)
        self.retry_after_s = retry_after_s

    def api_error(self) -> ApiError:
        return ApiError(
            429,
            "Vos fichiers ont demandé beaucoup de temps d'analyse ces dernières minutes : réessayez dans"
            f" {self.retry_after_s} s.",
            "EXTRACTION_BUSY",
            headers={"Retry-After": str(self.retry_after_s)},
        )


class ConversationFull(OverLimit):
    """The conversation holds KB_CONVERSATION_MAX_CHUNKS indexed passages already."""

    def api_error(self) -> ApiError:
        return ApiError(
            413,
            f"Cette conversation a déjà {thousands(self.limit)} passages de fichiers indexés, sa limite : démarrez"
            " une nouvelle conversation pour ce fichier.",
            "KB_CONVERSATION_FULL",
        )


class UserAttachmentsFull(OverLimit):
    """The user's conversations hold KB_USER_MAX_CHUNKS indexed passages already."""

    def api_error(self) -> ApiError:
        return ApiError(
            429,
            f"Vos conversations ont déjà {thousands(self.limit)} passages de fichiers indexés, votre limite :"
            " supprimez d'anciennes conversations avec pièces jointes pour en indexer d'autres.",
            "KB_USER_FULL",
        )


UNAVAILABLE_MESSAGE = "Le service IA est momentanément indisponible. Réessayez dans quelques instants."
TIMEOUT_MESSAGE = "Le service IA met trop de temps à répondre. Réessayez dans quelques instants."
BAD_REPLY_MESSAGE = "Le service IA a renvoyé une réponse inexploitable. Réessayez dans quelques instants."

ModelFault = Literal["busy", "unreachable", "failed", "bad_reply", "timeout"]


MODEL_RETRY_AFTER_S = 10


class ModelFailed(DomainError):
    """The model server did not answer usefully: `busy` (its 429/503), `unreachable`, `failed` (another error),
    `bad_reply` (an answer we cannot use), `timeout`."""

    def __init__(self, fault: ModelFault) -> None:
        super().__init__(fault)
        self.fault = fault

    def api_error(self) -> ApiError:
        retry = {"Retry-After": str(MODEL_RETRY_AFTER_S)}  # a client (n8n's retry, a script) waits, then asks again
        if self.fault == "timeout":
            return ApiError(504, TIMEOUT_MESSAGE, "LLM_TIMEOUT", headers=retry)
        if self.fault in ("busy", "unreachable"):
            return ApiError(503, UNAVAILABLE_MESSAGE, "LLM_UNAVAILABLE", headers=retry)
        message = BAD_REPLY_MESSAGE if self.fault == "bad_reply" else UNAVAILABLE_MESSAGE
        return ApiError(502, message, "LLM_UNAVAILABLE", headers=retry)


class KnowledgeNotConfigured(DomainError):
    def api_error(self) -> ApiError:
        return ApiError(503, "Base de connaissances non configurée (KB_ROOT).", "KB_NOT_CONFIGURED")


class KnowledgePathRefused(DomainError):
    """A path to ingest that is not one (`invalid`), leaves the knowledge base (`outside`) or is not there."""

    def __init__(self, fault: Literal["invalid", "outside", "not_found"], path: str) -> None:
        super().__init__(fault, path)
        self.fault, self.path = fault, path

    def api_error(self) -> ApiError:
        if self.fault == "outside":
            return ApiError(400, "Chemin hors de la base de connaissances.", "KB_PATH_OUTSIDE")
        if self.fault == "not_found":
            return ApiError(400, f"Chemin introuvable dans la base de connaissances : {self.path}", "KB_PATH_NOT_FOUND")
        return ApiError(400, "Chemin invalide.", "VALIDATION_ERROR")


class KnowledgeBusy(DomainError):
    """Another process is ingesting."""

    def api_error(self) -> ApiError:
        return ApiError(409, "Une indexation de la base de connaissances est déjà en cours.", "KB_BUSY")
