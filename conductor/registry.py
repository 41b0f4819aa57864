"""Worker records in Redis: registration, heartbeats, liveness and the reaping of dead workers.

A worker's record ``worker:<NODE>-<i>`` expires HEARTBEAT_TTL seconds after its last heartbeat,
so a SIGKILLed or frozen worker disappears on its own. Whoever notices a registered name whose
record is gone (one live worker per heartbeat interval, or the restarted instance itself) reaps
it: settles its job exactly once, in Lua. Killing the processes it left is the duty of its own
host (:func:`kill_orphans`), since the reaper may run anywhere.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from loguru import logger
from redis import Redis

from . import cgroups, failover, keys, procs, scripts
from .config import Settings
from .jobs import timestamp
from .records import fields_of

HOST = socket.gethostname()


class WorkerConflict(RuntimeError):
    """Another live process already holds this worker index."""


def register(connection: Redis, settings: Settings, index: int, job: int | None = None) -> None:
    """Write this process's record and add it to the indexes (node slots, all workers)."""
    name = settings.worker_name(index)
    now = f"{time.time():.6f}"
    record = {
        "name": name,
        "node": settings.node_name,
        "index": index,
        "pid": os.getpid(),
        "pid_start": procs.start_ticks(os.getpid()) or "",
        "host": HOST,
        "boot": procs.BOOT,
        "state": "idle" if job is None else "busy",
        "job": "" if job is None else job,
        "started_at": now,
        "last_heartbeat": now,
        "version": version("conductor"),
    }
    with connection.pipeline() as pipe:
        pipe.delete(keys.worker(name))
        pipe.hset(keys.worker(name), mapping=record)
        pipe.pexpire(keys.worker(name), int(settings.heartbeat_ttl * 1000))
        pipe.sadd(keys.WORKERS, name)
        pipe.sadd(keys.node_workers(settings.node_name), name)
        pipe.sadd(keys.NODES, settings.node_name)
        # A slot more: the node is filed for placement unless it is already (node_up, run before
        # this at a worker's start, files it with its true free CPUs; placement checks it anyway).
        pipe.zadd(keys.OPEN_NODES_BY_FREE_CPUS, {settings.node_name: settings.total_cpus}, nx=True)
        pipe.hset(keys.node_worker_processes(settings.node_name), name,
                  f"{HOST} {procs.BOOT} {record['pid']} {record['pid_start']}")
        pipe.execute()


def unregister(connection: Redis, settings: Settings, index: int) -> None:
    """Remove this worker's record and its slot (a clean exit leaves nothing to reap); jobs placed
    on the node that no remaining slot can claim go back to PENDING in the same step."""
    name = settings.worker_name(index)
    handed_back = int(scripts.run(connection, "unregister", name, settings.node_name))  # type: ignore[arg-type]
    if handed_back:
        logger.info("{} job(s) placed on {} handed back to PENDING as {} leaves", handed_back,
                    settings.node_name, name)


def same_host(host: str | None, boot: str | None) -> bool:
    """Whether a recorded host name and boot id are this very machine (PIDs are comparable)."""
    return host == HOST and boot == procs.BOOT


def process_alive(entry: str | None) -> bool:
    """Whether a worker-processes entry ("host boot pid ticks") is a process alive on this host."""
    if not entry:
        return False
    host, boot, pid, ticks = (entry.split(" ") + ["", "", "", ""])[:4]
    return same_host(host, boot) and procs.is_running(int(pid), int(ticks) if ticks else None)


def is_live(record: dict[str, str]) -> bool:
    """Whether a (not yet expired) record belongs to a process that is still there.

    On this host the PID and its start time tell for sure at once; for another host only the
    record's expiry can tell, so it counts as live until it expires.
    """
    if not record:
        return False
    if not same_host(record.get("host"), record.get("boot")):
        return True  # the record has not expired, and Redis's clock is the only one trusted
    ticks = record.get("pid_start")
    return procs.is_running(int(record["pid"]), int(ticks) if ticks else None)


