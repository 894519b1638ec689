"""The base of the API's pure ASGI middleware (no per-request task or body copying, unlike BaseHTTPMiddleware)."""

from __future__ import annotations


class HttpMiddleware:
    """Passes non-HTTP scopes (lifespan) through; HTTP requests go to `handle`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        raise NotImplementedError
