"""The single-worker entrypoint: ``conductor worker --index N``, one process per worker slot.

supervisord or systemd starts, restarts and stops these processes; nothing here forks siblings.
Each instance registers ``worker:<NODE>-<N>``, heartbeats on its own thread and runs an RQ
worker loop on its node's queue. Jobs run straight from the worker process (RQ's SimpleWorker):
a job is a bash script in its own process group, so forking a Python work-horse per job as RQ's
default worker does would only add cost. The worker's state (its settings, connections, runner,
heartbeat and a pending stop) lives on its :class:`ConductorRQWorker` instance.
"""

from __future__ import annotations

import os
import pwd
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

from loguru import logger
from redis import Redis
from redis.client import Pipeline
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker, WorkerStatus

from . import cgroups, failover, keys, placement, procs, reconcile, registry, resources, retention, rqjobs, scripts, spool
from .config import Settings
from .jobs import JobState
from .runner import Runner, closed_to_others, empty_as_job_user
from .store import UNREACHABLE, connect, redacted
from .units import format_memory

EXIT_CONFLICT = 3
EXIT_NO_REDIS = 4
EXIT_ROOT = 5
EXIT_NO_CONTAINMENT = 6
EXIT_JOB_ROOT = 7
STOP_RETRY = 10.0  # how long a stopping worker keeps trying to record a job's end before leaving it spooled
WAIT_TIMEOUT = 7.0  # read timeout of the runner's wait for a job's control messages (each wait is <= 5 s)


def _say(level: str, message: str) -> None:
    """Log from a signal handler: loguru refuses (RuntimeError) when the interrupted code was in the
    middle of a log call; the line then goes straight to stderr, and the stop is never lost."""
    try:
        logger.log(level, message)
    except RuntimeError:
        os.write(2, f"{level} | {message}\n".encode())


class WorkerStartError(RuntimeError):
    """The worker cannot start; ``status`` is the process exit status that says why."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    """What running conductor's jobs needs from the worker process: set once it has registered."""

    settings: Settings
    index: int
    connection: Redis
    rq_connection: Redis
    runner: Runner
    heartbeat: registry.Heartbeat


class ConductorQueue(Queue):
    """A node's RQ queue, popped with BLPOP: no copy of each job in RQ's intermediate queue.

    RQ moves each job it dequeues to an intermediate list (BLMOVE) so that a worker dying before
    the job starts does not lose it, and removes it from there again afterwards. conductor's
    ledger already covers that: a job placed on a node but never claimed is queued again by
    :func:`conductor.placement.requeue_stalled`, so the copy and its removal (one LREM per job)
    would only repeat what Redis knows. Entries an older release left in an intermediate list are
    still cleared by RQ's maintenance.
    """

    @classmethod
    def lmove(cls, connection: Redis, queue_key: str, timeout: int | None):  # type: ignore[no-untyped-def]
        return cls.lpop([queue_key], timeout, connection=connection)


