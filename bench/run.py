"""One benchmark run: every system, every scenario, in an order that keeps the comparison fair.

For each N, the systems are measured one after the other, each on a fresh Redis and supervisord;
the detailed scenarios (makespan, latency, memory, restart) run at the seed's N = 4. Placement
cost needs no workers and runs after them, on its own Redis; the read paths at cluster size run
on two populated Redis servers with an API each (bench/read_paths.py), then the command-line
timings; a Redis Sentinel failover under a job stream (bench/failover.py) comes last, on clusters
of its own.
"""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import containment, failover, machine, redis_cost, scenarios
from .baselines import BASELINES
from .cli_timing import CliTiming, cli_timings
from .containment import ContainmentCost
from .conductor_system import ConductorSystem
from .failover import Failover
from .placement_cost import PlacementCost, placement_costs
from .redis_cost import RedisCost
from .read_paths import QUICK_LARGE, ReadPaths, Shape, cluster_fixture
from .read_paths import measure as measure_read_paths
from .scenarios import Makespan, Restart, Throughput
from .system import System

SYSTEMS: tuple[type[System], ...] = (ConductorSystem, *BASELINES)
LATENCY_PATHS = ("python", "cli", "http")


@dataclass(frozen=True)
class Size:
    """How much work each scenario does; ``QUICK`` only proves the harness works end to end."""

    name: str
    worker_counts: tuple[int, ...]
    detail_workers: int
    warmup_jobs: int
    throughput_jobs: int
    throughput_runs: int
    makespan_jobs: int
    makespan_sleep: float
    latency_samples: int
    cli_samples: int
    latency_period: float
    restarts: int
    restart_pause: float
    backlogs: tuple[int, ...]
    placement_passes: int
    placement_singles: int
    redis_workers: int  # the N at which every system's Redis cost per job is measured
    redis_jobs: int
    cluster_nodes: tuple[int, ...]
    cluster_workers_per_node: int
    read_cluster: Shape
    read_samples_cli: int
    read_samples_http: int
    cli_rounds: int = 15  # turns of the command-line timings (each command once per turn)
    cli_stored: int = 10_000  # ended jobs in Redis while the commands are timed
    failover_rounds: int = 3  # Sentinel failovers, each on a fresh cluster (about 17 s apiece)
    failover_submits: int = 100  # submissions timed with WAIT 1 and as many without, per round
    containment_jobs: int = 1000  # trivial jobs per run with job containment off and on (as root)
    containment_runs: int = 2  # runs of each, interleaved
    containment_latency_samples: int = 50


FULL = Size(
    name="full", worker_counts=(2, 4), detail_workers=4, warmup_jobs=20, throughput_jobs=1000, throughput_runs=1,
    makespan_jobs=8, makespan_sleep=2.0, latency_samples=200, cli_samples=8, latency_period=0.05, restarts=3,
    restart_pause=0.2, backlogs=(1_000, 10_000, 100_000), placement_passes=5, placement_singles=30,
    redis_workers=2, redis_jobs=1000, cluster_nodes=(1, 4, 16), cluster_workers_per_node=2,
    read_cluster=cluster_fixture.LARGE, read_samples_cli=20, read_samples_http=100,
)
QUICK = Size(
    name="quick", worker_counts=(2,), detail_workers=2, warmup_jobs=4, throughput_jobs=20, throughput_runs=1,
    makespan_jobs=4, makespan_sleep=0.5, latency_samples=5, cli_samples=1, latency_period=0.05, restarts=1,
    restart_pause=0.2, backlogs=(300, 3_000), placement_passes=1, placement_singles=3,
    redis_workers=2, redis_jobs=20, cluster_nodes=(1, 2), cluster_workers_per_node=1,
    read_cluster=QUICK_LARGE, read_samples_cli=2, read_samples_http=5, cli_rounds=1, cli_stored=500,
    failover_rounds=1, failover_submits=10, containment_jobs=20, containment_runs=1, containment_latency_samples=5,
)


@dataclass
class SystemResults:
    label: str
    throughput: dict[int, Throughput] = field(default_factory=dict)
    makespan: Makespan | None = None
    latency: dict[str, list[float]] = field(default_factory=dict)
    pss: float | None = None
    restart: list[Restart] = field(default_factory=list)
    redis_cost: RedisCost | None = None


@dataclass
class Results:
    size: Size
    machine: dict[str, str]
    systems: dict[str, SystemResults]
    placement: list[PlacementCost]
    cluster: list[tuple[int, RedisCost]]  # (nodes, cost) of the cluster-shaped runs
    job_cpu: float  # CPU seconds of one `bash true.sh` on its own: part of every system's cost
    seconds: float
    notes: list[str]
    reads: ReadPaths | None = None
    cli: dict[str, CliTiming] = field(default_factory=dict)  # command -> start-to-exit timings
    failover: Failover | None = None
    containment: ContainmentCost | None = None


