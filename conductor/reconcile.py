"""Repairing the books after Redis lost writes: what each worker knows is the truth.

A failover to a replica that lagged, or a Redis restart from an older AOF/RDB, rolls Redis back
a few writes: a job that runs may be PENDING (or unknown) again, a finished job RUNNING, a node's
ledger may count jobs that are gone. The workers know what actually happened, so on every
heartbeat each worker re-asserts it (registration is re-asserted by the heartbeat itself):

- the job it is running: restored as RUNNING on this worker if Redis lost that (never run again);
- the outcomes of its recent jobs, kept in memory until a later job pushes them out: recorded
  again when Redis lost them. Each is read back until Redis is seen holding it, then not again
  while Redis stays the same server (its ``run_id``): only a failover or a restart loses writes;
- RUNNING jobs that Redis attributes to this worker but that it is not running (seen on two
  consecutive beats, so a claim or an end in progress is never mistaken for one): they end
  NODE_FAIL, or go back to PENDING once if submitted with requeue;
- its node's ledger: recomputed from the node's RUNNING jobs when it does not add up.

Every repair is logged and counted in Redis (``conductor_reconciliations_total{kind}``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from loguru import logger
from redis import Redis

from . import failover, invariants, keys, resources, scripts, store
from .config import Settings
from .jobs import JobState

KEEP_OUTCOMES = 64  # recent outcomes a worker can record again; older ones are long replicated


@dataclass
class Memory:
    """What this worker process knows for sure about its jobs, independent of Redis."""

    current: dict[str, str] | None = None
    outcomes: OrderedDict[str, tuple[dict[str, str], str, str, str, str]] = field(default_factory=OrderedDict)
    suspects: set[str] = field(default_factory=set)
    # job id -> the Redis (run_id) seen holding that outcome: not read again while it is the same
    verified: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, job: dict[str, str]) -> None:
        # Without the script (up to 1 MiB): kept per job and only needed to run it, which happened.
        with self.lock:
            self.current = {name: value for name, value in job.items() if name != "script"}

    def ended(self, job_id: int, state: JobState, exit_code: int | None, reason: str) -> None:
        """Remember how job ``job_id`` ended, before recording it (so a lost record can be redone)."""
        with self.lock:
            job = self.current if self.current and self.current["id"] == str(job_id) else {"id": str(job_id)}
            self.outcomes[str(job_id)] = (job, state.value, "" if exit_code is None else str(exit_code),
                                          reason, f"{time.time():.6f}")
            self.outcomes.move_to_end(str(job_id))
            self.verified.pop(str(job_id), None)  # this end (a requeued job's too) is read back anew
            while len(self.outcomes) > KEEP_OUTCOMES:
                gone, _ = self.outcomes.popitem(last=False)
                self.verified.pop(gone, None)
            if self.current and self.current["id"] == str(job_id):
                self.current = None


MEMORY = Memory()  # one per worker process


def confirm_replicated(connection: Redis, job_id: int) -> None:
    """With sentinels, wait until a replica has the end of ``job_id``, so a failover right after
    cannot roll it back (the job would look unfinished and could be placed again). Without a
    confirmation the worker still remembers the outcome and records it again if it is lost."""
    try:
        store.confirm_replicated(connection)
    except store.NotReplicated as error:
        logger.warning("end of job {}: {}; kept to be recorded again if Redis loses it", job_id, error)
    except store.UNREACHABLE as error:
        logger.warning("end of job {}: could not confirm replication ({}); kept to be recorded again", job_id, error)


def count(connection: Redis, kind: str, amount: int = 1) -> None:
    connection.hincrby(keys.RECONCILIATIONS, kind, amount)


def counts(connection: Redis) -> dict[str, int]:
    """Repairs made so far, by kind (``conductor_reconciliations_total``)."""
    return {kind: int(value) for kind, value in connection.hgetall(keys.RECONCILIATIONS).items()}


def _flat(job: dict[str, str]) -> list[str]:
    return [item for pair in job.items() for item in pair]


def reassert(connection: Redis, settings: Settings, worker: str, memory: Memory = MEMORY) -> list[str]:
    """One reconciliation pass of this worker; returns the kinds of the repairs it made."""
    node = settings.node_name
    epoch = failover.EPOCH.run_id  # observed by the heartbeat right before
    with memory.lock:
        current = dict(memory.current) if memory.current else None
        outcomes = [(job_id, outcome) for job_id, outcome in memory.outcomes.items()
                    if epoch is None or memory.verified.get(job_id) != epoch]
    repairs: list[str] = []

    if current is not None and connection.hmget(keys.job(current["id"]), "state", "worker") != ["RUNNING", worker]:
        reply = scripts.run(connection, "restore", current["id"], worker, node, *_flat(current))
        if reply[0] == "restored":  # type: ignore[index]
            logger.warning("reconcile: job {} runs on {} but Redis had it {}; restored as RUNNING",
                           current["id"], worker, reply[1])  # type: ignore[index]
            repairs.append("running_restored")
        elif reply[0] == "conflict":  # type: ignore[index]
            logger.error("reconcile: job {} runs on {} but Redis says {} runs it", current["id"], worker,
                         reply[1])  # type: ignore[index]

    if outcomes:
        with connection.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.EXPIRED_THROUGH, "id")
            for job_id, _ in outcomes:
                pipe.hget(keys.job(job_id), "state")
            expired_through, *states = pipe.execute()
        held = []
        for (job_id, (job, state, code, reason, ended)), stored in zip(outcomes, states):
            if stored is not None and JobState(stored).final:
                held.append(job_id)
                continue
            if stored is None and int(job_id) <= (expired_through or 0):
                continue  # removed by retention (older than newer ended jobs it keeps), not lost
            result = scripts.run(connection, "record", job_id, worker, node, state, code, reason, ended, *_flat(job))
            if result == 1:
                logger.warning("reconcile: the end of job {} ({}) was lost by Redis ({}); recorded again",
                               job_id, state, stored or "job missing")
                repairs.append("outcome_recorded")
            elif result == -1:
                logger.error("reconcile: job {} ended here ({}) but Redis says another worker runs it", job_id, state)
        if epoch is not None:
            with memory.lock:
                memory.verified.update((job_id, epoch) for job_id in held if job_id in memory.outcomes)

    running = sorted(connection.smembers(keys.node_running(node)), key=int)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in running:
            pipe.hget(keys.job(job_id), "worker")
        owners = pipe.execute()
    with memory.lock:
        mine = {memory.current["id"]} if memory.current else set()
        mine |= set(memory.outcomes)
    strays = {job_id for job_id, owner in zip(running, owners) if owner == worker and job_id not in mine}
    for job_id in sorted(strays & memory.suspects, key=int):
        reason = f"Redis lost writes: worker {worker} is not running the job"
        result = scripts.run(connection, "finish", job_id, JobState.NODE_FAIL.value, "", reason, worker)
        if result:
            logger.warning("reconcile: job {} was RUNNING on {} in Redis but not on the worker; {}",
                           job_id, worker, "requeued once" if result == 2 else "NODE_FAIL")
            repairs.append("unclaimed_requeued" if result == 2 else "unclaimed_node_fail")
    memory.suspects = strays - memory.suspects

    if repairs or invariants.ledger_violations(connection, node):
        containment = connection.hget(keys.node(node), "containment") or "none"  # as the node declared it
        resources.node_up(connection, settings, containment)
        if not repairs:
            logger.warning("reconcile: ledger of node {} did not match its RUNNING jobs; recomputed", node)
        repairs.append("ledger_recomputed")
    for kind in repairs:
        count(connection, kind)
    return repairs

