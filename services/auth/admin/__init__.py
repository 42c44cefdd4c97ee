"""The admin pages' routes (role admin only): user management (views.py, the `users` command's steps over HTTP)
and the Supervision page's figures (analytics.py)."""

from __future__ import annotations

from services.auth.admin import analytics, views
from shared.contracts import (
    AdminCreateUserRequest,
    AdminDeleteResponse,
    AdminDeleteUserRequest,
    AdminUpdateUserRequest,
    AdminUserResponse,
    AdminUsersResponse,
    AnalyticsQuery,
    AnalyticsResponse,
    AuditQuery,
    AuditResponse,
)
from shared.openapi import Route

ADMIN_USERS = "/webhook/wibot/admin/users"

ROUTES = [
    Route(
        "GET",
        ADMIN_USERS,
        views.list_users,
        "Liste des utilisateurs (admin)",
        AdminUsersResponse,
        errors=(403,),
        tags=("admin",),
    ),
    Route(
        "POST",
        ADMIN_USERS,
        views.create_user,
        "Crée un utilisateur (admin)",
        AdminUserResponse,
        request=AdminCreateUserRequest,
        errors=(400, 403, 409),
        tags=("admin",),
    ),
    Route(
        "PUT",
        ADMIN_USERS,
        views.update_user,
        "Modifie quota, rôle, activation (admin)",
        AdminUserResponse,
        request=AdminUpdateUserRequest,
        errors=(400, 403, 404, 409),
        tags=("admin",),
    ),
    Route(
        "DELETE",
        ADMIN_USERS,
        views.delete_user,
        "Supprime un utilisateur et ses données (admin)",
        AdminDeleteResponse,
        request=AdminDeleteUserRequest,
        errors=(400, 403, 404, 409),
        tags=("admin",),
    ),
    Route(
        "GET",
        "/webhook/wibot/analytics",
        analytics.analytics,
        "Statistiques de la page Supervision (admin)",
        AnalyticsResponse,
        query=AnalyticsQuery,
        errors=(400, 403),
        tags=("admin",),
    ),
    Route(
        "GET",
        "/webhook/wibot/admin/audit",
        views.audit_trail,
        "Piste d'audit, la plus récente d'abord, filtrée et paginée (admin)",
        AuditResponse,
        query=AuditQuery,
        errors=(400, 403),
        tags=("admin",),
    ),
]
