"""The directory login's settings (#29: LDAP / Active Directory), part of `Settings`; README "Directory login"."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

AccreditationLevel = Literal["N0", "N1", "N2", "N3", "N4"]

# Active Directory's defaults; an OpenLDAP tree takes e.g. (&(objectClass=inetOrgPerson)(uid={username})), entryUUID.
AD_USER_FILTER = "(&(objectCategory=person)(objectClass=user)(sAMAccountName={username}))"


class DirectorySettings(BaseSettings):
    auth_mode: Literal["local", "directory", "both"] = Field(
        "local",
        description="local: WIBOT's own passwords; directory: the LDAP/AD directory only; both: the directory"
        " first, then local accounts it does not know (and local accounts alone while it is down)",
    )
    ldap_url: str | None = Field(None, description="ldap://host:389 (StartTLS) or ldaps://host:636")
    ldap_start_tls: bool = Field(True, description="ldap:// only: upgrade to TLS before any bind")
    ldap_ca_file: Path | None = Field(None, description="CA certificate(s) the directory's certificate is checked with")
    ldap_verify_certificate: bool = Field(True, description="false only for a lab directory: never in production")
    ldap_bind_dn: str | None = Field(None, description="Service account for the searches (unset: anonymous)")
    ldap_bind_password: SecretStr | None = None
    ldap_user_base: str = Field("", description="Where users are searched, e.g. OU=Staff,DC=widip,DC=local")
    ldap_user_filter: str = Field(AD_USER_FILTER, description="{username} is replaced by the escaped username")
    ldap_username_attribute: str = Field("sAMAccountName", description="The WIBOT username (uid on OpenLDAP)")
    ldap_id_attribute: str = Field("objectGUID", description="Stable id the local account is linked by (entryUUID)")
    ldap_email_attribute: str = "mail"
    ldap_group_source: Literal["memberof", "search"] = Field(
        "memberof", description="memberof: the user's memberOf; search: groups whose `member` is the user"
    )
    ldap_group_base: str = Field("", description="search: where groups are searched (default: LDAP_USER_BASE)")
    ldap_group_filter: str = Field(
        "(&(objectClass=groupOfNames)(member={dn}))", description="search: {dn} is the escaped member DN"
    )
    ldap_nested_groups: bool = Field(True, description="Groups of groups count (followed up to 8 levels)")
    ldap_admin_groups: list[str] = Field(
        default_factory=list, description='Group DNs whose members are admins, JSON list: ["CN=WIBOT-Admins,…"]'
    )
    ldap_level_groups: dict[AccreditationLevel, str] = Field(
        default_factory=dict, description='Accreditation by group DN, JSON: {"N2": "CN=…", "N4": "CN=…"}; highest wins'
    )
    ldap_default_level: AccreditationLevel = Field("N0", description="Level of a directory user in no level group")
    ldap_connect_timeout_s: float = Field(3.0, gt=0, description="Connecting to the directory")
    ldap_timeout_s: float = Field(5.0, gt=0, description="One directory operation; a login answers 503 past it")
    ldap_pool_size: int = Field(4, ge=1, description="Directory operations at once per auth process (threads)")
    ldap_sync_every_s: float = Field(
        0.0, ge=0, description="Re-read every directory user (gone, disabled, groups) every N s (0: off)"
    )

    @field_validator("ldap_bind_password", "ldap_ca_file", "ldap_url", "ldap_bind_dn", mode="before")
    @classmethod
    def _directory_unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _directory_complete(self) -> DirectorySettings:
        if self.auth_mode != "local":
            if not self.ldap_url or not self.ldap_url.startswith(("ldap://", "ldaps://")):
                raise ValueError("AUTH_MODE directory/both needs LDAP_URL (ldap://… or ldaps://…)")
            if "{username}" not in self.ldap_user_filter:
                raise ValueError("LDAP_USER_FILTER must contain {username}")
            if not self.ldap_user_base:
                raise ValueError("AUTH_MODE directory/both needs LDAP_USER_BASE")
        return self
