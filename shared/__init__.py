"""WIBOT's common package: settings, JWT, error envelope, DB pool, logging, HTTP base and contracts."""

from shared import audit
from shared.auth import authenticated, current_user, decode_token, issue_token
from shared.bodies import parse_body, read_json_object, validate
from shared.db import DB_UNAVAILABLE_ERRORS, create_pool, current_month
from shared.errors import FORBIDDEN_CONVERSATION_MESSAGE, SERVER_ERROR_MESSAGE, ApiError
from shared.http import base_app
from shared.identity import CurrentUser
from shared.keys import AppKeys, RequestKeys
from shared.logs import configure_logging, get_logger
from shared.migrations import DatabaseBehind, apply_migrations
from shared.responses import json_response
from shared.settings import Settings, load_settings_or_exit

__all__ = [
    "DB_UNAVAILABLE_ERRORS",
    "FORBIDDEN_CONVERSATION_MESSAGE",
    "SERVER_ERROR_MESSAGE",
    "ApiError",
    "AppKeys",
    "CurrentUser",
    "DatabaseBehind",
    "RequestKeys",
    "Settings",
    "apply_migrations",
    "audit",
    "authenticated",
    "base_app",
    "configure_logging",
    "create_pool",
    "current_month",
    "current_user",
    "decode_token",
    "get_logger",
    "issue_token",
    "json_response",
    "load_settings_or_exit",
    "parse_body",
    "read_json_object",
    "validate",
]
