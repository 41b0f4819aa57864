"""Placement cost as the backlog of PENDING jobs grows, over 50 fake nodes.

Nodes are declared with conductor's own ``node_up`` script and given worker slots the way
registration gives them (members of the node's worker set), so ``placement.place`` sees exactly
what it sees in production. The backlog is stored with conductor's own ``submit`` script, using
the record ``jobs.submit`` writes, pipelined so that building 100k jobs takes seconds. Redis's
SLOWLOG (threshold 0) gives the server-side time of the placement script itself.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from conductor import jobs, keys, placement, scripts
from conductor.jobs import JobSpec, JobSubmission
from conductor.store import connect

from .infra import RedisServer

NODES = 50
HELD = 10_000  # jobs waiting on a dependency during the head-of-line measurement
ARRAY_TASKS = 10_000
SLOTS = 4  # worker slots per node: 200 jobs run at once over the 50 nodes
NODE_CPUS = 32
NODE_MEMORY = 64 << 30
BATCH = 5000


@dataclass(frozen=True)
class PlacementCost:
    backlog: int
    full_us: float  # per placed job, a pass that fills every free slot (NODES x SLOTS jobs)
    full_lua_us: float  # ... of which the Lua script inside Redis
    single_us: float  # a pass after one job ended: one free slot, one job placed (the steady state)
    single_lua_us: float
    behind_us: float = 0.0  # one 1-CPU job placed behind a backlog of this size that fits no node
    behind_lua_us: float = 0.0
    array_submit_ms: float = 0.0  # one 10,000-task array submitted (jobs.submit, one round trip)


class Cluster:
    """50 fake nodes and a backlog of PENDING jobs on a private Redis."""

    def __init__(self, redis: RedisServer) -> None:
        self.connection = connect(redis.url)
        self.raw = connect(redis.url, decode=False)
        self.running: list[int] = []
        for n in range(1, NODES + 1):
            name = f"fake-{n:02d}"
            scripts.run(self.connection, "node_up", name, NODE_CPUS, NODE_MEMORY)
            self.connection.sadd(keys.node_workers(name), *[f"{name}-{i}" for i in range(1, SLOTS + 1)])
        self.template = self._record_template()

    def _record_template(self) -> list[str]:
        """The fields ``jobs.submit`` stores, learnt from one real submission (which stays in the backlog)."""
        job_id = jobs.submit(self.connection, JobSubmission(job=JobSpec(name="backlog"), script="true\n"))
        record: dict[str, str] = self.connection.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return [item for name, value in record.items() if name not in ("id", "state", "submitted_at")
                for item in (name, value)]

    def add_pending(self, count: int, cpus: int = 1, **fields: object) -> None:
        submit = scripts.script(self.connection, "submit")
        record = list(self.template)
        record[record.index("cpus") + 1] = str(cpus)
        for name, value in fields.items():
            record[record.index(name) + 1] = str(value)
        for start in range(0, count, BATCH):
            with self.connection.pipeline(transaction=False) as pipe:
                for _ in range(min(BATCH, count - start)):
                    submit(args=record, client=pipe)
                pipe.execute()

    def finish(self, job_ids: list[int]) -> None:
        """End jobs as their workers would (``finish`` script) and drop their RQ queue entries."""
        finish = scripts.script(self.connection, "finish")
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                finish(args=[job_id, "COMPLETED", 0, "", ""], client=pipe)
                pipe.delete(f"rq:job:conductor-{job_id}")
            for n in range(1, NODES + 1):
                pipe.delete(f"rq:queue:{keys.queue_name(f'fake-{n:02d}')}")
            pipe.execute()

    def timed_place(self) -> tuple[int, float, float]:
        """One real ``placement.place`` pass: (jobs placed, seconds in all, seconds of the Lua script)."""
        self.raw.slowlog_reset()
        start = time.perf_counter()
        placed = placement.place(self.connection, self.raw)
        elapsed = time.perf_counter() - start
        lua = sum(entry["duration"] for entry in self.raw.slowlog_get(100_000)
                  if entry["command"].upper().startswith(b"EVALSHA")) / 1e6
        self.running += [job_id for job_id, _ in placed]
        return len(placed), elapsed, lua


def measure(redis: RedisServer, backlog: int, passes: int, singles: int) -> PlacementCost:
    """Median costs per placed job at a steady ``backlog`` (topped up after every pass)."""
    cluster = Cluster(redis)
    cluster.add_pending(backlog - 1)
    redis.client().config_set("slowlog-max-len", 100_000)
    redis.client().config_set("slowlog-log-slower-than", 0)
    full, full_lua = [], []
    for round_ in range(passes + 1):  # the first pass only loads the scripts and warms the caches
        placed, elapsed, lua = cluster.timed_place()
        if round_:
            full.append(elapsed / placed)
            full_lua.append(lua / placed)
        cluster.finish(cluster.running)
        cluster.add_pending(len(cluster.running))
        cluster.running = []
    cluster.timed_place()  # every slot busy again: from now on one job ends, one is placed
    single, single_lua = [], []
    for _ in range(singles):
        ended = cluster.running.pop(0)
        cluster.finish([ended])
        cluster.add_pending(1)
        placed, elapsed, lua = cluster.timed_place()
        single.append(elapsed / placed)
        single_lua.append(lua / placed)
    return PlacementCost(backlog, *(1e6 * statistics.median(v) for v in (full, full_lua, single, single_lua)))


def measure_behind(redis: RedisServer, backlog: int, singles: int) -> tuple[float, float]:
    """Median (µs in all, µs of Lua) to place one 1-CPU job submitted behind ``backlog`` jobs
    that fit no node: what head-of-line starvation would make unbounded or impossible. Waiting
    with them: a 100,000-task array of such jobs and 10,000 jobs held by a dependency on one."""
    cluster = Cluster(redis)
    cluster.finish([int(i) for i in cluster.connection.zrange(keys.state("PENDING"), 0, -1)])
    cluster.add_pending(backlog, cpus=NODE_CPUS + 1)
    cluster.add_pending(1, cpus=NODE_CPUS + 1, array="0-99999:1", array_task_count=100_000)
    parent = int(cluster.connection.zrange(keys.state("PENDING"), -1, -1)[0])
    cluster.add_pending(HELD, dependency=f"afterok:{parent}")
    redis.client().config_set("slowlog-max-len", 100_000)
    redis.client().config_set("slowlog-log-slower-than", 0)
    costs, lua_costs = [], []
    for round_ in range(singles + 1):  # the first pass only loads the scripts
        cluster.add_pending(1)
        placed, elapsed, lua = cluster.timed_place()
        if placed != 1:
            raise RuntimeError(f"placement found {placed} jobs behind {backlog:,} that fit no node, not 1")
        cluster.finish(cluster.running)
        cluster.running = []
        if round_:
            costs.append(elapsed)
            lua_costs.append(lua)
    return 1e6 * statistics.median(costs), 1e6 * statistics.median(lua_costs)


def measure_array_submit(redis: RedisServer, rounds: int = 5) -> float:
    """Median milliseconds to submit one ARRAY_TASKS-task array the way `conductor submit` does."""
    cluster = Cluster(redis)
    body = {"job": {"name": "sweep", "array": f"0-{ARRAY_TASKS - 1}"}, "script": "true\n"}
    costs = []
    for _ in range(rounds):
        start = time.perf_counter()
        jobs.submit(cluster.connection, JobSubmission.model_validate(body), ARRAY_TASKS)
        costs.append(time.perf_counter() - start)
    return 1e3 * statistics.median(costs)


def placement_costs(root: Path, backlogs: tuple[int, ...], passes: int, singles: int) -> list[PlacementCost]:
    """One fresh Redis per backlog size, so each starts from the same state."""
    found = []
    for backlog in backlogs:
        redis = RedisServer(root / f"placement-{backlog}").start()
        try:
            cost = measure(redis, backlog, passes, singles)
        finally:
            redis.stop()
        redis = RedisServer(root / f"placement-behind-{backlog}").start()
        try:
            behind, behind_lua = measure_behind(redis, backlog, singles)
            array_submit = measure_array_submit(redis)
        finally:
            redis.stop()
        found.append(replace(cost, behind_us=behind, behind_lua_us=behind_lua, array_submit_ms=array_submit))
    return found

