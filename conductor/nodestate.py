"""Node states as Slurm's sinfo names them, and draining a node out of service and back.

A drain is one hash per node (reason, who, when) with no expiry: placement skips a node while it
exists, whatever its workers do, so a drain holds through worker restarts and, with Redis
persistence, Redis restarts, until ``resume``. The state shown is derived, never stored, so it
cannot disagree with the ledger it describes.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from redis import Redis

from . import keys


class NodeState(StrEnum):
    IDLE = "IDLE"  # live workers, nothing allocated
    MIXED = "MIXED"  # some CPUs or worker slots in use, room left
    ALLOCATED = "ALLOCATED"  # no CPUs or no worker slot left
    DRAINING = "DRAINING"  # drained, jobs still running
    DRAINED = "DRAINED"  # drained and idle: safe to stop, upgrade, reboot
    DOWN = "DOWN"  # no live worker


class UnknownNode(LookupError):
    """No worker of that node ever registered."""


def state(*, drained: bool, workers: int, running: int, allocated_cpus: int, total_cpus: int) -> NodeState:
    """The one rule that names a node's state from its books (see :class:`NodeState`)."""
    if drained:
        return NodeState.DRAINING if running or allocated_cpus else NodeState.DRAINED
    if workers == 0:
        return NodeState.DOWN
    if not running and not allocated_cpus:
        return NodeState.IDLE
    if allocated_cpus >= total_cpus or running >= workers:
        return NodeState.ALLOCATED
    return NodeState.MIXED


def _known(connection: Redis, name: str) -> None:
    if not connection.sismember(keys.NODES, name):
        raise UnknownNode(f"node {name!r} is unknown: no worker of it ever registered (see `conductor nodes`)")


def drain(connection: Redis, name: str, reason: str, by: str) -> dict[str, str]:
    """Take ``name`` out of service: it gets no new jobs; its running jobs finish normally."""
    _known(connection, name)
    record = {"reason": reason, "by": by, "at": f"{time.time():.6f}"}
    connection.hset(keys.node_drain(name), mapping=record)
    return record


def resume(connection: Redis, name: str) -> bool:
    """Return ``name`` to service; False when it was not drained."""
    _known(connection, name)
    total, allocated = connection.hmget(keys.node(name), "total_cpus", "allocated_cpus")
    with connection.pipeline() as pipe:
        pipe.delete(keys.node_drain(name))
        # Filed for placement again with its free CPUs (placement checks the node before using it).
        pipe.zadd(keys.OPEN_NODES_BY_FREE_CPUS, {name: max(int(total or 0) - int(allocated or 0), 0)})
        resumed, _ = pipe.execute()
    return bool(resumed)
