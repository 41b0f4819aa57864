"""Cluster routes: workers, nodes (with drain and resume) and partitions, as sinfo and scontrol show them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam

from ... import nodestate, partitions, placement, registry, resources
from ..context import Context, Ctx
from ..models import (NODE_NAME_PATTERN, REDIS_DOWN, DrainRequest, NodeView, PartitionView, Problem,
                      WorkerView)

router = APIRouter(tags=["jobs", "cluster"], responses=REDIS_DOWN)


@router.get("/workers", response_model=list[WorkerView], operation_id="list_workers")
def list_workers(ctx: Ctx) -> list[dict[str, Any]]:
    """Live workers of every node (a worker whose heartbeat expired is not listed)."""
    return registry.workers(ctx.connection)


@router.get("/nodes", response_model=list[NodeView], operation_id="list_nodes")
def list_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    """Every node's CPUs, memory and workers: totals, allocated and free."""
    return resources.nodes(ctx.connection)


NodeName = Annotated[str, PathParam(min_length=1, max_length=64, pattern=NODE_NAME_PATTERN,
                                    description="a node's NODE_NAME")]


def _node_or_404(ctx: Context, name: str) -> dict[str, Any]:
    for node in resources.nodes(ctx.connection):
        if node["name"] == name:
            return node
    raise HTTPException(404, f"node {name!r} is unknown: no worker of it ever registered")


@router.post("/nodes/{name}/drain", response_model=NodeView, operation_id="drain_node",
                  responses={404: {"model": Problem}})
def drain_node(name: NodeName, body: DrainRequest, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Take a node out of service: no new jobs go to it, its running jobs finish (DRAINING, then DRAINED)."""
    client = request.client.host if request.client else "unknown"
    try:
        nodestate.drain(ctx.connection, name, body.reason.strip(), f"api@{client}")
    except nodestate.UnknownNode:
        raise HTTPException(404, f"node {name!r} is unknown: no worker of it ever registered") from None
    return _node_or_404(ctx, name)


@router.post("/nodes/{name}/resume", response_model=NodeView, operation_id="resume_node",
                  responses={404: {"model": Problem}})
def resume_node(name: NodeName, ctx: Ctx) -> dict[str, Any]:
    """Return a drained node to service (a node not drained is left as it is)."""
    try:
        nodestate.resume(ctx.connection, name)
    except nodestate.UnknownNode:
        raise HTTPException(404, f"node {name!r} is unknown: no worker of it ever registered") from None
    placement.place(ctx.connection, ctx.rq_connection)
    return _node_or_404(ctx, name)


@router.get("/partitions", response_model=list[PartitionView], operation_id="list_partitions")
def list_partitions(ctx: Ctx) -> list[dict[str, Any]]:
    """Partitions with their nodes by state and CPUs allocated, idle and total (as sinfo -s)."""
    return partitions.summary(ctx.connection)
