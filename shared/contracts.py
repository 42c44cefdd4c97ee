"""The API contract in one place: request and response bodies of every route (spec: "Contrat API")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StrictBool, StrictInt, StrictStr
from pydantic_core import PydanticCustomError


def format_utc(value: datetime) -> str:
    """`2024-12-25T14:30:00Z`. Naive values come from TIMESTAMP columns, which hold UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    # isoformat is C and 10× strftime's speed (50 dates a conversation page); seconds, as strftime cut them.
    return value.isoformat(timespec="seconds") + "Z"


def storable(value: str) -> str:
    """PostgreSQL cannot store NUL, and lone surrogates (valid JSON escapes) are not UTF-8: refuse both here,
    before anything is charged or written, rather than fail at save time."""
    if "\x00" in value:
        raise PydanticCustomError("unstorable_text", "NUL character")
    if value.isascii():  # base64 attachments: megabytes, checked at memory speed without an encoded copy
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("unstorable_text", "lone surrogate") from None
    return value


# Every text field of a request: a JSON string that PostgreSQL and the model's API can take.
Text = Annotated[StrictStr, AfterValidator(storable)]
UtcDatetime = Annotated[datetime, PlainSerializer(format_utc, return_type=str)]
UuidStr = Annotated[UUID, PlainSerializer(str, return_type=str)]
Role = Literal["user", "assistant"]


class Request(BaseModel):
    # Unknown fields are ignored: the frontend evolves faster than this contract.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- errors -------------------------------------------------------------------------------------------


class ErrorResponse(Response):
    success: Literal[False] = False
    error: str
    code: str | None = Field(None, description="Machine-readable code, e.g. QUOTA_EXCEEDED; absent when none")


# --- auth ---------------------------------------------------------------------------------------------


class LoginRequest(Request):
    username: Text = Field(min_length=1, max_length=100)
    # Length in characters is only a sanity bound: over 72 *bytes* is refused like a wrong password.
    password: Text = Field(min_length=1, max_length=1024)


class LoginUser(Response):
    id: int
    username: str
    role: str


class LoginResponse(Response):
    success: Literal[True] = True
    token: str
    user: LoginUser


class MeResponse(Response):
    success: Literal[True] = True
    user: LoginUser


# --- admin --------------------------------------------------------------------------------------------

AdminRole = Literal["user", "admin"]
QuotaSource = Literal["month", "standing", "default"]
# Safeguard accreditation: N0 read-only … N4 full access (a request of level Lk needs Nk or more).
AccreditationLevel = Literal["N0", "N1", "N2", "N3", "N4"]
# users.user_id is a SERIAL (int4); quotas are BIGINT but a trillion tokens a month is already absurd.
UserId = Annotated[StrictInt, Field(ge=1, le=2_147_483_647)]
TokenCount = Annotated[StrictInt, Field(ge=0, le=1_000_000_000_000)]


class AdminCreateUserRequest(Request):
    username: Text = Field(min_length=1, max_length=100)
    password: Text = Field(min_length=1, max_length=1024)
    email: Text | None = Field(None, max_length=255)
    role: AdminRole = "user"
    quota_tokens: TokenCount | None = Field(None, description="This month's quota")
    standing_quota_tokens: TokenCount | None = Field(None, description="Every month's quota (default: the setting)")
    accreditation_level: AccreditationLevel = "N1"


class AdminUpdateUserRequest(Request):
    user_id: UserId
    quota_tokens: TokenCount | None = Field(None, description="This month's quota")
    add_tokens: TokenCount | None = Field(None, description="Extra tokens for the current month")
    standing_quota_tokens: TokenCount | Literal["default"] | None = Field(
        None, description='Every new month\'s quota; "default" goes back to DEFAULT_QUOTA_TOKENS'
    )
    role: AdminRole | None = None
    is_active: StrictBool | None = None
    accreditation_level: AccreditationLevel | None = None


class AdminDeleteUserRequest(Request):
    user_id: UserId


class AdminUser(Response):
    user_id: int
    username: str
    email: str | None
    role: str
    is_active: bool
    created_at: UtcDatetime
    used_tokens: int
    quota_tokens: int
    standing_quota_tokens: int | None = Field(description="Every new month's quota; null: the default")
    quota_source: QuotaSource
    accreditation_level: AccreditationLevel
    source: Literal["local", "directory"] = Field(
        "local", description="Where the account comes from: WIBOT's own password, or the LDAP/AD directory"
    )


class AuditQuery(Request):
    user_id: int | None = Field(None, ge=1, le=2_147_483_647, description="Rows whose actor is this user")
    action: str | None = Field(None, max_length=40)
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = Field(None, ge=1, le=2**63 - 1, description="Next page: rows before this audit_id")
    limit: int = Field(100, ge=1, le=500)


class AuditRow(Response):
    audit_id: int
    at: UtcDatetime
    actor_id: int | None
    action: str
    target: str | None
    request_id: str | None
    client_address: str | None
    details: dict[str, Any]
    hash: str


class AuditResponse(Response):
    success: Literal[True] = True
    rows: list[AuditRow]
    next_before_id: int | None = Field(None, description="Pass as before_id for the next page; null at the end")


class AdminUsersResponse(Response):
    success: Literal[True] = True
    users: list[AdminUser]


class AdminUserResponse(Response):
    success: Literal[True] = True
    user: AdminUser


class DeletedUser(Response):
    user_id: int
    username: str


class AdminDeleteResponse(Response):
    success: Literal[True] = True
    deleted: DeletedUser


# --- chat ---------------------------------------------------------------------------------------------


class FileAttachment(Request):
    name: Text = Field(min_length=1, max_length=255)
    content: Text


