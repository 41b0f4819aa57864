"""The API's routes, by subject, and how they are mounted on an app."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Security
from fastapi.security import HTTPBearer

from ..models import UNAUTHORIZED
from . import cluster, jobs, operations

PREFIX = "/api/v1"
bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="API_TOKEN of the node's app.properties (checked before anything else)")


def include(app: FastAPI, token_required: bool) -> None:
    """Mount every route on ``app``; those behind the token say so in the OpenAPI document."""
    guarded = _guard_docs(token_required)
    app.include_router(jobs.router, prefix=PREFIX, **guarded)
    app.include_router(cluster.router, prefix=PREFIX, **guarded)
    app.include_router(operations.probes_router, **guarded)
    app.include_router(operations.open_router)


def _guard_docs(token_required: bool) -> dict[str, Any]:
    """Router options that document the token; :class:`..guards.Guard` enforces it, before the body is read."""
    if not token_required:
        return {}
    return {"dependencies": [Security(bearer)], "responses": UNAUTHORIZED}
