"""API keys: created with a role and the collections they reach, stored as sha256, shown once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select

from citeloop.config import Settings
from citeloop.db import ApiKey, session_scope, utcnow

Role = Literal["reader", "curator", "admin"]
ROLES: tuple[Role, ...] = ("reader", "curator", "admin")  # each role can do everything the ones before it can
ALL_COLLECTIONS = "*"


class KeyManagementError(ValueError):
    """A key cannot be created or revoked as asked."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name, role and reach."""

    name: str
    role: Role
    collections: tuple[str, ...]

    def can(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def reaches(self, collection: str) -> bool:
        return ALL_COLLECTIONS in self.collections or collection in self.collections


@dataclass(frozen=True)
class KeyInfo:
    name: str
    role: str
    collections: list[str]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    training_opt_out: bool = False


def _digest(key: str) -> str:
    # Keys are 256 random bits: a plain sha256 cannot be brute-forced, and lookups stay one indexed query.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, role: str, collections: list[str], settings: Settings | None = None) -> str:
    """The new key (returned once; only its digest is stored)."""
    name = name.strip()
    if not name:
        raise KeyManagementError("a key needs a --name")
    if role not in ROLES:
        raise KeyManagementError(f"unknown role '{role}'; use one of {', '.join(ROLES)}")
    collections = [c.strip() for c in collections if c.strip()]
    if not collections:
        raise KeyManagementError("a key needs --collections (comma-separated names, or '*' for all)")
    key = "cl_" + secrets.token_urlsafe(32)
    with session_scope(settings) as session:
        if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
            raise KeyManagementError(f"a key named '{name}' exists; revoke it or pick another name")
        session.add(ApiKey(name=name, role=role, collections=collections, key_sha256=_digest(key), prefix=key[:10]))
    return key


def revoke_key(name: str, settings: Settings | None = None) -> None:
    with session_scope(settings) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise KeyManagementError(f"no key named '{name}'")
        if row.revoked_at is None:
            row.revoked_at = utcnow()


def set_key_training_opt_out(name: str, opt_out: bool, settings: Settings | None = None) -> None:
    """Keep the key's feedback out of every training set (its events are still stored and exported), or let it
    back in."""
    with session_scope(settings) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise KeyManagementError(f"no key named '{name}'")
        row.training_opt_out = opt_out


def list_keys(settings: Settings | None = None) -> list[KeyInfo]:
    with session_scope(settings) as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
        return [KeyInfo(r.name, r.role, list(r.collections), r.prefix, r.created_at, r.revoked_at, r.training_opt_out) for r in rows]


def has_admin_key(settings: Settings | None = None) -> bool:
    with session_scope(settings) as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None)).limit(1)) is not None


def authenticate(key: str, settings: Settings | None = None) -> Principal | None:
    """The key's principal, or None for an unknown or revoked key."""
    with session_scope(settings) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == _digest(key)))
        if row is None or row.revoked_at is not None:
            return None
        return Principal(row.name, row.role, tuple(row.collections))  # type: ignore[arg-type]
