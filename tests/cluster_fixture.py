"""A cluster of many nodes, workers and jobs written into a real Redis, for the read paths.

``make bench`` times ``conductor workers``, ``conductor nodes``, ``GET /api/v1/nodes``,
``GET /metrics`` and ``GET /api/v1/jobs`` on 1,000 workers over 100 nodes and 100,000 stored
jobs; the tests check on smaller clusters of the same shape that those reads cost a bounded
number of Redis round trips and grow no label per job or per worker. Both build the cluster here,
with conductor's own functions and Lua scripts only, so what they read is what production writes:

- nodes are declared by ``resources.node_up`` (the ``node_up`` script), workers by
  ``registry.register`` (records, slots and indexes, with a long TTL: nobody heartbeats for them);
- every job is stored by the ``submit`` script with the record ``jobs.submit`` writes (learnt
  from one real submission), pipelined so that 100,000 jobs take seconds, not minutes;
- the ended jobs are ended by the ``record`` script, the one a worker uses to record a job's
  end with its node, worker and timestamps (COMPLETED, FAILED, TIMEOUT, CANCELLED, in a fixed
  mix), so the histograms of ``/metrics`` have real wait and run times to count;
- the running jobs are placed by ``placement.place`` (the ``place`` script, then their RQ queues)
  and claimed by a worker of their node with the ``start`` script, so half the workers are busy;
- the pending jobs each ask for a whole node, which no node has free while it runs jobs:
  they stay PENDING for reason Resources.

Nothing here is timed: the bench does that (bench/read_paths.py).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass

from redis import Redis

from conductor import jobs, keys, placement, registry, resources, scripts
from conductor.config import Settings
from conductor.jobs import JobSpec, JobSubmission

BATCH = 5000  # commands per pipeline: big enough to hide round trips, small enough for Redis's buffers
NODE_CPUS = 32
NODE_MEMORY = 64 << 30
TTL = 3600.0  # worker records outlive any bench run without heartbeats
ENDINGS = (("COMPLETED", "0", ""), ("COMPLETED", "0", ""), ("COMPLETED", "0", ""), ("FAILED", "1", "exit code 1"),
           ("TIMEOUT", "", "time limit reached"), ("CANCELLED", "", "cancelled by user"))


@dataclass(frozen=True)
class Shape:
    """How big a cluster is: ``jobs`` stored in all, of which ``pending`` wait and one per two
    workers runs; the rest have ended."""

    nodes: int
    workers_per_node: int
    jobs: int
    pending: int

    @property
    def workers(self) -> int:
        return self.nodes * self.workers_per_node

    @property
    def running(self) -> int:
        return self.nodes * (self.workers_per_node // 2)

    @property
    def ended(self) -> int:
        return self.jobs - self.running - self.pending

    def __str__(self) -> str:
        return f"{self.workers:,} workers over {self.nodes} nodes, {self.jobs:,} jobs"


LARGE = Shape(nodes=100, workers_per_node=10, jobs=100_000, pending=5_000)  # performance target 6
SMALL = Shape(nodes=2, workers_per_node=4, jobs=100, pending=10)  # a first node or two: the anchor


def node_name(n: int) -> str:
    return f"sim-{n:03d}"


def populate(connection: Redis, rq_connection: Redis, shape: Shape, seed: int = 6) -> None:
    """Write a cluster of ``shape`` into an empty Redis (``connection`` decodes, ``rq_connection`` does not)."""
    if shape.ended < 1:
        raise ValueError(f"{shape}: jobs must exceed the running ({shape.running}) and pending ({shape.pending}) ones")
    if connection.exists(keys.NODES, keys.JOBS):
        raise ValueError("populate needs an empty Redis: this one already holds nodes or jobs")
    names = [node_name(n) for n in range(1, shape.nodes + 1)]
    nodes = [Settings(node_name=name, total_cpus=NODE_CPUS, total_memory=NODE_MEMORY,
                      worker_concurrency=shape.workers_per_node, heartbeat_ttl=TTL) for name in names]
    busy = shape.workers_per_node // 2
    # Half the workers first: placement fills every free slot, so the running jobs spread evenly
    # (best fit alone would fill node after node), then the idle half joins.
    for settings in nodes:
        resources.node_up(connection, settings)
        for index in range(1, busy + 1):
            registry.register(connection, settings, index)
    template = _record_template(connection)
    _ended(connection, template, shape, names, random.Random(seed))
    _running(connection, rq_connection, template, shape)
    for settings in nodes:
        for index in range(busy + 1, shape.workers_per_node + 1):
            registry.register(connection, settings, index)
    _submit(connection, template, shape.pending, cpus=NODE_CPUS)


def _record_template(connection: Redis) -> dict[str, str]:
    """The fields ``jobs.submit`` stores, learnt from one real submission (which becomes the first ended job)."""
    job_id = jobs.submit(connection, JobSubmission(job=JobSpec(name="sim", account="sim"), script="true\n"))
    record: dict[str, str] = connection.hgetall(keys.job(job_id))  # type: ignore[assignment]
    return {name: value for name, value in record.items() if name not in ("id", "state", "submitted_at")}


def _submit(connection: Redis, template: dict[str, str], count: int, cpus: int = 1) -> list[int]:
    """Store ``count`` jobs with the ``submit`` script, pipelined; returns their ids."""
    record = dict(template, cpus=str(cpus), cpus_per_task=str(cpus))
    flat = [item for pair in record.items() for item in pair]
    submit = scripts.script(connection, "submit")
    ids: list[int] = []
    for start in range(0, count, BATCH):
        with connection.pipeline(transaction=False) as pipe:
            for _ in range(min(BATCH, count - start)):
                submit(args=flat, client=pipe)
            ids += [int(job_id) for job_id in pipe.execute()]
    return ids


def _ended(connection: Redis, template: dict[str, str], shape: Shape, names: list[str], rng: random.Random) -> None:
    """Jobs that ran on some worker and ended, recorded as a worker records a job's end."""
    first = int(connection.zrange(keys.JOBS, 0, 0)[0])
    ids = [first, *_submit(connection, template, shape.ended - 1)]
    record = scripts.script(connection, "record")
    now = time.time()
    for start in range(0, len(ids), BATCH):
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids[start:start + BATCH]:
                node = rng.choice(names)
                worker = f"{node}-{rng.randint(1, shape.workers_per_node)}"
                final, exit_code, reason = rng.choice(ENDINGS)
                started = now + rng.uniform(0.001, 30.0)
                ended = started + rng.expovariate(1 / 120.0)
                record(args=[job_id, worker, node, final, exit_code, reason, f"{ended:.6f}",
                             "cpu_ids", str(rng.randrange(NODE_CPUS)), "started_at", f"{started:.6f}"], client=pipe)
            replies = pipe.execute()
        if any(reply != 1 for reply in replies):
            raise RuntimeError(f"the record script refused {replies.count(0)} ended jobs (expected 1 for each)")


def _running(connection: Redis, rq_connection: Redis, template: dict[str, str], shape: Shape) -> None:
    """One job per registered worker (half the workers so far), placed by conductor's placement and
    claimed by its node's workers 1, 2, ..."""
    ids = set(_submit(connection, template, shape.running))
    placed = placement.place(connection, rq_connection)
    if {job_id for job_id, _ in placed} != ids:
        raise RuntimeError(f"placement placed {len(placed)} of the {len(ids)} jobs meant to run")
    by_node: dict[str, list[int]] = defaultdict(list)
    for job_id, node in placed:
        by_node[node].append(job_id)
    start = scripts.script(connection, "start")
    with connection.pipeline(transaction=False) as pipe:
        for node, job_ids in by_node.items():
            for index, job_id in enumerate(sorted(job_ids), start=1):
                start(args=[job_id, f"{node}-{index}", node], client=pipe)
        replies = pipe.execute()
    refused = [reply for reply in replies if reply[0] != "run"]
    if refused:
        raise RuntimeError(f"the start script refused {len(refused)} placed jobs: {refused[:3]}")
