"""Operations routes: liveness and readiness probes and Prometheus metrics, outside ``/api/v1``.

``/healthz`` is on :data:`open_router`, which never asks for the token (the guard lets it through
too); ``/readyz`` and ``/metrics`` are on :data:`probes_router`, behind the token like the API.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..context import Ctx
from ..models import REDIS_DOWN, Status

probes_router = APIRouter(tags=["operations"])
open_router = APIRouter(tags=["operations"])


@open_router.get("/healthz", response_model=Status, operation_id="healthz")
def healthz() -> Status:
    """The process is up and serving; says nothing about Redis (that is /readyz), needs no token."""
    return Status(status="ok")


@probes_router.get("/readyz", response_model=Status, responses=REDIS_DOWN, operation_id="readyz")
def readyz(ctx: Ctx) -> Status:
    """Ready when Redis answers a ping: a load balancer should route here only then."""
    ctx.connection.ping()
    return Status(status="ready")


@probes_router.get(
    "/metrics", response_class=Response, operation_id="metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text format; conductor_redis_up is 0 when Redis is down"}},
)
def prometheus_metrics(ctx: Ctx) -> Response:
    """Prometheus metrics, read from Redis at scrape time (see :mod:`conductor.metrics`)."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)
