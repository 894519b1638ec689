"""`serve`: the HTTP API under uvicorn."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default CITELOOP_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default CITELOOP_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from citeloop.config import get_settings

    settings = get_settings()
    uvicorn.run("api.app:create_app", factory=True, host=host or settings.host, port=port or settings.port, workers=workers)
