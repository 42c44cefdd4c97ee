"""The auth service's domain errors, and how a client sees each (the one place where they meet HTTP): the user
management steps' (services/auth/users.py, shared by the admin API and the `users` command, which prints their
message) and the login's."""

from __future__ import annotations

from shared.errors import ApiError, DomainError


class UserError(DomainError):
    """A management request that cannot be carried out; the message (French) is for the operator."""

    def api_error(self) -> ApiError:
        return ApiError(400, str(self), "VALIDATION_ERROR")


class UserNotFound(UserError):
    def api_error(self) -> ApiError:
        return ApiError(404, str(self), "NOT_FOUND")


class UserExists(UserError):
    def api_error(self) -> ApiError:
        return ApiError(409, str(self), "CONFLICT")


class LastAdmin(UserError):
    def __init__(self) -> None:
        super().__init__("Impossible : c'est le dernier administrateur actif")

    def api_error(self) -> ApiError:
        return ApiError(409, str(self), "CONFLICT")


class DirectoryAccount(UserError):
    def __init__(self) -> None:
        super().__init__("Ce compte vient de l'annuaire : son mot de passe se change dans l'annuaire, pas dans WIBOT")

    def api_error(self) -> ApiError:
        return ApiError(409, str(self), "DIRECTORY_ACCOUNT")


class DirectoryUnavailable(DomainError):
    """The directory did not answer (down, slow, refused the service account): never a 401."""

    def api_error(self) -> ApiError:
        return ApiError(
            503,
            "Annuaire d'entreprise indisponible : la connexion n'a pas pu être vérifiée. Réessayez dans quelques"
            " instants.",
            "DIRECTORY_UNAVAILABLE",
            headers={"Retry-After": "5"},
        )


class DirectoryBusy(DomainError):
    """This client address already has as many directory logins in progress as its share allows."""

    def api_error(self) -> ApiError:
        return ApiError(
            429,
            "Trop de connexions en cours depuis votre adresse. Réessayez dans quelques instants.",
            "RATE_LIMITED",
            headers={"Retry-After": "1"},
        )


class AccountConflict(DomainError):
    """A directory login whose username is a local admin's (break-glass accounts are never taken over)."""

    def api_error(self) -> ApiError:
        return ApiError(
            409,
            "Un compte local administrateur porte déjà ce nom : demandez à un administrateur de le renommer.",
            "ACCOUNT_CONFLICT",
        )


class LoginBusy(DomainError):
    """Every password-checking thread is taken and the queue is full."""

    def api_error(self) -> ApiError:
        return ApiError(
            503,
            "Trop de connexions simultanées. Réessayez dans quelques instants.",
            "LOGIN_BUSY",
            headers={"Retry-After": "1"},
        )
