"""Workflows safeguard_requests and safeguard_actions: a gateway to the Safeguard server (SAFEGUARD_URL).

The Safeguard server holds the AI tool calls that need a human's approval (reset an AD password, close a
ticket…), each with a security level L1–L3. This gateway shows them to staff and relays their decisions:

    list / history / detail:  check access (N1+) → fetch upstream → add time left and can_approve → respond
    approve / reject:         check access → fetch the request → check it is pending and the approver's level
                              reaches its level (HERE, not left to the upstream) → relay → respond

The level compared is the one in the database (like the role), never one a token claims. When the server is
unreachable, the lists say so in an empty answer (as the workflows did) and decisions answer 503: an approval
that did not happen is never reported as done.
"""

from services.auth.safeguard import views
from shared.contracts import (
    SafeguardActionRequest,
    SafeguardActionResponse,
    SafeguardDetailResponse,
    SafeguardHistoryQuery,
    SafeguardListQuery,
    SafeguardListResponse,
    SafeguardPath,
)
from shared.openapi import Route

PREFIX = "/webhook/wibot/safeguard"

ROUTES = [
    Route(
        "GET",
        f"{PREFIX}/requests",
        views.list_requests,
        "Demandes Safeguard en attente (N1+)",
        SafeguardListResponse,
        query=SafeguardListQuery,
        errors=(400, 403),
        tags=("safeguard",),
    ),
    Route(
        "GET",
        f"{PREFIX}/history",
        views.history,
        "Demandes Safeguard traitées (N1+)",
        SafeguardListResponse,
        query=SafeguardHistoryQuery,
        errors=(400, 403),
        tags=("safeguard",),
    ),
    Route(
        "GET",
        f"{PREFIX}/request/{{approval_id}}",
        views.detail,
        "Une demande Safeguard (N1+)",
        SafeguardDetailResponse,
        path_params=SafeguardPath,
        errors=(400, 403, 404, 503),
        tags=("safeguard",),
    ),
    Route(
        "POST",
        f"{PREFIX}/approve",
        views.approve,
        "Approuve une demande (niveau ≥ celui de la demande)",
        SafeguardActionResponse,
        request=SafeguardActionRequest,
        errors=(400, 403, 404, 409, 503),
        tags=("safeguard",),
    ),
    Route(
        "POST",
        f"{PREFIX}/reject",
        views.reject,
        "Refuse une demande (niveau ≥ celui de la demande)",
        SafeguardActionResponse,
        request=SafeguardActionRequest,
        errors=(400, 403, 404, 409, 503),
        tags=("safeguard",),
    ),
]