def claim(connection: Redis, rq_connection: Redis, settings: Settings, index: int) -> None:
    """Make index ``index`` of this node ours, or raise :class:`WorkerConflict`.

    A previous instance that died (SIGKILL, OOM, power loss) is cleaned up here, RQ's record of
    it included, so that a restart succeeds at the first try instead of being refused by RQ as
    "an active worker named ... already" until RQ's own TTL runs out.
    """
    name = settings.worker_name(index)
    record = connection.hgetall(keys.worker(name))
    if record and record.get("pid") != str(os.getpid()) and is_live(record):
        raise WorkerConflict(
            f"worker {name} is already running (pid {record.get('pid')} on host {record.get('host')}); "
            "refusing to start a second instance with the same index"
        )
    if record:
        logger.warning("previous instance of {} (pid {}) is gone; cleaning up after it", name, record.get("pid"))
        connection.delete(keys.worker(name))
    last = connection.hget(keys.node_worker_processes(settings.node_name), name)
    if last and process_alive(last):
        raise WorkerConflict(f"worker {name} is already running (pid {last.split(' ')[2]} on this host); "
                             "refusing to start a second instance with the same index")
    # The previous instance is provably gone when it ran here; one on another host is reaped only
    # outside an outage's grace period, like any other.
    reap(connection, name, settings.node_name, force=not last or same_host(*last.split(" ")[:2]))
    kill_orphans(connection, settings.node_name)
    from rq.worker import SimpleWorker  # here: `conductor workers` reads records without loading RQ

    rq_worker = SimpleWorker.find_by_key(
        SimpleWorker.redis_worker_namespace_prefix + keys.rq_worker_name(name), connection=rq_connection
    )
    if rq_worker is not None:
        logger.info("registering the death of the stale RQ worker {}", rq_worker.name)
        rq_worker.register_death()


def reap(connection: Redis, name: str, node: str, force: bool = False) -> list[int]:
    """Settle what dead worker ``name`` left: its job ends NODE_FAIL, its resources are released.

    ``force`` skips the grace period after an outage: for a worker proven dead on this host.
    """
    ended = [int(job_id) for job_id in scripts.run(connection, "reap", name, node, "force" if force else "")]  # type: ignore[union-attr]
    for job_id in ended:
        logger.warning("job {} of dead worker {} settled (NODE_FAIL, or requeued once if submitted so)",
                       job_id, name)
    return ended


def kill_orphans(connection: Redis, node: str) -> list[int]:
    """Kill, on this host, the job processes whose worker is dead or whose job has ended.

    Each entry is one attempt of a job. It is left alone while its worker's process is alive on
    this host (after a Redis outage its record may have expired without it dying) and while its
    worker still owns the running job; other attempts (a requeued job's first copy) are killed.
    """
    groups = keys.node_process_groups(node)
    entries = connection.hgetall(groups)
    mine = [(field, entry.split(" ")) for field, entry in sorted(entries.items())]
    mine = [(field, parts) for field, parts in mine if len(parts) >= 4 and parts[2] == HOST
            and (len(parts) < 5 or parts[4] == procs.BOOT)]
    if not mine:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for field, parts in mine:
            pipe.exists(keys.worker(parts[3]))
            pipe.hmget(keys.job(field.split(":")[0]), "state", "worker", "cgroup")
            pipe.hget(keys.node_worker_processes(node), parts[3])
        rows = pipe.execute()
    killed = []
    for i, (field, parts) in enumerate(mine):
        job_id = field.split(":")[0]
        pgid, ticks, _, worker = parts[:4]
        worker_alive, (state, owner, group), process = rows[3 * i], rows[3 * i + 1], rows[3 * i + 2]
        if state == "RUNNING" and owner == worker and (worker_alive or process_alive(process)):
            continue
        if procs.kill_orphaned_group(int(pgid), int(ticks) if ticks else None, job_id=job_id):
            logger.warning("killed the processes of job {} left behind by worker {}", job_id, worker)
            killed.append(int(job_id))
        # What left the process group (setsid, double fork) is still in the job's cgroup, unless
        # the job runs again (a later attempt, in a cgroup of the same name): then only the group.
        if group and not (state == "RUNNING" and owner and owner != worker):
            cgroups.destroy(group)
        connection.hdel(groups, field)
    return killed


