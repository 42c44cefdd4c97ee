"""The one error type our code raises towards a client, and the envelope it becomes; the base of the domain's
errors, which carry what happened and say once, in their service's errors module, how a client sees it."""

from __future__ import annotations

from typing import Any

SERVER_ERROR_MESSAGE = "Erreur serveur. Réessayez dans quelques instants."
INVALID_TOKEN_MESSAGE = "Token invalide ou expiré"
FORBIDDEN_CONVERSATION_MESSAGE = "Vous n'avez pas accès à cette conversation"
# A conversation id is chosen by the client: one already used by someone else is reported as taken, with a code
# a client recovers from by drawing a new id (see README, "Conversation ids").
ID_TAKEN_MESSAGE = (
    "Cet identifiant de conversation est déjà utilisé par un autre utilisateur : démarrez une nouvelle conversation"
)


class ApiError(Exception):
    """An error the client should see: HTTP status, French message, optional machine code."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        logged: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        # What the log says instead of `message`, when the message holds what the user wrote (a file's name).
        self.logged = logged if logged is not None else message


def error_envelope(message: str, code: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message}
    if code:
        body["code"] = code
    return body


class DomainError(Exception):
    """What went wrong, in the domain's words; `api_error()` is how a client sees it (the error middleware calls it)."""

    def api_error(self) -> ApiError:
        raise NotImplementedError


class ConversationIdTaken(DomainError):
    def api_error(self) -> ApiError:
        return ApiError(409, ID_TAKEN_MESSAGE, "CONVERSATION_ID_TAKEN")


class TooManyConversations(DomainError):
    """MAX_CONVERSATIONS_PER_USER reached (chat's first message and the conversations API both create them)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def api_error(self) -> ApiError:
        return ApiError(
            409,
            f"Nombre maximal de conversations atteint ({self.limit}) : supprimez-en avant d'en créer",
            "CONVERSATION_LIMIT",
        )


class RateLimited(DomainError):
    def __init__(self, *, label: str, per_minute: int, retry_after_s: int, burst: int = 0) -> None:
        super().__init__(label, per_minute, retry_after_s, burst)
        self.label, self.per_minute, self.retry_after_s, self.burst = label, per_minute, retry_after_s, burst

    def api_error(self) -> ApiError:
        at_once = f" ({self.burst} à la suite au plus)" if 0 < self.burst < self.per_minute else ""
        return ApiError(
            429,
            f"Trop de {self.label} : {self.per_minute} par minute au maximum{at_once}."
            f" Réessayez dans {self.retry_after_s} s.",
            "RATE_LIMITED",
            headers={"Retry-After": str(self.retry_after_s)},
        )
