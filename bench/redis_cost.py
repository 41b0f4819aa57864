"""What one job costs the shared Redis: commands and redis-server CPU per trivial job, end to end.

One Redis serves every node of a cluster, so its CPU per job caps the whole cluster's job rate
(the ceiling: jobs/s per Redis core = 1 / Redis CPU per job). The figure covers everything a job
makes Redis do: the submit, placement, the worker's claim, start and finish, and whatever the
workers do meanwhile (heartbeats, RQ's own bookkeeping). The benchmark's own waiting for the jobs
is not the system's cost and is left out exactly: its clients count what they send
(:func:`bench.infra.counting_client`).

The cluster-shaped run starts 1, 4, 16 nodes' worth of conductor workers (distinct NODE_NAMEs,
all on this machine, one Redis) and drains the same trivial jobs: per job, the cost should not
depend on the size of the cluster.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from . import procstat
from .conductor_system import ConductorSystem
from .infra import BenchError, wait_until
from .scenarios import warm_up
from .system import System

SETTLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class RedisCost:
    """Redis's work for ``jobs`` trivial jobs: commands by name (commandstats), their time, CPU."""

    jobs: int
    seconds: float
    failures: int
    calls: dict[str, int]  # command name -> calls, the benchmark's own waiting left out
    usec: dict[str, int]  # command name -> microseconds inside the command (commandstats)
    redis_cpu: float  # seconds of redis-server CPU (utime + stime)
    excluded: int  # commands the benchmark sent while waiting for the jobs (left out above)

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    @property
    def commands_per_job(self) -> float:
        return self.commands / self.jobs

    @property
    def cpu_per_job(self) -> float:
        """Seconds of redis-server CPU per job."""
        return self.redis_cpu / self.jobs

    @property
    def ceiling(self) -> float | None:
        """Jobs per second one Redis core could serve at this cost (None: too small to measure)."""
        return 1 / self.cpu_per_job if self.redis_cpu > 0 else None


def commandstats(client: Redis) -> tuple[Counter[str], Counter[str]]:
    """Calls and microseconds per command name (subcommands such as ``client|list`` under ``client``)."""
    calls: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    for key, value in client.info("commandstats").items():
        name = key.removeprefix("cmdstat_").split("|")[0]
        calls[name] += int(value["calls"])
        usec[name] += int(value["usec"])
    return calls, usec


def bench_sent(system: System) -> Counter[str]:
    """What the benchmark's clients of ``system`` have sent so far."""
    total: Counter[str] = Counter()
    for client in (system.connection, system.raw):
        total.update(client.sent)  # type: ignore[attr-defined]
    return total


def measure(system: System, script: Path, count: int) -> RedisCost:
    """Submit ``count`` jobs running ``script`` through the system's own path and drain them."""
    stats = system.redis.client()
    before = system.settled()
    calls, usec = commandstats(stats)  # this INFO shows up in the next one: left out below
    cpu = procstat.cpu_times(system.redis.pid)
    start = time.time()
    ids = [system.submit(script) for _ in range(count)]
    submitted = bench_sent(system)  # the submits are part of each job's cost
    wait_until(lambda: system.settled() - before >= count, SETTLE_TIMEOUT, f"{count} jobs on {system.label}",
               interval=0.02)
    waited = bench_sent(system) - submitted
    seconds = time.time() - start
    cpu = procstat.cpu_times(system.redis.pid) - cpu
    calls_after, usec_after = commandstats(stats)
    calls = calls_after - calls - waited - Counter(info=1)
    usec = usec_after - usec
    failures = sum(not ok for ok, _ in system.outcomes(ids))
    stats.close()
    return RedisCost(count, seconds, failures, dict(calls), dict(usec), cpu.own, sum(waited.values()))


class ConductorCluster(ConductorSystem):
    """``nodes`` conductor nodes (distinct NODE_NAMEs) of ``per_node`` workers each, on one Redis.

    Each node has its own app.properties and its own rendered supervisord programs (renamed per
    node so that they can share one supervisord); no HTTP API.
    """

    key = "conductor-cluster"
    label = "conductor cluster"

    def __init__(self, root: Path, nodes: int, per_node: int) -> None:
        super().__init__(root, nodes * per_node)
        self.nodes, self.per_node = nodes, per_node
        self.api_port = None
        self.api_problem = "not started for the cluster-shaped run"

    def node_name(self, number: int) -> str:
        return f"bench-node-{number:02d}"

    def configure(self) -> None:
        for number in range(1, self.nodes + 1):
            node = self.node_name(number)
            directory = self.root / node
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "app.properties"
            values = {**self.properties(), "NODE_NAME": node, "WORKER_CONCURRENCY": self.per_node,
                      "JOB_ROOT": directory / "jobs"}
            config.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
            self.render(config, directory)
            text = (directory / "conductor.conf").read_text()
            if "[program:conductor-worker-" not in text:
                raise BenchError(f"the rendered programs of {node} have no [program:conductor-worker-...]")
            (self.supervisor.conf_d / f"{node}.conf").write_text(
                text.replace("[program:conductor-worker-", f"[program:{node}-worker-"))
        self.config = self.root / f"{self.node_name(1)}/app.properties"


def cluster_sizes(root: Path, script: Path, sizes: tuple[int, ...], per_node: int, jobs: int,
                  warmup: int, say: Callable[[str], None]) -> list[tuple[int, RedisCost]]:
    """For each number of nodes, a fresh Redis and cluster; the Redis cost of draining ``jobs``."""
    found = []
    for nodes in sizes:
        with ConductorCluster(root / f"cluster-{nodes}", nodes, per_node) as cluster:
            warm_up(cluster, script, warmup)
            found.append((nodes, measure(cluster, script, jobs)))
        say(f"cluster of {nodes} nodes x {per_node} workers: "
            f"{found[-1][1].commands_per_job:.1f} commands and {1e6 * found[-1][1].cpu_per_job:.0f} µs "
            "of Redis CPU per job")
    return found
