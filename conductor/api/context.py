"""What the routes share: the settings and Redis clients of one app, handed out as a FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client.registry import CollectorRegistry
from redis import Redis

from ..config import Settings


@dataclass(frozen=True)
class Context:
    """One Redis client of each kind (thread-safe pools) and the metrics registry, for the app's life."""

    settings: Settings
    connection: Redis
    rq_connection: Redis
    metrics: CollectorRegistry


def context(request: Request) -> Context:
    """The :class:`Context` that :func:`conductor.api.app.create_app` put on the app."""
    return request.app.state.conductor  # type: ignore[no-any-return]


Ctx = Annotated[Context, Depends(context)]
