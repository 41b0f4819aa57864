"""Partitions: which nodes serve which partition, the sinfo-like summary, and PENDING reasons.

A node lists its partitions in NODE_PARTITIONS; an empty list serves every partition, so a
default node runs the demonstration's ``compute-high-mem`` jobs. Placement (place.lua) applies the same
rule inside Redis; this module is its Python side for submission checks and listings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis import Redis

from . import jobs, keys, resources
from .jobs import JobRejected, JobSubmission
from .nodestate import NodeState

ANY = "*"  # the summary row of nodes that serve every partition
DEPENDENCY_REASONS = ("Dependency", "DependencyNeverSatisfied")  # set by the dependency scripts
OUT_OF_SERVICE = (NodeState.DRAINING.value, NodeState.DRAINED.value)


def serves(node: dict[str, Any], partition: str) -> bool:
    """Whether ``node`` (a view of :func:`resources.nodes`) takes jobs of ``partition``."""
    return not node["partitions"] or partition in node["partitions"]


def check(served: list[list[str]], partition: str, allow_unknown: bool) -> None:
    """Refuse a job for a partition that no registered node serves, unless ``allow_unknown``.

    ``served`` holds each registered node's NODE_PARTITIONS (an empty list serves every partition).
    """
    if "," in partition:
        raise JobRejected("job.partition", "names one partition and must not contain a comma")
    if allow_unknown or any(not names or partition in names for names in served):
        return
    known = sorted({name for names in served for name in names})
    raise JobRejected(
        "job.partition",
        f"no node serves partition {partition!r} (known: {', '.join(known) or 'none'}); "
        "set ALLOW_UNKNOWN_PARTITIONS=true to queue jobs for partitions whose nodes are not up yet",
    )


def summary(connection: Redis) -> list[dict[str, Any]]:
    """One row per partition, as ``sinfo -s``: nodes by state and CPUs allocated/idle/total.

    Nodes that serve every partition are counted in each named partition and in the row ``*``.
    """
    nodes = resources.nodes(connection)
    names = sorted({name for node in nodes for name in node["partitions"]})
    rows = []
    for name in names + [ANY]:
        members = [n for n in nodes if (not n["partitions"]) or (name != ANY and name in n["partitions"])]
        if not members:
            continue
        states: dict[str, int] = {}
        for node in members:
            states[node["state"]] = states.get(node["state"], 0) + 1
        total = sum(n["total_cpus"] for n in members)
        allocated = sum(n["allocated_cpus"] for n in members)
        usable = sum(n["total_cpus"] - n["allocated_cpus"] for n in members
                     if n["state"] not in OUT_OF_SERVICE and n["state"] != NodeState.DOWN)
        rows.append({
            "name": name,
            "nodes": len(members),
            "node_names": [n["name"] for n in members],
            "states": states,
            "allocated_cpus": allocated,
            "free_cpus": max(usable, 0),
            "total_cpus": total,
        })
    return rows


def pending_reason(job: dict[str, Any], nodes: Iterable[dict[str, Any]]) -> str:
    """Why a PENDING job waits, in squeue's words.

    Dependency / DependencyNeverSatisfied: held by its --dependency. PartitionDown: no node serves its partition. PartitionNodesDrained: no node that does is in
    service and live, and some are drained. ReqNodeNotAvail: some are, but only nodes out of service
    (drained or down) are big enough for the job. NodeDown: none is live and none drained. Priority: one of them has
    room now, older jobs go first (placement runs at once). Resources: none has the room now.
    """
    if job.get("reason") in DEPENDENCY_REASONS:  # held by its --dependency, whatever the nodes
        return str(job["reason"])
    serving = [n for n in nodes if serves(n, job["partition"] or "")]
    if not serving:
        return "PartitionDown"
    live = [n for n in serving if n["state"] not in OUT_OF_SERVICE and n["state"] != NodeState.DOWN]
    if not live:  # a drain is what an operator did and can undo: name it before dead nodes
        return "PartitionNodesDrained" if any(n["state"] in OUT_OF_SERVICE for n in serving) else "NodeDown"
    cpus, memory = job["cpus"] or 0, job["memory"] or 0
    if not any(n["total_cpus"] >= cpus and n["total_memory"] >= memory for n in live):
        return "ReqNodeNotAvail"  # only nodes out of service (drained, or with no live worker) are big enough
    for node in live:
        if (node["free_cpus"] >= (job["cpus"] or 0) and node["free_memory"] >= (job["memory"] or 0)
                and node["state"] != NodeState.ALLOCATED):
            return "Priority"
    return "Resources"


def annotate(connection: Redis, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``pending_reason`` to the views of PENDING jobs (None for the others)."""
    nodes = resources.nodes(connection) if any(r["state"] == "PENDING" for r in rows) else []
    for row in rows:
        row["pending_reason"] = pending_reason(row, nodes) if row["state"] == "PENDING" else None
    return rows


def submit(connection: Redis, submission: JobSubmission, allow_unknown: bool, max_array_size: int = 1001,
           kill_invalid_depend: bool = False) -> int:
    """:func:`jobs.submit` after refusing a partition no registered node serves (CLI and API alike)."""
    names = sorted(connection.smembers(keys.NODES))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(keys.node(name), "partitions")
        served = [[p for p in (value or "").split(",") if p] for value in pipe.execute()]
    if served:  # with no node at all, jobs.submit says so
        check(served, submission.job.partition, allow_unknown)
    return jobs.submit(connection, submission, max_array_size, kill_invalid_depend)
