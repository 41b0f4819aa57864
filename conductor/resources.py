"""The per-node ledger of CPUs, memory and worker slots.

Allocation and release happen only inside the Lua scripts (placement, finish, reap), so the
ledger cannot drift under concurrency; this module declares nodes and reads the books.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis import Redis

from . import keys, scripts
from .config import Settings
from .jobs import timestamp
from .nodestate import state
from .records import fields_of

if TYPE_CHECKING:  # the command line reads nodes without loading job containment
    from .cgroups import Usage


def node_up(connection: Redis, settings: Settings, containment: str = "none") -> None:
    """Declare this node's totals and containment; allocations are recomputed from its running jobs."""
    scripts.run(connection, "node_up", settings.node_name, settings.total_cpus, settings.total_memory,
                settings.node_partitions)
    connection.hset(keys.node(settings.node_name), "containment", containment)


def usage_args(node: str, usage: Usage) -> list[object]:
    """The finish script's optional arguments that store a job's usage on it (MaxRSS, CPU time, OOM
    kill) and count OOM kills per ``node``: recorded with the job's end, in the same round trip."""
    return [node, usage.max_rss, f"{usage.cpu_time:.6f}", int(usage.oom_killed)]


LEDGER_FIELDS = ("total_cpus", "total_memory", "allocated_cpus", "allocated_memory", "containment", "oom_kills",
                 "partitions")


def nodes(connection: Redis) -> list[dict[str, Any]]:
    """Each node's totals, allocations and live/busy workers (field names are a contract).

    Three round trips whatever the cluster's size: the node names, every node's books, and the
    state of every node's workers (one SORT per node, not one HGET per worker: 100 nodes of 10
    workers were 1,500 replies for the client to parse, now 400).
    """
    names = sorted(connection.smembers(keys.NODES))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.node(name), LEDGER_FIELDS)
            pipe.hgetall(keys.node_drain(name))
            pipe.scard(keys.node_running(name))
        replies = pipe.execute()
    ledgers, drains, running = replies[::3], replies[1::3], replies[2::3]
    workers = fields_of(connection, [keys.node_workers(name) for name in names], keys.worker, ("state",))
    views = []
    for name, ledger, drain, placed, rows in zip(names, ledgers, drains, running, workers):
        total_cpus, total_memory, cpus, memory = (int(v or 0) for v in ledger[:4])
        containment, oom_kills, served = ledger[4:]
        worker_states = [state_ for (state_,) in rows]
        live = sum(s is not None for s in worker_states)
        views.append({
            "name": name,
            "total_cpus": total_cpus,
            "allocated_cpus": cpus,
            "free_cpus": max(total_cpus - cpus, 0),
            "total_memory": total_memory,
            "allocated_memory": memory,
            "free_memory": max(total_memory - memory, 0),
            "workers": live,
            "busy_workers": worker_states.count("busy"),
            "state": state(drained=bool(drain), workers=live, running=placed,
                           allocated_cpus=cpus, total_cpus=total_cpus).value,
            "reason": drain.get("reason") or None,
            "drained_by": drain.get("by") or None,
            "drained_at": timestamp(drain.get("at")),
            "partitions": [p for p in (served or "").split(",") if p],
            "containment": containment or "none",
            "oom_kills": int(oom_kills or 0),
        })
    return views
