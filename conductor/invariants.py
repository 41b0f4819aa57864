"""The README's invariants, checked against the live cluster (read-only, safe while jobs run).

``conductor check --cluster`` and the reconciliation of each worker use these. Jobs change
state while the check reads, so each node is read in one MULTI/EXEC snapshot; what spans nodes
(a job's state index) is read in a second one and compared per job.
"""

from __future__ import annotations

from redis import Redis

from . import keys
from .jobs import JobState


def ledger_violations(connection: Redis, node: str) -> list[str]:
    """Where ``node``'s ledger disagrees with its RUNNING jobs (CPUs, memory, free CPU ids)."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.hmget(keys.node(node), "total_cpus", "total_memory", "allocated_cpus", "allocated_memory")
        pipe.smembers(keys.node_running(node))
        pipe.zrange(keys.node_free_cpus(node), 0, -1)
        ledger, running, free = pipe.execute()
        # The jobs' fields are read in the same transaction as the running set, so a job that
        # ends in between cannot look like a violation.
    ids = sorted(running, key=int)
    with connection.pipeline(transaction=True) as pipe:
        pipe.smembers(keys.node_running(node))
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "state", "node", "cpus", "memory", "cpu_ids")
        again, *rows = pipe.execute()
    if again != running:
        return []  # the node changed between the two reads: judge it on the next pass
    if ledger[0] is None:
        return [f"node {node}: registered but has no ledger"] if running else []
    total_cpus, total_memory, cpus, memory = (int(v or 0) for v in ledger)
    found = []
    held: dict[int, str] = {}
    sum_cpus = sum_memory = 0
    for job_id, (state, job_node, job_cpus, job_memory, cpu_ids) in zip(ids, rows):
        if state != JobState.RUNNING:
            found.append(f"node {node}: job {job_id} holds resources but is {state or 'missing'}")
        if job_node != node:
            found.append(f"node {node}: job {job_id} holds resources here but is placed on {job_node!r}")
        sum_cpus += int(job_cpus or 0)
        sum_memory += int(job_memory or 0)
        for cpu in (int(c) for c in (cpu_ids or "").split(",") if c):
            if cpu in held:
                found.append(f"node {node}: CPU {cpu} is held by jobs {held[cpu]} and {job_id}")
            held[cpu] = job_id
    if cpus != sum_cpus:
        found.append(f"node {node}: allocated CPUs {cpus} != {sum_cpus}, the sum over its RUNNING jobs")
    if memory != sum_memory:
        found.append(f"node {node}: allocated memory {memory} != {sum_memory}, the sum over its RUNNING jobs")
    expected_free = {cpu for cpu in range(total_cpus) if cpu not in held}
    if {int(c) for c in free} != expected_free:
        found.append(f"node {node}: free CPU ids do not complement the CPUs its RUNNING jobs hold")
    if sum_memory > total_memory and total_memory:
        found.append(f"node {node}: RUNNING jobs hold {sum_memory} bytes of {total_memory}")
    return found


def cluster_violations(connection: Redis) -> list[str]:
    """Every invariant of the README, over all nodes and the job indexes; empty when all hold."""
    found: list[str] = []
    nodes = sorted(connection.smembers(keys.NODES))
    for node in nodes:
        found += ledger_violations(connection, node)
    with connection.pipeline(transaction=True) as pipe:
        pipe.zrange(keys.state(JobState.RUNNING), 0, -1)
        pipe.zrange(keys.state(JobState.PENDING), 0, -1)
        for state in JobState:
            pipe.zcard(keys.state(state))
        pipe.zcard(keys.JOBS)
        pipe.get(keys.NEXT_JOB_ID)
        pipe.zrevrange(keys.JOBS, 0, 0)
        for node in nodes:
            pipe.smembers(keys.node_running(node))
        running, pending, *rest = pipe.execute()
    state_counts, total, next_id, newest, *held_sets = rest[:len(JobState)], *rest[len(JobState):]
    if sum(state_counts) != total:
        found.append(f"jobs: {total} jobs but {sum(state_counts)} entries in the state indexes "
                     "(a job must be in exactly one state)")
    if newest and int(next_id or 0) < int(newest[0]):
        found.append(f"jobs: next job id {next_id} is below the newest job {newest[0]} (ids would repeat)")
    holding = {job_id: node for node, members in zip(nodes, held_sets) for job_id in members}
    with connection.pipeline(transaction=True) as pipe:
        for job_id in running + pending:
            pipe.hmget(keys.job(job_id), "state", "node", "worker")
        pipe.smembers(keys.WORKERS)
        *rows, registered = pipe.execute()
    for job_id, (state, node, worker) in zip(running + pending, rows):
        expected = "RUNNING" if job_id in set(running) else "PENDING"
        if state != expected:
            found.append(f"job {job_id}: in the {expected} index but its state is {state or 'missing'}")
        elif expected == "RUNNING" and holding.get(job_id) != node:
            found.append(f"job {job_id}: RUNNING on {node!r} but not among that node's running jobs")
        elif expected == "PENDING" and job_id in holding:
            found.append(f"job {job_id}: PENDING but holds resources on {holding[job_id]}")
    with connection.pipeline(transaction=False) as pipe:
        for job_id, (state, node, worker) in zip(running, rows):
            pipe.hget(keys.worker(worker), "job") if worker else pipe.echo("")
        claims = pipe.execute()
    for job_id, (state, node, worker), claim in zip(running, rows, claims):
        if worker and claim is None:
            found.append(f"job {job_id}: RUNNING on worker {worker}, which has no live record")
    return found
