"""What routes depend on (FastAPI `Depends`): the process's `Services`, the calling principal (bearer key,
rate limit), its role and its reach.

A key reaches only its collections: a collection outside them answers 404, exactly like one that does not
exist, so a key never learns another tenant's collection names.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.services import Services
from citeloop.errors import UnknownCollectionError
from citeloop.keys import Principal, Role, authenticate

bearer = HTTPBearer(auto_error=False, description="An API key from `citeloop keys create`.")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], services: ServicesDep) -> Principal:
    """The key's principal; 401 without a valid key, 429 once the key has used up its requests for now."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "send an API key: Authorization: Bearer <key>", challenge)
    caller = authenticate(credentials.credentials, services.settings)
    if caller is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", challenge)
    wait = services.limiter.retry_after(caller.name)
    if wait:
        limit = services.settings.rate_limit_per_minute
        raise ApiError(429, "rate_limited", f"more than {limit} requests a minute; retry in {wait:.1f} s", {"Retry-After": str(int(wait) + 1)})
    return caller


def require(role: Role):
    """A dependency that lets through keys of `role` or above, and answers 403 to the others."""

    def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if not caller.can(role):
            raise ApiError(403, "forbidden", f"this needs a {role} key; '{caller.name}' is a {caller.role} key")
        return caller

    return check


Reader = Annotated[Principal, Depends(require("reader"))]
Curator = Annotated[Principal, Depends(require("curator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def reach(caller: Principal, collection: str) -> None:
    """404 for a collection outside the caller's reach, with the message of one that does not exist."""
    if not caller.reaches(collection):
        raise UnknownCollectionError(collection)