def job_cpu(script: Path, runs: int = 50) -> float:
    """CPU seconds of bash running ``script`` alone, to tell the job's own cost from the system's."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        subprocess.run(["bash", str(script)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / runs


def measure_throughput(system: System, scripts: scenarios.Scripts, size: Size) -> Throughput:
    """The best of ``throughput_runs`` runs: load from other processes only ever slows a run down."""
    runs = [scenarios.throughput(system, scripts.trivial, size.throughput_jobs) for _ in range(size.throughput_runs)]
    return max(runs, key=lambda run: run.rate)


def measure_details(system: System, found: SystemResults, scripts: scenarios.Scripts, size: Size, notes: list[str]) -> None:
    """Memory while idle, makespan, latency by every submit path the system has, then restarts."""
    found.pss = scenarios.pss_per_worker(system)
    found.makespan = scenarios.makespan(system, scripts.sleeper, size.makespan_jobs, size.makespan_sleep)
    paths: dict[str, tuple[Callable[[], object], int]] = {
        "python": (lambda: system.submit(scripts.stamper), size.latency_samples),
        "cli": (scenarios.cli_submitter(system.cli_command(scripts.stamper)), size.cli_samples),
    }
    if isinstance(system, ConductorSystem):
        if system.http is not None:
            paths["http"] = (lambda: system.submit_http(scripts.stamper), size.latency_samples)
        else:
            notes.append(f"HTTP latency not measured: {system.api_problem}.")
    for path, (submit, samples) in paths.items():
        found.latency[path] = scenarios.latency(system, submit, scripts.stamp, samples, size.latency_period)
    found.restart = scenarios.restart(system, size.restarts, size.restart_pause)


def run(size: Size, workdir: Path, say: Callable[[str], None]) -> Results:
    """Measure everything; ``say`` reports progress."""
    started = time.monotonic()
    scripts = scenarios.Scripts.write(workdir / "scripts", size.makespan_sleep)
    found = {cls.key: SystemResults(cls.label) for cls in SYSTEMS}
    notes: list[str] = []
    for workers in size.worker_counts:
        for cls in SYSTEMS:
            say(f"{cls.label}, N={workers}: starting")
            with cls(workdir / f"{cls.key}-{workers}", workers) as system:
                scenarios.warm_up(system, scripts.trivial, size.warmup_jobs)
                found[cls.key].throughput[workers] = measure_throughput(system, scripts, size)
                say(f"{cls.label}, N={workers}: {found[cls.key].throughput[workers].rate:.0f} jobs/s")
                if workers == size.redis_workers:
                    cost = found[cls.key].redis_cost = redis_cost.measure(system, scripts.trivial, size.redis_jobs)
                    say(f"{cls.label}, N={workers}: {cost.commands_per_job:.1f} Redis commands and "
                        f"{1e6 * cost.cpu_per_job:.0f} µs of Redis CPU per job")
                if workers == size.detail_workers:
                    measure_details(system, found[cls.key], scripts, size, notes)
    cluster = redis_cost.cluster_sizes(workdir, scripts.trivial, size.cluster_nodes, size.cluster_workers_per_node,
                                       size.redis_jobs, size.warmup_jobs, say)
    say("placement cost over 50 fake nodes")
    placement = placement_costs(workdir / "placement", size.backlogs, size.placement_passes, size.placement_singles)
    say(f"read paths at cluster size: {size.read_cluster}")
    reads = measure_read_paths(workdir / "read-paths", size.read_cluster, size.read_samples_cli,
                               size.read_samples_http, say)
    say(f"command-line start-up: conductor submit vs rq enqueue, conductor jobs/show/nodes on 16 nodes "
        f"with {size.cli_stored:,} stored jobs")
    cli = cli_timings(workdir / "cli", size.cli_rounds, size.cli_stored)
    say(f"Redis failover: primary SIGKILLed under a job stream, {size.failover_rounds} round(s)")
    failed_over = failover.measure(workdir / "failover", size.failover_rounds, size.failover_submits, say)
    contained = None
    why = containment.unavailable()
    if why:
        notes.append(f"job containment's cost not measured: {why}")
    else:
        say(f"job containment: {size.containment_jobs} trivial jobs off and on, {size.containment_runs} run(s) each")
        contained = containment.measure(workdir / "containment", size.containment_jobs, 2, size.containment_runs,
                                        size.containment_latency_samples, say)
    return Results(size, machine.describe(), found, placement, cluster, job_cpu(scripts.trivial),
                   time.monotonic() - started, notes, reads, cli=cli, failover=failed_over, containment=contained)
