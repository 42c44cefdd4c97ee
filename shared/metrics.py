"""Prometheus metrics of a service: requests by route and status, latency, model calls, tokens spent.

Served at GET /metrics by every service (nginx does not expose it outside).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter("wibot_http_requests_total", "HTTP requests", ["service", "route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "wibot_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 90),
)
MODEL_CALL_SECONDS = Histogram(
    "wibot_model_call_duration_seconds",
    "Model call latency, retries included",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 60, 90),
)
MODEL_CALL_FAILURES = Counter("wibot_model_call_failures_total", "Failed model calls", ["reason"])
TOKENS_SPENT = Counter("wibot_tokens_spent_total", "Tokens charged to users (usage.total_tokens or estimate)")
QUOTA_REJECTIONS = Counter("wibot_quota_rejections_total", "Chats refused for an exhausted quota")
STALE_RESERVATIONS = Counter(
    "wibot_stale_reservations_refunded_total", "Quota reservations left by a dead request, refunded by the sweeper"
)
PERSONAL_DATA_FOUND = Counter(
    "wibot_personal_data_total",
    "Identifiers found in what the model would be sent, by kind and outcome",
    ["kind", "outcome"],
)
RETENTION_PURGED = Counter(
    "wibot_retention_purged_total",
    "Rows deleted by the retention purge (conversations, messages, chunks, audit)",
    ["what"],
)
DIRECTORY_OPERATIONS = Counter(
    "wibot_directory_operations_total",
    "Directory (LDAP/AD) operations by outcome: ok, unknown, ambiguous, wrong_password, disabled, unavailable, busy",
    ["operation", "outcome"],
)
DIRECTORY_LAST_ADMIN_KEPT = Counter(
    "wibot_directory_last_admin_kept_total",
    "Directory logins or syncs that would have left no active admin: the last one kept the role",
)
PASSWORD_CHECKS = Counter("wibot_password_checks_total", "bcrypt password checks (logins, and their look-alikes)")
EMBEDDING_TOKENS = Counter("wibot_embedding_tokens_total", "Tokens spent on embeddings (knowledge base)", ["purpose"])
KNOWLEDGE_RETRIEVALS = Counter(
    "wibot_kb_retrievals_total", "Chat messages that consulted the knowledge base, by outcome", ["outcome"]
)
KNOWLEDGE_INDEX_CHUNKS = Gauge(
    "wibot_kb_index_chunks", "Site chunks searchable by meaning (held in this process, or in the database on pgvector)"
)
KNOWLEDGE_VECTOR_PATH = Gauge(
    "wibot_kb_vector_path",
    "1 for the path this process searches the site's vectors by: pgvector or in_process",
    ["path"],
)
EXTRACTIONS_REFUSED = Counter(
    "wibot_extractions_refused_total", "Attachments refused because the extraction pool was full", ["bound"]
)
REFUSALS_PACED = Counter(
    "wibot_refusals_paced_total", "429s held REFUSAL_PACING_S before being sent (a user refused again and again)"
)
RATE_LIMITED = Counter(
    "wibot_rate_limited_total",
    "Requests refused by a per-user rate limit, by action and where the refusal was decided (database, or this"
    " process's memory of a refusal still running)",
    ["action", "seen_in"],
)
DATABASE_ERRORS = Counter("wibot_database_unavailable_total", "Requests answered 503 because the database failed")


def route_label(request: web.Request) -> str:
    """The route's pattern, never the raw path: ids in paths would explode the label set."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe_request(service: str, request: web.Request, status: int, seconds: float) -> None:
    route = route_label(request)
    REQUESTS.labels(service, route, request.method, str(status)).inc()
    REQUEST_SECONDS.labels(service, route, request.method).observe(seconds)


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
