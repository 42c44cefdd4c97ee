"""The one error type our code raises towards a client, and the envelope it becomes."""

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


def conversation_id_taken() -> ApiError:
    return ApiError(409, ID_TAKEN_MESSAGE, "CONVERSATION_ID_TAKEN")


def too_many_conversations(limit: int) -> ApiError:
    return ApiError(
        409, f"Nombre maximal de conversations atteint ({limit}) : supprimez-en avant d'en créer", "CONVERSATION_LIMIT"
    )


class ApiError(Exception):
    """An error the client should see: HTTP status, French message, optional machine code."""

    def __init__(
        self, status: int, message: str, code: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_envelope(message: str, code: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message}
    if code:
        body["code"] = code
    return body
