"""`ingest.frontend:create_app()`, as the README documents it for any WSGI server."""

from .web.app import create_app

__all__ = ["create_app"]