class ChatRequest(Request):
    conversation_id: UUID
    message: Text = Field(min_length=1)
    files: list[FileAttachment] | None = None
    mode: Literal["flash", "code", "redaction"] | None = None
    stream: StrictBool = Field(False, description="Stream the reply as SSE (like `Accept: text/event-stream`)")


class ChatResponse(Response):
    success: Literal[True] = True
    response: str
    tokens_used: int
    tokens_remaining: int
    conversation_id: UuidStr


class RagIngestRequest(Request):
    mode: Literal["incremental", "full"] = "incremental"
    path: Text | None = Field(None, max_length=1024, description="Folder or file under KB_ROOT (default: all of it)")
    category: Text | None = Field(None, min_length=1, max_length=100)


class IngestFailure(Response):
    path: str
    error: str


class IngestStats(Response):
    files: int
    added: int
    updated: int
    removed: int
    skipped: int
    chunks: int
    failed: list[IngestFailure]


class RagIngestResponse(Response):
    success: Literal[True] = True
    stats: IngestStats


# --- conversations ------------------------------------------------------------------------------------


class Conversation(Response):
    conversation_id: UuidStr
    title: str
    updated_at: UtcDatetime
    message_count: int


class ConversationsResponse(Response):
    success: Literal[True] = True
    conversations: list[Conversation]


class Message(Response):
    message_id: int
    role: Role
    content: str
    created_at: UtcDatetime


class MessagesResponse(Response):
    success: Literal[True] = True
    messages: list[Message]


class CreateConversationRequest(Request):
    title: Text | None = Field(None, min_length=1, max_length=255)
    conversation_id: UUID | None = None


class RenameConversationRequest(Request):
    conversationId: UUID
    title: Text = Field(min_length=1, max_length=255)


class DeleteConversationRequest(Request):
    conversationId: UUID


class ConversationResponse(Response):
    success: Literal[True] = True
    conversation: Conversation


class SuccessResponse(Response):
    success: Literal[True] = True


class TokenUsageResponse(Response):
    success: Literal[True] = True
    used_tokens: int
    quota_tokens: int
    tokens_remaining: int
    tokens_percentage: float
    status: Literal["good", "medium", "critical"]
    quota_source: QuotaSource = Field(description="month: set for this month; standing: the user's; default")


class ExportedProfile(Response):
    user_id: int
    username: str
    email: str | None
    role: str | None
    accreditation_level: str | None
    is_active: bool | None
    created_at: UtcDatetime | None


class ExportedUsage(Response):
    month: str = Field(description="YYYY-MM")
    used_tokens: int | None
    quota_tokens: int | None


class ExportedMessage(Response):
    role: Role
    content: str
    tokens: int | None
    mode: str | None
    attachments: list[dict[str, Any]] | None
    created_at: UtcDatetime | None


class ExportedConversation(Response):
    conversation_id: UuidStr
    title: str | None
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None
    messages: list[ExportedMessage]


class UserExportResponse(Response):
    """GET /webhook/wibot/user/export: everything WIBOT keeps about the caller (RGPD art. 15 and 20)."""

    success: Literal[True] = True
    exported_at: UtcDatetime
    user: ExportedProfile
    usage: list[ExportedUsage]
    conversations: list[ExportedConversation]


# --- supervision (analytics) --------------------------------------------------------------------------

AnalyticsPeriod = Literal["24h", "7d", "30d"]


class AnalyticsQuery(Request):
    period: AnalyticsPeriod = "7d"


class TokenStats(Response):
    used: int
    quota: int
    percentage: float


class DayStats(Response):
    date: str = Field(description="YYYY-MM-DD (UTC)")
    count: int
    tokens: int


class MessageStats(Response):
    total: int
    today: int
    byDay: list[DayStats]


class ModeStats(Response):
    flash: int
    code: int
    redaction: int


class ConversationStats(Response):
    total: int
    active: int


class UserStats(Response):
    total: int
    directory: int = Field(0, description="Of them, accounts from the LDAP/AD directory (AUTH_MODE directory/both)")


class FileStats(Response):
    total: int
    messagesWithFiles: int


class RagStats(Response):
    queries: int


class AnalyticsStats(Response):
    tokens: TokenStats
    messages: MessageStats
    modes: ModeStats
    conversations: ConversationStats
    users: UserStats
    files: FileStats
    rag: RagStats


class AnalyticsResponse(Response):
    success: Literal[True] = True
    period: AnalyticsPeriod
    stats: AnalyticsStats


# --- safeguard ----------------------------------------------------------------------------------------

# Ids go into the upstream URL's path: letters, digits, `-` and `_` only.
ApprovalId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class SafeguardListQuery(Request):
    status: Literal["pending"] = "pending"


class SafeguardHistoryQuery(Request):
    limit: int = Field(50, ge=1, le=500)


class SafeguardPath(Request):
    approval_id: ApprovalId


class SafeguardActionRequest(Request):
    approval_id: ApprovalId
    comment: Text | None = Field(None, max_length=2000)


class SafeguardRequest(Response):
    """A held tool call as the Safeguard server describes it (its other fields are passed through as they are),
    plus what this gateway computes for the caller."""

    model_config = ConfigDict(frozen=True, extra="allow")
    approval_id: str
    security_level: str
    status: str
    expires_at: str
    time_remaining_seconds: int
    can_approve: bool


class SafeguardListResponse(Response):
    success: Literal[True] = True
    requests: list[SafeguardRequest]
    total: int
    message: str | None = Field(
        None, description="Present when the Safeguard server could not be reached", exclude_if=lambda v: v is None
    )


class SafeguardDetailResponse(Response):
    success: Literal[True] = True
    request: SafeguardRequest


class SafeguardActionResponse(Response):
    success: Literal[True] = True
    approval_id: str
    status: str
    message: str
