"""How a client sees what goes wrong at the Safeguard gateway (the one place where it meets HTTP)."""

from __future__ import annotations

from shared.errors import ApiError, DomainError

UNAVAILABLE_MESSAGE = "Serveur Safeguard non disponible"


class SafeguardForbidden(DomainError):
    """Below N1: no access to Safeguard at all."""

    def api_error(self) -> ApiError:
        return ApiError(403, "Accès Safeguard réservé aux niveaux N1 et plus", "FORBIDDEN")


class SafeguardDown(DomainError):
    """A decision or a detail could not be had from the server (never reported as done)."""

    def api_error(self) -> ApiError:
        return ApiError(503, UNAVAILABLE_MESSAGE, "SAFEGUARD_UNAVAILABLE", headers={"Retry-After": "10"})


class RequestNotFound(DomainError):
    def api_error(self) -> ApiError:
        return ApiError(404, "Demande Safeguard introuvable", "NOT_FOUND")


class RequestNotPending(DomainError):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status  # the request's own: pending (then expired), approved, rejected…

    def api_error(self) -> ApiError:
        state = "expirée" if self.status == "pending" else f"déjà traitée ({self.status})"
        return ApiError(409, f"Demande Safeguard {state}", "SAFEGUARD_NOT_PENDING")


class AccreditationTooLow(DomainError):
    def __init__(self, user_level: str, request_level: str) -> None:
        super().__init__(user_level, request_level)
        self.user_level, self.request_level = user_level, request_level

    def api_error(self) -> ApiError:
        return ApiError(
            403,
            f"Niveau d'accréditation insuffisant : {self.user_level} pour une demande {self.request_level}",
            "ACCREDITATION_TOO_LOW",
        )


class DecisionRefused(DomainError):
    """The server refused the decision; `reason` is its own words (cut) or ours."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def api_error(self) -> ApiError:
        return ApiError(409, f"Safeguard : {self.reason}", "SAFEGUARD_REFUSED")
