"""The per-node ledger of CPUs, memory and worker slots.

Allocation and release happen only inside the Lua scripts (placement, finish, reap), so the
ledger cannot drift under concurrency; this module declares nodes and reads the books.
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from . import keys, scripts
from .cgroups import Usage
from .config import Settings
from .jobs import timestamp
from .nodestate import state


def node_up(connection: Redis, settings: Settings, containment: str = "none") -> None:
    """Declare this node's totals and containment; allocations are recomputed from its running jobs."""
    scripts.run(connection, "node_up", settings.node_name, settings.total_cpus, settings.total_memory,
                settings.node_partitions)
    connection.hset(keys.node(settings.node_name), "containment", containment)


def record_usage(connection: Redis, node: str, job_id: int, usage: Usage) -> None:
    """Store a job's usage on it (MaxRSS, CPU time, OOM kill) and count OOM kills per node."""
    with connection.pipeline() as pipe:
        pipe.hset(keys.job(job_id), mapping={"max_rss": usage.max_rss, "cpu_time": f"{usage.cpu_time:.6f}",
                                             "oom_killed": int(usage.oom_killed)})
        if usage.oom_killed:
            pipe.hincrby(keys.node(node), "oom_kills", 1)
        pipe.execute()


def nodes(connection: Redis) -> list[dict[str, Any]]:
    """Each node's totals, allocations and live/busy workers (field names are a contract)."""
    names = sorted(connection.smembers(keys.NODES))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.node(name), "total_cpus", "total_memory", "allocated_cpus", "allocated_memory",
                       "containment", "oom_kills")
            pipe.smembers(keys.node_workers(name))
            pipe.hgetall(keys.node_drain(name))
            pipe.hget(keys.node(name), "partitions")
            pipe.scard(keys.node_running(name))
        replies = pipe.execute()
    ledgers, members = replies[::5], replies[1::5]
    drains, partitions, running = replies[2::5], replies[3::5], replies[4::5]
    with connection.pipeline(transaction=False) as pipe:
        for workers in members:
            for worker in sorted(workers):
                pipe.hget(keys.worker(worker), "state")
        states = iter(pipe.execute())
    views = []
    for name, ledger, workers, drain, served, placed in zip(names, ledgers, members, drains, partitions, running):
        total_cpus, total_memory, cpus, memory = (int(v or 0) for v in ledger[:4])
        worker_states = [next(states) for _ in workers]
        live = sum(s is not None for s in worker_states)
        views.append({
            "name": name,
            "total_cpus": total_cpus,
            "allocated_cpus": cpus,
            "free_cpus": max(total_cpus - cpus, 0),
            "total_memory": total_memory,
            "allocated_memory": memory,
            "free_memory": max(total_memory - memory, 0),
            "workers": sum(state is not None for state in worker_states),
            "busy_workers": worker_states.count("busy"),
            "state": state(drained=bool(drain), workers=live, running=placed,
                           allocated_cpus=cpus, total_cpus=total_cpus).value,
            "reason": drain.get("reason") or None,
            "drained_by": drain.get("by") or None,
            "drained_at": timestamp(drain.get("at")),
            "partitions": [p for p in (served or "").split(",") if p],
            "containment": ledger[4] or "none",
            "oom_kills": int(ledger[5] or 0),
        })
    return views
