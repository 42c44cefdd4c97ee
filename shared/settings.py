"""Configuration from the environment: one class for every service, every limit a setting."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.directory_settings import DirectorySettings

MIN_JWT_SECRET_BYTES = 32
# A secret drawn at random does not compress (zlib makes 32 random hex characters longer, never shorter: 200,000
# draws, ratio >= 1.06); "x" * 40 (0.30) or a repeated word (0.47-0.53) shrinks to half or less.
MIN_JWT_SECRET_COMPRESSION_RATIO = 0.8
# The placeholder of .env.example: anyone who read the example could forge an admin token with it.
PLACEHOLDER_MARK = "change-me"


def compression_ratio(secret: str) -> float:
    data = secret.encode()
    return len(zlib.compress(data, 9)) / len(data)


class DatabaseSettings(BaseSettings):
    """Where the database is: all `make migrate` needs (no JWT secret required to upgrade a schema)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = Field(None, description="postgresql:// DSN; overrides the POSTGRES_* variables")
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "wibot"
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    db_pool_min: int = Field(1, ge=0)
    db_pool_max: int = Field(10, ge=1)
    db_command_timeout_s: float = Field(10.0, gt=0, description="Per-statement timeout (client side)")
    db_startup_wait_s: float = Field(30.0, ge=0, description="How long a starting service waits for the database")
    existing_rows_timezone: str = Field(
        "UTC",
        description="Time zone of the dates already in a database moved from n8n (read once, by its first migrate)",
    )

    @field_validator("existing_rows_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Paris)") from None
        return value

    @property
    def dsn(self) -> str:
        if self.database_url:
            return self.database_url
        password = self.postgres_password.get_secret_value()
        credentials = quote(self.postgres_user) + (f":{quote(password)}" if password else "")
        return f"postgresql://{credentials}@{self.postgres_host}:{self.postgres_port}/{quote(self.postgres_db)}"


