"""The application factory and ``serve``, which ``conductor api`` runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import uvicorn
from fastapi import FastAPI
from loguru import logger

from .. import metrics
from ..config import Settings
from ..store import connect, redacted
from . import errors, routes
from .context import Context
from .guards import MAX_BODY_BYTES, Guard
from .routes import PREFIX

__all__ = ["PREFIX", "create_app", "serve"]


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``; a factory so that tests (and several nodes in one process) get their own."""
    connection = connect(settings)
    context = Context(settings, connection, connect(settings, decode=False),
                      metrics.registry_for(connection, settings.redis_url))
    token = settings.api_token.get_secret_value()
    app = FastAPI(
        title="conductor",
        version=version("conductor"),
        description="Slurm-like batch jobs on N concurrent RQ workers per node; Redis is the only store.",
        lifespan=_lifespan(context),
    )
    app.state.conductor = context
    app.add_middleware(Guard, token=token, max_body=MAX_BODY_BYTES)
    routes.include(app, token_required=bool(token))
    errors.install(app)
    return app


def serve(settings: Settings) -> None:
    """Run the API on API_HOST:API_PORT until SIGTERM/SIGINT (uvicorn finishes open requests first)."""
    app = create_app(settings)
    logger.info("conductor API on http://{}:{} (Redis {}, token {})", settings.api_host, settings.api_port,
                redacted(settings.redis_url), "required" if settings.api_token.get_secret_value() else "off")
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None,
                server_header=False, timeout_graceful_shutdown=10)


def _lifespan(context: Context) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        context.connection.close()
        context.rq_connection.close()

    return lifespan
