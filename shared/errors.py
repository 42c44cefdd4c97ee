"""The one error type our code raises towards a client, and the envelope it becomes."""

from __future__ import annotations

from typing import Any

SERVER_ERROR_MESSAGE = "Erreur serveur. Réessayez dans quelques instants."
INVALID_TOKEN_MESSAGE = "Token invalide ou expiré"
FORBIDDEN_CONVERSATION_MESSAGE = "Vous n'avez pas accès à cette conversation"


class ApiError(Exception):
    """An error the client should see: HTTP status, French message, optional machine code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def error_envelope(message: str, code: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message}
    if code:
        body["code"] = code
    return body