class ConductorRQWorker(SimpleWorker):
    """RQ's in-process worker loop, running conductor's jobs itself; the worker's state lives here.

    A second SIGTERM/SIGINT stops it at once: RQ ignores a second signal within one second of the
    first (meant for worker pools, which forward duplicates), a single supervised process gets no
    duplicates.

    conductor's own ledger (Lua, atomic per transition) records every job, so RQ only carries the
    job to the node: its queue, the worker record and its counts (what ``rq info`` shows) are
    kept, while RQ's execution records, job registries and result bookkeeping, written only to be
    deleted again, are not (they were most of Redis's work per job).
    """

    max_connection_wait_time = 1.0  # RQ's 60 s would leave a worker idle long after a failover
    node_name = ""  # where refused jobs are counted
    context: Context | None = None  # set by run() once the worker has registered
    stop_at: float | None = None  # when a stop was requested (time.monotonic()), from local state only

    _dequeuing = False
    # RQ refreshes its worker record several times per job, each a separate round trip: one
    # pipeline per refresh, none when the last one is under a second old and asked no shorter
    # expiry, and no rewrite of an unchanged state keep what `rq info` shows at a fraction of the cost.
    _last_beat: tuple[float, int] = (0.0, 0)
    _suspension_checked = float("-inf")

    def stopping(self) -> bool:
        return self.stop_at is not None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Note the stop first, then say so; act on it at the next safe point.

        Local state only: a handler that needs Redis loses the stop during an outage. RQ's own
        handler raises StopRequested wherever the worker is when not busy, which RQ's job
        bookkeeping right after a job's end can swallow; here it is raised only while waiting for
        a job, and otherwise the work loop stops at its next turn.
        """
        if self.stop_at is None:
            self.stop_at = time.monotonic()
        self._stop_requested = True
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        busy = self.context is not None and self.context.heartbeat.job is not None
        _say("INFO", "stop requested: finishing the current job first (signal again to stop now)"
             if busy else "stop requested")
        if self._dequeuing:
            raise StopRequested()

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._dequeuing = True
        try:
            if self._stop_requested:
                raise StopRequested()
            return super().dequeue_job_and_maintain_ttl(*args, **kwargs)
        finally:
            self._dequeuing = False

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        _say("WARNING", "second stop signal: stopping now, the current job ends NODE_FAIL")
        raise SystemExit(1)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        ttl = timeout or self.worker_ttl + 60
        at, last_ttl = self._last_beat
        if time.monotonic() - at < 1.0 and ttl <= last_ttl:
            return None
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(ttl, pipe)
            pipe.execute()
        self._last_beat = (time.monotonic(), ttl)
        return None

    def check_for_suspension(self, burst: bool) -> None:
        """``rq suspend`` is honoured within a second, without a round trip before every job.

        RQ's loop quits on any error outside its dequeue, and this check is the first command after a
        job's end: an outage starting then (a failover) would end the worker. It is left to the
        dequeue's own retries instead.
        """
        if time.monotonic() - self._suspension_checked < 1.0:
            return
        try:
            super().check_for_suspension(burst)
        except UNREACHABLE as error:
            logger.error("could not check for `rq suspend` (Redis unreachable: {}); waiting for jobs again", error)
            return
        self._suspension_checked = time.monotonic()

    def run_maintenance_tasks(self) -> None:
        """RQ's periodic clean-up; through an outage it waits for the next turn (see :meth:`check_for_suspension`)."""
        try:
            super().run_maintenance_tasks()
        except UNREACHABLE as error:
            logger.error("RQ's maintenance skipped (Redis unreachable: {})", error)

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run only conductor's own job function (see :mod:`conductor.rqjobs`); refuse and count the rest."""
        why = rqjobs.refusal(job)
        if why is not None:
            logger.warning("refused RQ job {!r} from queue {}: {}; it was deleted without running",
                           job.id[:200], queue.name, why)
            with self.connection.pipeline() as pipe:
                pipe.incr(keys.node_refused_rq_jobs(self.node_name))
                pipe.delete(job.key)
                pipe.execute()
            return
        self.set_state(WorkerStatus.BUSY)
        try:
            self.perform(int(job.args[0]))
        except Exception:  # the job's end is recorded (or left to the reaper); the worker carries on
            logger.exception("job {} raised in the worker", job.args[0])
        self._forget(job, queue)

    def _forget(self, job: Job, queue: Queue) -> None:
        """Take the done job off RQ's books in one round trip: its hash goes (it was never in an
        intermediate queue: :class:`ConductorQueue`), the worker's count goes up and it is idle again."""
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.delete(job.key)
                self.increment_successful_job_count(pipeline=pipe)
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
                pipe.execute()
        except UNREACHABLE as error:
            self._state = ""  # written again before the next job
            logger.error("could not remove RQ job {} (Redis unreachable: {}); RQ's maintenance removes it",
                         job.id, error)

    def perform(self, job_id: int) -> None:
        """Claim job ``job_id`` for this worker, run it, record its end, then place what now fits."""
        ctx = self.context
        if ctx is None:
            raise RuntimeError("conductor jobs run only inside `conductor worker`")
        name = ctx.settings.worker_name(ctx.index)
        reply = scripts.run(ctx.connection, "start", job_id, name, ctx.settings.node_name)
        if reply[0] != "run":  # type: ignore[index]
            logger.info("skipping job {}: {}", job_id, reply[1])  # type: ignore[index]
            return
        job = dict(zip(reply[1::2], reply[2::2]))  # type: ignore[index]
        logger.info("Executing job {} ({}, {} CPUs {}, {})", job_id, job["name"], job["cpus"],
                    job["cpu_ids"] or "-", format_memory(int(job["memory"])))
        ctx.heartbeat.job = job_id
        reconcile.MEMORY.started(job)
        try:
            outcome = ctx.runner.run(job)
        except BaseException as error:
            reason = "worker stopped before the job ended" if isinstance(error, SystemExit) else f"worker error: {error!r}"
            self._finish(job_id, JobState.NODE_FAIL, None, reason)
            raise
        finally:
            ctx.heartbeat.job = None
        self._finish(job_id, outcome.state, outcome.exit_code, outcome.reason, outcome.usage)
        if self.stopping():
            # Leave the slot before placing anything: a stopping worker must not be handed a job it
            # will never claim (jobs already placed on it go back to PENDING in the same step).
            ctx.heartbeat.stopped.set()
            try:
                registry.unregister(ctx.connection, ctx.settings, ctx.index)
            except UNREACHABLE as error:
                logger.error("could not leave slot {} (Redis unreachable: {})", name, error)
                return
        placement.place(ctx.connection, ctx.rq_connection)

    def _finish(self, job_id: int, state: JobState, exit_code: int | None, reason: str,
                usage: cgroups.Usage | None = None) -> None:
        """Record the end of a job, never losing it and never waiting for Redis past a stop request.

        The end is spooled on local disk first; through a Redis outage the worker keeps trying,
        unless it has been told to stop: then, after STOP_RETRY more seconds, it leaves and the spool
        is replayed by the next worker of this node to start (or a sibling's heartbeat) once Redis
        answers. The stop watchdog ends the process at WORKER_STOP_TIMEOUT whatever it waits for.
        """
        ctx = self.context
        assert ctx is not None
        name = ctx.settings.worker_name(ctx.index)
        reconcile.MEMORY.ended(job_id, state, exit_code, reason)
        code = "" if exit_code is None else exit_code
        args: list[object] = [job_id, state.value, code, reason, name, ctx.runner.attempt]
        if usage is not None:  # recorded with the end, by the same script (and spooled with it)
            args += resources.usage_args(ctx.settings.node_name, usage)
        spooled = spool.write(ctx.settings, job_id, args)
        delay = 0.1
        leave_at: float | None = None
        while True:
            try:
                settled = scripts.run(ctx.connection, "finish", *args)
                spooled.unlink(missing_ok=True)
                break
            except UNREACHABLE as error:
                spool.write(ctx.settings, job_id, args, sync=True)
                if self.stopping() and leave_at is None:
                    leave_at = time.monotonic() + STOP_RETRY  # a Redis restart may be just seconds long
                if leave_at is not None and time.monotonic() >= leave_at:
                    logger.error("cannot record the end of job {} ({}): Redis unreachable ({}); stopping with it "
                                 "kept in {}, recorded when a worker of this node runs again",
                                 job_id, state.value, error, spooled)
                    return
                logger.error("cannot record the end of job {} ({}): Redis unreachable ({}); retrying in {:.1f} s",
                             job_id, state.value, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        reconcile.confirm_replicated(ctx.connection, job_id)
        if settled == 2:
            logger.warning("Job {} requeued ({})", job_id, reason)
        elif settled:
            logger.info("Job {} {}{}", job_id, state.value, f" ({reason})" if reason else "")
        else:
            logger.warning("job {} had already been settled elsewhere (reaped or cancelled); result {} dropped",
                           job_id, state.value)

    def tick(self) -> None:
        """The heartbeat's periodic duties beyond the record itself."""
        ctx = self.context
        if ctx is None:
            return
        settings = ctx.settings
        spool.replay(ctx.connection, settings)
        try:  # before orphans are judged; a failing repair must not stop the node's other duties
            reconcile.reassert(ctx.connection, settings, settings.worker_name(ctx.index))
        except UNREACHABLE:
            raise
        except Exception:
            logger.exception("reconciliation failed; it runs again on the next heartbeat")
        if not failover.EPOCH.settling(settings.heartbeat_ttl):  # a worker not yet re-registered is not dead
            registry.kill_orphans(ctx.connection, settings.node_name)
        placement.requeue_stalled(ctx.connection, ctx.rq_connection, settings.node_name, 2 * settings.heartbeat_ttl)
        lease = int(settings.heartbeat_interval * 4000)  # one worker of the node, every few beats
        if ctx.connection.set(keys.node_cleanup(settings.node_name), ctx.index, nx=True, px=lease):
            retention.remove_directories(ctx.connection, settings.job_root,
                                         empty_as_job_user if settings.job_user else None)
        if ctx.heartbeat.job is not None:
            self.heartbeat()  # keep RQ's record of a worker busy with a long job alive

    def sweep(self) -> None:
        """The cluster's maintenance, run by one worker at a time: placement's safety pass, retention."""
        ctx = self.context
        if ctx is None:
            return
        placement.place(ctx.connection, ctx.rq_connection, full=True)
        retention.expire(ctx.connection, ctx.settings)

    def stop_watchdog(self, settings: Settings) -> None:
        """Make a stop requested by supervisord or systemd end within WORKER_STOP_TIMEOUT, Redis or not.

        Shortly before the supervisor's own SIGKILL would come, a job still running ends NODE_FAIL
        (spooled: Redis may be gone) and its processes are killed; then the process leaves, even if
        its main thread is stuck waiting for Redis. Spooled outcomes are replayed by the next worker.
        """
        margin = min(5.0, settings.worker_stop_timeout / 5)
        while self.stop_at is None or time.monotonic() < self.stop_at + settings.worker_stop_timeout - margin:
            time.sleep(0.2)
        ctx = self.context
        if ctx is not None and ctx.heartbeat.job is not None:
            job_id = ctx.heartbeat.job
            spool.write(settings, job_id, [job_id, JobState.NODE_FAIL.value, "", "worker stop timeout reached "
                        "before the job ended", settings.worker_name(ctx.index), ctx.runner.attempt], sync=True)
            if ctx.runner.attempt:
                procs.signal_group(int(ctx.runner.attempt.split(":")[1]), signal.SIGKILL)
            _say("ERROR", f"WORKER_STOP_TIMEOUT ({settings.worker_stop_timeout} s) nearly reached: job {job_id} "
                 "killed and spooled as NODE_FAIL; leaving")
        else:
            _say("ERROR", f"WORKER_STOP_TIMEOUT ({settings.worker_stop_timeout} s) nearly reached while waiting "
                 "for Redis; leaving (spooled job ends are recorded when a worker of this node runs again)")
        os._exit(0)


def banner(settings: Settings, index: int) -> None:
    logger.info("SCNS-Conductor Worker Service: node {}, worker {} of {}, {} CPUs, {} memory, queue {}",
                settings.node_name, index, settings.worker_concurrency, settings.total_cpus,
                format_memory(settings.total_memory), keys.queue_name(settings.node_name))
    for warning in settings.warnings():
        logger.warning(warning)
    if index > settings.worker_concurrency:
        logger.warning("index {} is above WORKER_CONCURRENCY={}", index, settings.worker_concurrency)


def run(settings: Settings, index: int) -> int:
    """The seed's per-worker routine; returns the process exit status."""
    banner(settings, index)
    if os.geteuid() == 0 and not settings.allow_root_jobs:
        raise WorkerStartError(
            "refusing to run jobs as root: run workers as SERVICE_USER "
            f"({settings.service_user}), or set ALLOW_ROOT_JOBS=true for development", EXIT_ROOT)
    containment = cgroups.detect(settings.cgroup_parent, settings.worker_name(index), settings.job_containment)
    if containment.mode is cgroups.Mode.NONE:
        if settings.job_containment == "required":
            raise WorkerStartError(f"JOB_CONTAINMENT=required but jobs cannot be contained: {containment.reason}",
                                   EXIT_NO_CONTAINMENT)
        logger.warning("jobs run without containment (no memory, CPU or process limits; daemons may "
                       "outlive their jobs): {}", containment.reason)
    else:
        logger.info("job containment: {} below {}", containment.mode.value, containment.parent)
    if settings.job_user:
        _check_job_user(settings.job_user)
    try:
        settings.job_root.mkdir(parents=True, exist_ok=True)
        spool.directory(settings).mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise WorkerStartError(f"JOB_ROOT {settings.job_root} is not usable: {error.strerror} "
                               f"({error.filename})", EXIT_JOB_ROOT) from None
    if settings.job_user and not closed_to_others(settings.job_root):
        raise WorkerStartError(f"JOB_ROOT {settings.job_root} is open to every user (every directory up to / "
                               "has the 'other' x bit): with JOB_USER the job directories below it are "
                               "opened to JOB_USER through their 'other' bits, so JOB_ROOT must keep other "
                               f"users out: chmod o-rwx {settings.job_root} (conductor apply creates it 0750)",
                               EXIT_JOB_ROOT)
    connection = connect(settings)
    rq_connection = connect(settings, decode=False)
    scripts.load_all(connection)
    try:
        connection.ping()
    except UNREACHABLE as error:
        raise WorkerStartError(f"Redis at {redacted(settings.redis_url)} does not answer: {error}",
                               EXIT_NO_REDIS) from None
    spool.replay(connection, settings)
    try:
        registry.claim(connection, rq_connection, settings, index)
    except registry.WorkerConflict as error:
        raise WorkerStartError(str(error), EXIT_CONFLICT) from None
    for group in containment.leftovers():  # this instance is ours alone from here (claim)
        left = sorted(group.pids())
        try:
            group.destroy()
        except (cgroups.ContainmentError, OSError) as error:  # never fatal: the worker must start
            logger.error("could not remove job group {} left by this instance's previous process: {}",
                         group.relative, error)
            continue
        logger.warning("removed job group {} left by this instance's previous process{}", group.relative,
                       f", killing {left}" if left else "")
    resources.node_up(connection, settings, containment.mode.value)
    registry.register(connection, settings, index)
    name = settings.worker_name(index)
    rq_worker = ConductorRQWorker(
        [keys.queue_name(settings.node_name)],
        name=keys.rq_worker_name(name),
        connection=rq_connection,
        worker_ttl=max(int(settings.heartbeat_ttl), 15),
        serializer=rqjobs.SERIALIZER,
        queue_class=ConductorQueue,
    )
    rq_worker.node_name = settings.node_name
    heartbeat = registry.Heartbeat(connection, settings, index, tick=rq_worker.tick, sweep=rq_worker.sweep)
    rq_worker.context = Context(settings, index, connection, rq_connection,
                                Runner(connection, settings.job_root, settings.node_name, name, containment,
                                       settings.job_pids_max, settings.max_output_size, settings.job_user,
                                       waiter=connect(settings, socket_timeout=WAIT_TIMEOUT, retries=0)), heartbeat)
    heartbeat.start()
    threading.Thread(target=rq_worker.stop_watchdog, args=(settings,), name="stop-watchdog", daemon=True).start()
    logger.info("worker {} registered (pid {}); RQ worker {}", name, os.getpid(), rq_worker.name)
    try:
        placement.place(connection, rq_connection)
        rq_worker.work(burst=settings.worker_burst)
    finally:
        heartbeat.stop()
        try:
            registry.unregister(connection, settings, index)
        except UNREACHABLE as error:
            logger.error("could not unregister {} (Redis unreachable: {}); it expires by itself", name, error)
        connection.close()
        rq_connection.close()
        rq_worker.context = None
        logger.info("worker {} stopped", name)
    return 0


def _check_job_user(name: str) -> None:
    """Fail at start, not at the first job, when jobs cannot be run as JOB_USER."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise WorkerStartError(f"JOB_USER={name} does not exist: create it (the installers do), "
                               "or leave JOB_USER empty to run jobs as the worker's own user", 2) from None
    if os.geteuid() != 0 and not _has_capabilities(CAP_SETUID, CAP_SETGID):
        raise WorkerStartError(f"JOB_USER={name} needs CAP_SETUID and CAP_SETGID in the worker "
                               "(the rendered systemd unit and supervisord program grant exactly these)", 2)
    procs.signal_jobs_as(account.pw_uid, account.pw_gid)  # stopping jobs needs no CAP_KILL


CAP_SETGID, CAP_SETUID = 6, 7


def _has_capabilities(*numbers: int) -> bool:
    """Whether this process holds every capability in ``numbers`` (its effective set, /proc/self/status)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("CapEff:"))
    effective = int(line.split()[1], 16)
    return all(effective >> number & 1 for number in numbers)
