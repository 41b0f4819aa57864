"""Placing PENDING jobs on nodes and handing them to the nodes' RQ queues.

Placement runs whenever something may have made room (a submission, a job's end, a worker
starting) and on every heartbeat as a safety tick. The decision and the allocation are one Lua
script; handing the job to RQ follows. If the process dies in between, the job is RUNNING with
its resources reserved but in no queue: :func:`requeue_stalled` on the node's heartbeat puts it
into the queue again. A job queued twice runs once, because a worker must claim it first.
"""

from __future__ import annotations

import time
from collections import defaultdict

from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.utils import now

from . import keys, scripts
from .rqjobs import SERIALIZER, perform

LIST_QUEUE_EVERY = 5.0  # seconds between a connection's additions of a queue to RQ's list of queues


def place(connection: Redis, rq_connection: Redis, full: bool = False, needs: int | None = None) -> list[tuple[int, str]]:
    """Allocate what fits now and queue it on the chosen nodes; returns (job id, node) pairs.

    A pass finds nodes through the index of nodes with a free slot, scored by free CPUs
    (:data:`keys.OPEN_NODES_BY_FREE_CPUS`), and checks each node it uses; ``full`` looks at every
    node and rebuilds that index (the heartbeat's safety pass).

    ``needs``: the CPUs of a job just stored, by its submitter. When no node in the index has that
    many free, the pass is skipped (one read instead of a script, the usual case behind a
    backlog): every step that makes room files its node before it places, so room that appears
    after this read is placed by whoever made it, and that placement sees the stored job.
    """
    if needs is not None and not full:
        if not connection.zrangebyscore(keys.OPEN_NODES_BY_FREE_CPUS, needs, "+inf", start=0, num=1):
            return []
    if full:  # the heartbeat's pass: jobs whose after:ID+time delay has run out become placeable
        scripts.run(connection, "release_timers")
    reply = scripts.run(connection, "place", "full" if full else "")
    placed = [(int(job_id), node) for job_id, node in zip(reply[::2], reply[1::2])]  # type: ignore[index]
    if placed:
        enqueue(rq_connection, placed)
    return placed


def enqueue(rq_connection: Redis, placed: list[tuple[int, str]]) -> None:
    """Put placed jobs on their nodes' RQ queues, one pipeline for all: per job one HSET of RQ's
    job record and its queue entry.

    RQ's own enqueue also writes the job's status before the record that holds it, and adds the
    queue to RQ's list of queues (what ``rq info`` reads) on every call: here the record is written
    once, status included, and a connection lists the queue again at most every LIST_QUEUE_EVERY
    seconds (a Redis restored from an older copy has it back within that time).

    No MULTI/EXEC around it: a job hash queued without its queue entry (or the reverse, should the
    connection drop in between) is what :func:`requeue_stalled` repairs anyway.
    """
    by_node: dict[str, list[int]] = defaultdict(list)
    for job_id, node in placed:
        by_node[node].append(job_id)
    listed: dict[str, float] = rq_connection.__dict__.setdefault("_conductor_listed_queues", {})
    queue_keys = []
    with rq_connection.pipeline(transaction=False) as pipe:
        for node, job_ids in by_node.items():
            queue = Queue(keys.queue_name(node), connection=rq_connection, serializer=SERIALIZER)
            if time.monotonic() - listed.get(queue.key, float("-inf")) >= LIST_QUEUE_EVERY:
                pipe.sadd(queue.redis_queues_keys, queue.key)
                queue_keys.append(queue.key)
            version = queue.get_redis_server_version()
            for job_id in job_ids:
                job = queue.create_job(
                    perform,
                    args=(job_id,),
                    job_id=f"conductor-{job_id}",
                    timeout=-1,  # conductor enforces time limits itself, per job
                    result_ttl=0,
                    failure_ttl=7 * 86400,
                    description=f"conductor job {job_id}",
                    status=JobStatus.QUEUED,
                )
                job.origin = queue.name
                job.enqueued_at = now()
                job.redis_server_version = version
                job.save(pipeline=pipe)
                queue.push_job_id(job.id, pipeline=pipe)
        pipe.execute()
    listed.update(dict.fromkeys(queue_keys, time.monotonic()))


def requeue_stalled(connection: Redis, rq_connection: Redis, node: str, older_than: float) -> list[int]:
    """Queue again the jobs placed on ``node`` that no worker claimed within ``older_than`` seconds."""
    running = sorted(connection.smembers(keys.node_running(node)), key=int)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in running:
            pipe.hmget(keys.job(job_id), "worker", "started_at")
        rows = pipe.execute()
    cutoff = time.time() - older_than
    stalled = [
        int(job_id)
        for job_id, (worker, started) in zip(running, rows)
        if worker == "" and started and float(started) < cutoff
    ]
    if stalled:
        from loguru import logger  # here: `conductor submit` places jobs and never needs the logger

        logger.warning("jobs {} were placed on {} but never claimed; queueing them again", stalled, node)
        enqueue(rq_connection, [(job_id, node) for job_id in stalled])
    return stalled