def kill_other_attempts(connection: Redis, node: str, job_id: int, pgid: int) -> list[int]:
    """Kill, on this host, every earlier attempt of job ``job_id`` (a requeued job's first copy
    that outlived its worker), so that a job never runs twice at once; returns the PIDs killed."""
    groups = keys.node_process_groups(node)
    killed: list[int] = []
    for field, entry in connection.hgetall(groups).items():
        parts = entry.split(" ")
        if field.split(":")[0] != str(job_id) or field == f"{job_id}:{pgid}" or len(parts) < 4:
            continue
        if parts[2] != HOST or (len(parts) >= 5 and parts[4] != procs.BOOT):
            continue  # another host's: it kills them itself on its next heartbeat
        done = procs.kill_orphaned_group(int(parts[0]), int(parts[1]) if parts[1] else None, job_id=str(job_id))
        group = connection.hget(keys.job(job_id), "cgroup")
        if group:  # the earlier attempt's cgroup (this attempt has not made its own yet)
            cgroups.destroy(group)
        if done:
            logger.warning("killed an earlier copy of job {} (group {}, worker {})", job_id, parts[0], parts[3])
        killed += done
        connection.hdel(groups, field)
    return killed


def reap_dead(connection: Redis) -> list[int]:
    """Reap every registered worker whose record has expired; returns the jobs that ended."""
    names = sorted(connection.smembers(keys.WORKERS))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(keys.worker(name))
        alive = pipe.execute()
    ended: list[int] = []
    for name, exists in zip(names, alive):
        if not exists:
            node = name.rsplit("-", 1)[0]
            if process_alive(connection.hget(keys.node_worker_processes(node), name)):
                continue  # its record expired but its process lives here: it registers again itself
            logger.warning("worker {} missed its heartbeats; reaping it", name)
            ended += reap(connection, name, node)
    return ended


VIEW_FIELDS = ("name", "node", "index", "pid", "host", "state", "job", "last_heartbeat", "started_at", "version")


def workers(connection: Redis) -> list[dict[str, Any]]:
    """Views of the live workers (field names are a contract), sorted by node and index: one
    round trip however many workers (see :mod:`conductor.records`)."""
    (rows,) = fields_of(connection, [keys.WORKERS], keys.worker, VIEW_FIELDS)
    records = [dict(zip(VIEW_FIELDS, row)) for row in rows if row[0] is not None]
    records.sort(key=lambda r: (r["node"], int(r["index"])))
    return [
        {
            "name": r["name"],
            "node": r["node"],
            "index": int(r["index"]),
            "pid": int(r["pid"]),
            "host": r["host"],
            "state": r["state"],
            "job": int(r["job"]) if r.get("job") else None,
            "last_heartbeat": timestamp(r["last_heartbeat"]),
            "started_at": timestamp(r["started_at"]),
            "version": r.get("version"),
        }
        for r in records
    ]


class Heartbeat(threading.Thread):
    """Keeps this worker's record alive and runs the periodic duties of a node.

    Each beat also calls ``tick`` (the node's own duties). Once per interval, one worker of the
    whole cluster (whoever takes a short lease first) reaps dead workers anywhere and runs
    ``sweep`` (placement's safety pass): a cluster heals as long as any one worker lives, and
    the cost does not grow with the square of the number of workers.
    """

    def __init__(self, connection: Redis, settings: Settings, index: int,
                 tick: Callable[[], None], sweep: Callable[[], None]) -> None:
        super().__init__(name=f"heartbeat-{index}", daemon=True)
        self.connection = connection
        self.settings = settings
        self.index = index
        self.tick = tick
        self.sweep = sweep
        self.job: int | None = None  # the job being run, so a re-registration keeps saying so
        self.stopped = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self.stopped.wait(self.settings.heartbeat_interval if failures == 0 else 1.0):
            try:
                self.beat()
                failures = 0
            except Exception as error:  # keep beating through a Redis outage; say so each time
                failures += 1
                logger.error("heartbeat failed ({} in a row): {}", failures, error)

    def beat(self) -> None:
        name = self.settings.worker_name(self.index)
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        grace = 2 * self.settings.heartbeat_ttl + self.settings.heartbeat_interval
        if not scripts.run(self.connection, "heartbeat", name, ttl_ms, f"{time.time():.6f}", grace):
            logger.warning("record of {} had expired (heartbeats were late); registering again", name)
            register(self.connection, self.settings, self.index, self.job)
        failover.EPOCH.observe(self.connection)
        self.tick()
        lease = int(self.settings.heartbeat_interval * 1000)
        # Observed again right before reaping: Redis may have restarted during this very beat.
        if failover.EPOCH.observe(self.connection) or failover.EPOCH.settling(self.settings.heartbeat_ttl):
            return  # after a failover or restart, live workers first re-assert themselves
        if self.connection.set(keys.MAINTENANCE, name, nx=True, px=lease):
            reap_dead(self.connection)
            self.sweep()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
