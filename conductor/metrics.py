"""Prometheus metrics, read from Redis at scrape time.

Redis is the only store, and any number of API processes (one per node that enables it) may be
scraped; keeping counters in the API process would make each of them tell a different, partial
story that a restart erases. So nothing is counted here: every scrape reads the same books the
CLI reads (job indexes, node ledgers, worker records) and reports them as they are now.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence

from loguru import logger
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from redis import Redis

from . import jobs, keys, resources
from .reconcile import counts
from .jobs import JobState
from .nodestate import NodeState
from .records import fields_of
from .store import UNREACHABLE, redacted

WINDOW = 1000  # ended jobs the histograms are built from (see JobTimes)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
RUN_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600)
FINAL_STATES = tuple(state for state in JobState if state.final)


class ConductorCollector(Collector):
    """Jobs by state, each node's ledger and workers, and job wait/run time histograms.

    When Redis cannot be reached the scrape still succeeds with ``conductor_redis_up 0`` (and the
    error is logged): an alert on that gauge tells "Redis is down" apart from "the API is down",
    which a failed scrape (Prometheus' own ``up``) could not.
    """

    def __init__(self, connection: Redis, redis_url: str) -> None:
        self.connection = connection
        self.redis_url = redis_url

    def collect(self) -> Iterator[Metric]:
        try:
            families = [*job_states(self.connection), *node_ledgers(self.connection),
                        *job_times(self.connection), *reconciliations(self.connection),
                        refused_rq_jobs(self.connection)]
        except UNREACHABLE as error:
            logger.error("metrics: Redis at {} is unreachable: {}", redacted(self.redis_url), error)
            yield GaugeMetricFamily("conductor_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("conductor_redis_up", "Whether Redis answered this scrape.", value=1)
        yield from families


def registry_for(connection: Redis, redis_url: str) -> CollectorRegistry:
    """A registry of its own per app, so that several apps in one process (tests) never collide."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConductorCollector(connection, redis_url))
    return registry


def job_states(connection: Redis) -> list[Metric]:
    """``conductor_jobs{state}``: read from the per-state indexes, so a scrape costs one pipeline."""
    family = GaugeMetricFamily("conductor_jobs", "Jobs currently in each state.", labels=["state"])
    for state, count in jobs.count_by_state(connection).items():
        family.add_metric([state], count)
    return [family]


def node_ledgers(connection: Redis) -> list[Metric]:
    """Per-node totals, allocations and workers: the same numbers as ``GET /api/v1/nodes``."""
    specs = (
        ("conductor_node_cpus", "CPUs the node offers to jobs (TOTAL_CPUS).", "total_cpus"),
        ("conductor_node_allocated_cpus", "CPUs held by the node's RUNNING jobs.", "allocated_cpus"),
        ("conductor_node_memory_bytes", "Memory the node offers to jobs (TOTAL_MEMORY).", "total_memory"),
        ("conductor_node_allocated_memory_bytes", "Memory held by the node's RUNNING jobs.", "allocated_memory"),
        ("conductor_node_workers", "Live workers (fresh heartbeat) of the node.", "workers"),
        ("conductor_node_busy_workers", "Live workers of the node that are running a job.", "busy_workers"),
        ("conductor_node_oom_kills", "Jobs of the node ended OUT_OF_MEMORY by the kernel's OOM killer (ever).",
         "oom_kills"),
    )
    families = [(GaugeMetricFamily(name, text, labels=["node"]), field) for name, text, field in specs]
    states = GaugeMetricFamily("conductor_node_state", "1 for the node's state (IDLE, MIXED, ALLOCATED, "
                               "DRAINING, DRAINED, DOWN), 0 for the others.", labels=["node", "state"])
    containment = GaugeMetricFamily("conductor_node_containment",
                                    "1 for how the node holds jobs to their CPUs and memory (none, cgroup-v1, cgroup-v2).",
                                    labels=["node", "containment"])
    for node in resources.nodes(connection):
        for family, field in families:
            family.add_metric([node["name"]], node[field])
        for state in NodeState:
            states.add_metric([node["name"], state.value], float(node["state"] == state))
        containment.add_metric([node["name"], node["containment"]], 1)
    return [family for family, _ in families] + [states, containment]


def refused_rq_jobs(connection: Redis) -> Metric:
    """``conductor_refused_rq_jobs_total{node}``: RQ jobs naming anything but conductor's job function."""
    family = CounterMetricFamily("conductor_refused_rq_jobs", "RQ jobs the node's workers refused to run: "
                                 "they named something other than conductor's job function.", labels=["node"])
    nodes = sorted(connection.smembers(keys.NODES))
    counts = connection.mget([keys.node_refused_rq_jobs(node) for node in nodes]) if nodes else []
    for node, count in zip(nodes, counts, strict=True):
        family.add_metric([node], float(count or 0))
    return family


def job_times(connection: Redis) -> list[Metric]:
    """``conductor_job_wait_seconds`` and ``conductor_job_run_seconds``, over the last WINDOW ended jobs.

    Why a window and not counters: no process sees every job end (workers on many nodes settle
    them inside Lua), so a true cumulative histogram would have to be kept in Redis by the
    finish script. Until then the histograms are rebuilt at each scrape from the timestamps of
    the WINDOW most recent ended jobs (highest ids among the final states): bounded work per
    scrape however long the history. Consequences: ``_count`` stops growing at WINDOW and
    ``_sum`` may fall, so read them with ``histogram_quantile()`` on the ``_bucket`` series
    directly, never through ``rate()``. Wait = placement (``started_at``) minus submission; run =
    end minus placement; jobs that ended without ever starting (cancelled while PENDING) have
    neither and are left out of both.
    """
    rows = _recent_ended(connection)
    waits = [float(started) - float(submitted) for submitted, started, _ in rows if started and submitted]
    runs = [float(ended) - float(started) for _, started, ended in rows if started and ended]
    return [
        _histogram("conductor_job_wait_seconds", "Time from submission to start, recent ended jobs.",
                   waits, WAIT_BUCKETS),
        _histogram("conductor_job_run_seconds", "Time from start to end, recent ended jobs.", runs, RUN_BUCKETS),
    ]


def _recent_ended(connection: Redis) -> list[tuple[str, str, str]]:
    """(submitted_at, started_at, ended_at) of the WINDOW highest-numbered jobs in a final state.

    Three round trips, and no reply per job. The WINDOW-th newest id of each final state bounds
    the window from below (that state alone has WINDOW jobs from there up), so only ids above the
    highest of those bounds are read (about 2 x WINDOW, not WINDOW per state) and merged here,
    to learn how many of each state are among the WINDOW newest overall; then the times of those
    come with one SORT per state (:mod:`conductor.records`). A job that ends meanwhile counts in
    its state's share in place of an older one: the window stays the newest WINDOW it can be.
    """
    indexes = [keys.state(state) for state in FINAL_STATES]
    with connection.pipeline(transaction=False) as pipe:
        for index in indexes:
            pipe.zrevrange(index, WINDOW - 1, WINDOW - 1)
        bounds = [int(found[0]) for found in pipe.execute() if found]
    with connection.pipeline(transaction=False) as pipe:
        for index in indexes:
            if bounds:
                pipe.zrevrangebyscore(index, "+inf", max(bounds))
            else:  # no state has WINDOW jobs: each has fewer, read them all
                pipe.zrevrange(index, 0, WINDOW - 1)
        per_state: list[list[str]] = pipe.execute()
    recent = sorted((int(job_id) for ids in per_state for job_id in ids), reverse=True)[:WINDOW]
    if not recent:
        return []
    oldest = recent[-1]
    shares = [sum(1 for job_id in ids if int(job_id) >= oldest) for ids in per_state]
    found = fields_of(connection, indexes, keys.job, ("submitted_at", "started_at", "ended_at"), newest=shares)
    return [tuple(value or "" for value in row) for rows in found for row in rows]  # type: ignore[misc]


def _histogram(name: str, text: str, values: Iterable[float], bounds: Sequence[float]) -> HistogramMetricFamily:
    """A histogram family with cumulative buckets, as the exposition format requires."""
    observed = sorted(max(value, 0.0) for value in values)  # clock steps between hosts can go negative
    buckets = [(floatToGoString(bound), float(bisect_right(observed, bound))) for bound in bounds]
    buckets.append(("+Inf", float(len(observed))))
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=sum(observed))


def reconciliations(connection: Redis) -> list[Metric]:
    """``conductor_reconciliations_total{kind}``: repairs the workers made after Redis lost writes."""
    family = CounterMetricFamily("conductor_reconciliations", "Repairs of the books after Redis lost writes, by kind.",
                                 labels=["kind"])
    for kind, value in sorted(counts(connection).items()):
        family.add_metric([kind], value)
    return [family]