class Settings(DirectorySettings, DatabaseSettings):
    # --- security -------------------------------------------------------------------------------
    jwt_secret: SecretStr = Field(description="HS256 signing key, at least 32 bytes (required)")
    jwt_secret_previous: SecretStr | None = Field(
        None, description="During a rotation: the former key, accepted to verify tokens, never to sign"
    )
    jwt_ttl_seconds: int = Field(8 * 3600, gt=0, description="Token lifetime (spec: 8 h)")
    bcrypt_rounds: int = Field(10, ge=4, le=16, description="bcrypt cost for new password hashes")
    bcrypt_workers: int | None = Field(
        None, ge=1, description="Threads checking passwords per auth process (unset: one core fewer than the machine)"
    )
    bcrypt_max_pending: int = Field(
        64, ge=1, description="Password checks running or waiting per auth process; beyond, login is a 503"
    )

    # --- HTTP limits ----------------------------------------------------------------------------
    # A 10 MB file is ~13.4 MB of JSON once base64-encoded: room for the per-request file total below.
    max_body_bytes: int = Field(24 * 1024 * 1024, gt=0, description="Largest request body accepted (413 beyond)")
    refusals_before_pacing: int = Field(
        20, ge=0, description="429s one user gets at once within 10 s; beyond, each waits REFUSAL_PACING_S"
    )
    refusal_pacing_s: float = Field(
        1.0, ge=0, le=30, description="How long a 429 beyond REFUSALS_BEFORE_PACING is held (0: never held)"
    )

    # --- chat -----------------------------------------------------------------------------------
    chat_message_max_chars: int = Field(32_000, gt=0)
    chat_files_max_count: int = Field(10, ge=0)
    chat_file_max_bytes: int = Field(10 * 1024 * 1024, ge=0, description="Decoded size of one file (the frontend's)")
    chat_files_max_bytes: int = Field(16 * 1024 * 1024, ge=0, description="Decoded size of all files of a message")
    chat_files_max_chars: int = Field(
        120_000, gt=0, description="Characters of extracted text sent to the model per message (cut beyond)"
    )
    pdf_max_pages: int = Field(500, gt=0, description="A PDF with more pages is refused (422)")
    extraction_timeout_s: float = Field(20.0, gt=0, description="Decoding + extraction of one file (422 beyond)")
    extraction_workers: int = Field(2, ge=1, description="Processes extracting files (PDF) off the event loop")
    extraction_max_jobs: int = Field(
        40, ge=0, description="Files being extracted or waiting, per process (503 EXTRACTION_BUSY beyond; 0: no bound)"
    )
    extraction_max_jobs_per_user: int = Field(
        10, ge=0, description="Of them, one user's (429 EXTRACTION_BUSY beyond: a message's files fit; 0: no bound)"
    )
    extraction_seconds_per_user_per_minute: float = Field(
        30.0, ge=0,
        description="How long one user's files may keep the extraction workers busy, on average, a minute's worth"
        " at once (429 EXTRACTION_BUSY with Retry-After beyond; 0: no bound)",
    )  # fmt: skip
    chat_memory_messages: int = Field(10, ge=0, description="History window sent to the model")
    default_quota_tokens: int = Field(50_000, ge=0)
    chat_requests_per_minute: int = Field(30, ge=0, description="Chat requests per user and minute (0: no limit)")
    chat_burst: int = Field(
        5, ge=0, description="Of them, how many at once; then one every 60/CHAT_REQUESTS_PER_MINUTE s (0: a minute's)"
    )
    chat_concurrent_per_user: int = Field(
        4, ge=0, description="Chats of one user in progress at once, per process (429 CHAT_BUSY beyond; 0: no limit)"
    )
    conversation_creations_per_minute: int = Field(
        20, ge=0, description="Conversations a user may create per minute (0: no limit)"
    )
    max_conversations_per_user: int = Field(5_000, ge=0, description="Conversations a user may keep (0: no limit)")
    reservation_stale_after_s: float = Field(
        300.0, gt=0, description="A quota reservation older than this belongs to a dead request: refunded"
    )
    reservation_sweep_every_s: float = Field(60.0, gt=0, description="How often each chat process sweeps them")
    system_prompt_file: Path | None = Field(None, description="Replaces the built-in WIBOT system prompt")
    mode_prompt_flash_file: Path | None = Field(None, description="Replaces the built-in addition for mode flash")
    mode_prompt_code_file: Path | None = Field(None, description="Replaces the built-in addition for mode code")
    mode_prompt_redaction_file: Path | None = Field(None, description="Replaces the built-in addition for redaction")

    # --- data protection ------------------------------------------------------------------------
    personal_data: Literal["off", "pseudonymise", "block"] = Field(
        "pseudonymise",
        description="Identifiers (NIR, IBAN, card, phone, e-mail) in what the model is sent: replaced by placeholders"
        " and put back in the reply, refused (422 PERSONAL_DATA), or sent as they are",
    )
    personal_data_names: bool = Field(
        False, description="Also replace person names introduced by a civility or a care word (Mme, Dr, patient…)"
    )

    retention_days: int = Field(
        0, ge=0, description="Conversations without activity for this many days are deleted (0: kept for ever)"
    )
    retention_purge_every_s: float = Field(3600.0, gt=0, description="How often the conversations service purges")
    audit_retention_days: int = Field(
        365, ge=180, description="Audit trail rows kept this long (the database refuses to delete younger than 180)"
    )
    data_exports_per_minute: int = Field(2, ge=0, description="GET /webhook/wibot/user/export per user and minute")

    # --- model ----------------------------------------------------------------------------------
    mistral_api_key: SecretStr | None = None
    mistral_server_url: str = "https://api.mistral.ai"
    mistral_model: str = "mistral-large-latest"
    mistral_model_flash: str | None = None
    mistral_model_code: str | None = None
    mistral_model_redaction: str | None = None
    mistral_temperature: float = Field(0.7, ge=0, le=2)
    mistral_top_p: float = Field(1.0, gt=0, le=1)
    mistral_max_tokens: int = Field(2000, gt=0)
    mistral_timeout_s: float = Field(60.0, gt=0, description="One model call, retries included")
    mistral_retry_max_elapsed_s: float = Field(20.0, ge=0, description="Stop retrying 429/5xx after this")
    mistral_retry_initial_ms: int = Field(500, ge=0)
    stream_heartbeat_s: float = Field(15.0, gt=0, description="A streamed reply sends a heartbeat when this quiet")

    # --- knowledge base (RAG) -------------------------------------------------------------------
    kb_root: Path | None = Field(None, description="Folder of the site's documents; ingestion never leaves it")
    kb_embedding_model: str = Field("mistral-embed", description="Embedding model (through the mistralai SDK)")
    kb_embedding_batch: int = Field(32, ge=1, le=512, description="Chunks embedded per request")
    kb_chunk_chars: int = Field(1_000, ge=100, description="Characters per chunk")
    kb_chunk_overlap: int = Field(200, ge=0, description="Characters shared by two neighbouring chunks")
    kb_file_max_bytes: int = Field(50 * 1024 * 1024, gt=0, description="A larger document is skipped, and said so")
    kb_top_k: int = Field(5, ge=0, description="Passages given to the model per message (0: retrieval off)")
    kb_min_similarity: float = Field(
        0.75, ge=-1, le=1, description="Cosine below which a passage found by meaning alone is not used"
    )
    kb_context_max_chars: int = Field(6_000, gt=0, description="Characters of passages added to the prompt")
    kb_retrieval_timeout_s: float = Field(
        2.0, gt=0, description="A retrieval statement slower than this is cancelled: the chat goes on without passages"
    )
    kb_sync_every_s: float = Field(
        0.0, ge=0, description="Incremental sync of KB_ROOT at start and every N seconds (0: off)"
    )
    kb_charge_embeddings: bool = Field(
        False, description="Charge the tokens of a question's embedding to the user (an attachment's always are)"
    )
    kb_attachment_max_chunks: int = Field(
        2_000, ge=1, description="Chunks indexed per attachment at most (the rest of a larger file is left out)"
    )
    kb_conversation_max_chunks: int = Field(
        4_000, ge=0, description="Chunks of attachments one conversation may keep indexed (413 beyond; 0: no cap)"
    )
    kb_user_max_chunks: int = Field(
        20_000, ge=0, description="Chunks of attachments one user may keep indexed, all conversations (429 beyond)"
    )
    kb_index_attachments: bool = Field(
        True, description="Attachments over CHAT_FILES_MAX_CHARS are indexed for their conversation, not cut"
    )
    kb_vector_search: Literal["auto", "in_process"] = Field(
        "auto",
        description="auto: the database searches the vectors where it has pgvector (migration 0016), else each chat"
        " process holds them; in_process: always the latter",
    )
    kb_hnsw_ef_search: int = Field(
        200, ge=1, le=1000, description="pgvector path: candidates the HNSW search keeps (recall against latency)"
    )

    # --- safeguard (approval of AI tool calls, held by an external Safeguard/MCP server) ---------
    safeguard_url: str | None = Field(None, description="Base URL of the Safeguard server (unset: not available)")
    safeguard_auth_header: SecretStr | None = Field(
        None, description="Header sent to the Safeguard server, `Name: value` (e.g. `X-API-Key: …`)"
    )
    safeguard_timeout_s: float = Field(10.0, gt=0, description="One call to the Safeguard server")

    # --- operations -----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="uvloop (libuv, faster); asyncio: the standard loop, should uvloop ever misbehave"
    )
    quota_alert_webhook_url: str | None = None

    @property
    def verification_secrets(self) -> list[str]:
        """Keys a token may be signed with: the current one first, then the previous one during a rotation."""
        previous = self.jwt_secret_previous.get_secret_value() if self.jwt_secret_previous else ""
        return [self.jwt_secret.get_secret_value(), *([previous] if previous else [])]

    @field_validator("jwt_secret_previous", "bcrypt_workers", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value  # JWT_SECRET_PREVIOUS= in .env: no rotation under way

    @field_validator("jwt_secret", "jwt_secret_previous")
    @classmethod
    def _secret_strong_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secret = value.get_secret_value()
        if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long")
        if PLACEHOLDER_MARK in secret.lower():
            raise ValueError("JWT_SECRET is the placeholder of .env.example: generate one (make run does)")
        if compression_ratio(secret) < MIN_JWT_SECRET_COMPRESSION_RATIO:
            raise ValueError(
                "JWT_SECRET is too predictable (repeated characters or words): use a random one, e.g."
                " python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    @field_validator("safeguard_auth_header")
    @classmethod
    def _header_line(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            name, sep, header_value = value.get_secret_value().partition(":")
            if not sep or not name.strip() or not header_value.strip() or not name.strip().isascii():
                raise ValueError("SAFEGUARD_AUTH_HEADER must read `Name: value`")
        return value

    @property
    def safeguard_header(self) -> dict[str, str]:
        if self.safeguard_auth_header is None:
            return {}
        name, _, value = self.safeguard_auth_header.get_secret_value().partition(":")
        return {name.strip(): value.strip()}

    def model_for_mode(self, mode: str | None) -> str:
        per_mode = {
            "flash": self.mistral_model_flash,
            "code": self.mistral_model_code,
            "redaction": self.mistral_model_redaction,
        }
        return per_mode.get(mode or "") or self.mistral_model


def load_settings_or_exit() -> Settings:
    """Start-up helper: a readable message and exit code 2 instead of a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        print("Configuration invalide, le service refuse de démarrer:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
