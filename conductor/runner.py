"""Running one job's script: job directory, environment, CPU binding, process group, end state.

The script runs under bash in a session of its own, so a cancel, a time limit or the end of the
job reaches every process it started (Slurm kills a job's leftovers at its end too). The worker
waits on one Redis list per job: the job's own exit and a user's cancel both arrive there at
once, without polling.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from redis import Redis

from . import cgroups, keys, procs
from .jobs import JobState
from .output import CappedOutput
from .registry import HOST, kill_other_attempts
from .store import UNREACHABLE
from .units import format_memory

KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL on cancel or time limit (Slurm: KillWait)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# How long a job is watched locally before the worker blocks on its control list: most short jobs
# end within it and cost Redis no wait, no wake-up and no expiry. A cancel sent meanwhile waits in
# the list (it is never lost) and is read this much later at most.
LOCAL_WAIT = 0.1


@dataclass(frozen=True)
class Outcome:
    state: JobState
    exit_code: int | None
    reason: str
    usage: cgroups.Usage | None = None


def closed_to_others(path: Path) -> bool:
    """Whether some directory on ``path``'s way from / lets no other user through (no 'other' x bit)."""
    for directory in (path, *path.parents):
        if not directory.stat().st_mode & 0o001:
            return True
    return False


def empty_as_job_user(directory: Path) -> None:
    """Delete everything in a job's directory as JOB_USER, which owns what the job created there
    (subdirectories the worker may not write, even ones the job made read-only); retention then
    removes the directory itself. Raises PermissionError when that does not help."""
    emptied = procs.run_as_job_user(
        ["/bin/bash", "-c", "chmod -R u+rwX . 2>/dev/null; find . -mindepth 1 -delete"], directory)
    if emptied is None or emptied.returncode != 0:
        raise PermissionError(f"{directory}: not removable, not even as JOB_USER"
                              + (f": {emptied.stderr.strip()}" if emptied is not None else ""))


def job_dir(job_root: Path, job_id: int | str) -> Path:
    """Where job ``job_id`` keeps its script and output: named by id only, never by user input."""
    return job_root / str(int(job_id))


def output_file(job_root: Path, job_id: int | str, array_job_id: object = None, array_task_id: object = None) -> Path:
    """The job's combined stdout and stderr, named as Slurm names it (``slurm-%A_%a.out`` for an array task)."""
    if array_job_id not in (None, "") and array_task_id not in (None, ""):
        return job_dir(job_root, job_id) / f"slurm-{int(array_job_id)}_{int(array_task_id)}.out"  # type: ignore[call-overload]
    return job_dir(job_root, job_id) / f"slurm-{int(job_id)}.out"


class Runner:
    """Runs jobs for one worker; knows whether this host can honour CPU ids."""

    def __init__(self, connection: Redis, job_root: Path, node: str, worker: str,
                 containment: cgroups.Containment | None = None, pids_max: int = 4096,
                 max_output: int = 1 << 30, job_user: str = "",
                 waiter: Redis | None = None) -> None:
        self.connection = connection
        self.max_output = max_output
        self.job_account = pwd.getpwnam(job_user) if job_user else None
        # Blocks on the job's control list; with a read timeout, so that a paused Redis cannot
        # keep the worker from noticing its job's exit (it then watches the process locally).
        self.waiter = waiter or connection
        self.job_root = job_root
        self.node = node
        self.worker = worker
        self.usable_cpus = os.sched_getaffinity(0)
        self.warned_unbound = False
        self.containment = containment if containment is not None else cgroups.Containment(cgroups.Mode.NONE)
        self.pids_max = pids_max
        self.attempt = ""  # the running attempt's process-group field, for the finish script

    def run(self, job: dict[str, str]) -> Outcome:
        """Run ``job`` (its stored fields) to its end and say how it ended."""
        job_id = int(job["id"])
        self.attempt = ""
        try:  # a requeued job's earlier copy on this host is killed before this one starts
            if job.get("pgid"):  # an attempt records its process group on the job, as it records its entry
                kill_other_attempts(self.connection, self.node, job_id, 0)
        except UNREACHABLE as error:
            logger.error("job {}: could not look for earlier copies ({}); the heartbeat kills them", job_id, error)
        group = None
        try:
            if self.containment.mode is not cgroups.Mode.NONE:
                group = self.containment.create(cgroups.job_group_name(job_id), self._limits(job))
        except OSError as error:
            return Outcome(JobState.FAILED, None, f"cannot create the job's cgroup: {error}")
        try:
            process, output = self._spawn(job_id, job, group)
        except (OSError, subprocess.SubprocessError) as error:
            if group is not None:
                group.destroy()
            return Outcome(JobState.FAILED, None, f"cannot start the job: {error}")
        try:
            self._record_process(job_id, process.pid, group)
            outcome = self._wait(job_id, process, float(job["time_limit"]) if job.get("time_limit") else None)
        finally:
            # Whatever ended the wait (exit, cancel, timeout, a second SIGTERM), nothing of the job
            # may outlive it: Slurm's rule, and what keeps the node's books true. The cgroup also
            # holds what left the process group (setsid, double fork).
            procs.signal_group(process.pid, signal.SIGKILL)
            process.wait()  # the finish script drops the job's process-group entry
            output.finish()
            if group is not None:
                try:
                    usage = group.usage()
                finally:
                    group.destroy()
        if output.truncated:
            outcome = Outcome(outcome.state, outcome.exit_code, "; ".join(filter(None, (outcome.reason, output.reason()))))
        return _contained(outcome, usage if group is not None else None, int(job["memory"]))

    def _limits(self, job: dict[str, str]) -> cgroups.Limits:
        cpus = frozenset(int(c) for c in job.get("cpu_ids", "").split(",") if c)
        concrete = cpus if cpus and cpus <= self.usable_cpus else None
        return cgroups.Limits(int(job["memory"]), int(job["cpus"]), concrete, self.pids_max)

    def _record_process(self, job_id: int, pid: int, group: cgroups.JobGroup | None = None) -> None:
        """Note the job's process group and cgroup, so a reaper can kill it if this worker dies."""
        ticks = procs.start_ticks(pid) or ""
        self.attempt = f"{job_id}:{pid}"  # one entry per attempt: a later attempt never hides this one
        try:  # no MULTI/EXEC: each entry stands on its own, and the finish script drops them
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.hset(keys.job(job_id), mapping={"pgid": pid, "pgid_start": ticks, "host": HOST,
                                                     "cgroup": group.relative if group else ""})
                pipe.hset(keys.node_process_groups(self.node), self.attempt,
                          f"{pid} {ticks} {HOST} {self.worker} {procs.BOOT}")
                pipe.execute()
        except UNREACHABLE as error:  # the job runs on; only orphan clean-up after a crash is lost
            logger.error("job {}: could not record its process group ({}); it runs on", job_id, error)

    def _spawn(self, job_id: int, job: dict[str, str],
               group: cgroups.JobGroup | None = None) -> tuple[subprocess.Popen[bytes], CappedOutput]:
        """Start the script; its stdout and stderr go through a pipe that :class:`CappedOutput` copies."""
        directory = job_dir(self.job_root, job_id)
        script = self._write_script(directory, job["script"])
        if self.job_account is not None:
            self._hand_over(directory)
        # As JOB_USER the script is named from its directory, the job's working directory: JOB_ROOT
        # above it need not be searchable by JOB_USER.
        argv = [*self._as_job_user(), "/bin/bash", script.name if self.job_account else str(script)]
        environment = self._environment(job, directory)
        output = open(output_file(self.job_root, job_id, job.get("array_job_id"), job.get("array_task_id")), "ab")
        read_fd, write_fd = os.pipe()
        try:
            # The spawning thread carries the job's CPUs and, where it can, the job's cgroups into the
            # fork (the child is born inside both); otherwise the child joins its cgroups itself.
            joined = self.containment.spawning(group) if group is not None else nullcontext(None)
            with self._bound(job), joined as join_in_child:
                process = subprocess.Popen(
                    argv,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                    close_fds=True,
                    # Either way the script's first instruction is contained.
                    preexec_fn=join_in_child,
                )
        except BaseException:
            os.close(read_fd)
            output.close()
            raise
        finally:
            os.close(write_fd)
        return process, CappedOutput(read_fd, output, self.max_output, job_id)

    def _as_job_user(self) -> list[str]:
        """The setpriv prefix that runs the script as JOB_USER with no capability and no way to gain one.

        The worker holds CAP_SETUID/CAP_SETGID for this (and to signal the job as JOB_USER, see
        procs.signal_jobs_as) alone; setpriv drops them
        from every set the job could inherit (ambient, inheritable) and sets no_new_privs, so the
        job is an ordinary unprivileged process of another user: it cannot read app.properties
        (0640 root:SERVICE_USER) nor the worker's /proc/PID/environ.
        """
        account = self.job_account
        if account is None:
            return []
        return ["/usr/bin/setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"]

    def _hand_over(self, directory: Path) -> None:
        """Open the job directory to JOB_USER without CAP_CHOWN and without the worker joining JOB_USER's
        group: through its 'other' bits (0777, the script 0644). Only what is already inside can use
        them: JOB_ROOT above keeps every other user out (the worker refuses to start otherwise, see
        :func:`closed_to_others`), the job gets the directory as its working directory, and another
        user's process cannot follow the job's /proc/PID/cwd."""
        directory.chmod(0o777)
        (directory / "script.sh").chmod(0o644)


    @staticmethod
    def _write_script(directory: Path, text: str) -> Path:
        """Write the script whole or not at all (a full disk leaves no truncated script behind)."""
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        script = directory / "script.sh"
        partial = directory / ".script.sh.partial"
        try:
            partial.write_text(text)
            partial.chmod(0o700)
            partial.replace(script)
        except OSError:
            partial.unlink(missing_ok=True)
            raise
        return script

    @contextmanager
    def _bound(self, job: dict[str, str]) -> Iterator[None]:
        """Bind the spawning thread to the job's CPUs, so the child inherits them from its first instruction."""
        cpus = {int(c) for c in job.get("cpu_ids", "").split(",") if c}
        if not cpus or not cpus <= self.usable_cpus:
            if cpus and not self.warned_unbound:
                logger.warning(
                    "CPU ids {} are not all usable on this host (usable: {}): TOTAL_CPUS exceeds the "
                    "host's CPUs, so jobs run without CPU binding", sorted(cpus), sorted(self.usable_cpus)
                )
                self.warned_unbound = True
            yield
            return
        os.sched_setaffinity(0, cpus)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.usable_cpus)

    def _environment(self, job: dict[str, str], directory: Path) -> dict[str, str]:
        """A clean environment: nothing of the worker's (REDIS_URL, API_TOKEN) leaks into jobs."""
        account = self.job_account or pwd.getpwuid(os.getuid())
        env = {
            "PATH": SAFE_PATH,
            "HOME": account.pw_dir,
            "USER": account.pw_name,
            "LOGNAME": account.pw_name,
            "SHELL": "/bin/bash",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(json.loads(job.get("environment") or "{}"))
        job_id, cpus = job["id"], job["cpus"]
        memory_mib = str(int(job["memory"]) // (1 << 20))
        env.update({
            "CONDUCTOR_JOB_ID": job_id,
            "CONDUCTOR_JOB_NAME": job["name"],
            "CONDUCTOR_NODE": self.node,
            "CONDUCTOR_WORKER": self.worker,
            "CONDUCTOR_CPUS": cpus,
            "CONDUCTOR_CPU_IDS": job.get("cpu_ids", ""),
            "CONDUCTOR_MEMORY": format_memory(int(job["memory"])),
            "CONDUCTOR_JOB_DIR": str(directory),
            "SLURM_JOB_ID": job_id,
            "SLURM_JOBID": job_id,
            "SLURM_JOB_NAME": job["name"],
            "SLURM_JOB_ACCOUNT": job["account"],
            "SLURM_JOB_PARTITION": job["partition"],
            "SLURM_NTASKS": job["ntasks_per_node"],
            "SLURM_NTASKS_PER_NODE": job["ntasks_per_node"],
            "SLURM_CPUS_PER_TASK": job["cpus_per_task"],
            "SLURM_CPUS_ON_NODE": cpus,
            "SLURM_JOB_CPUS_PER_NODE": cpus,
            "SLURM_MEM_PER_NODE": memory_mib,
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NNODES": "1",
            "SLURM_JOB_NODELIST": self.node,
            "SLURMD_NODENAME": self.node,
            "SLURM_SUBMIT_DIR": str(directory),
        })
        if job.get("array_job_id"):
            env.update({
                "SLURM_ARRAY_JOB_ID": job["array_job_id"],
                "SLURM_ARRAY_TASK_ID": job["array_task_id"],
                "SLURM_ARRAY_TASK_COUNT": job["array_task_count"],
                "SLURM_ARRAY_TASK_MIN": job["array_task_min"],
                "SLURM_ARRAY_TASK_MAX": job["array_task_max"],
                "SLURM_ARRAY_TASK_STEP": job["array_task_step"],
            })
        return env

    def _wait(self, job_id: int, process: subprocess.Popen[bytes], time_limit: float | None) -> Outcome:
        control = keys.job_control(job_id)
        watch = _ExitWatch(self.connection, process, control)
        deadline = None if time_limit is None else time.monotonic() + time_limit
        _wait_quietly(process, LOCAL_WAIT if time_limit is None else min(LOCAL_WAIT, time_limit))
        while True:
            if process.poll() is not None:
                return _exited(process.returncode)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._stop(process)
                return Outcome(JobState.TIMEOUT, None, f"time limit of {time_limit:g} s reached")
            wait = 5.0 if remaining is None else min(remaining, 5.0)
            if not watch.begin_wait():
                continue  # it has just ended: seen at the top of the loop, without Redis
            try:
                message = self.waiter.blpop([control], timeout=wait)
            except UNREACHABLE as error:
                logger.error("job {}: Redis unreachable while waiting ({}); watching the process locally", job_id, error)
                _wait_quietly(process, min(wait, 1.0))
                continue
            finally:
                watch.end_wait()
            if message and message[1] == "cancel":
                self._stop(process)
                reason = self.connection.hget(keys.job(job_id), "cancel_reason") or "cancelled"
                return Outcome(JobState.CANCELLED, None, reason)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        procs.signal_group(process.pid, signal.SIGTERM)
        _wait_quietly(process, KILL_GRACE)


class _ExitWatch:
    """Tells the waiting loop that the job's process ended: through the job's control list, and
    only while the loop blocks on it.

    A job that ends before the worker waits on Redis (most short jobs) costs Redis nothing for its
    end: the loop sees the exit itself. One that ends while the worker blocks on the list wakes it
    with an ``exit`` entry.
    """

    def __init__(self, connection: Redis, process: subprocess.Popen[bytes], control: str) -> None:
        self.connection = connection
        self.process = process
        self.control = control
        self.lock = threading.Lock()
        self.exited = False
        self.waiting = False
        threading.Thread(target=self._watch, daemon=True).start()

    def begin_wait(self) -> bool:
        """Before blocking on the list: False when the process has ended already (do not block)."""
        with self.lock:
            if self.exited:
                return False
            self.waiting = True
            return True

    def end_wait(self) -> None:
        with self.lock:
            self.waiting = False

    def _watch(self) -> None:
        self.process.wait()
        with self.lock:
            self.exited = True
            announce = self.waiting
        if not announce:
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.rpush(self.control, "exit")
                pipe.expire(self.control, 60)  # if the job was settled first
                pipe.execute()
        except UNREACHABLE as error:  # the waiting loop notices the exit by itself within a second
            logger.debug("could not announce the end of {}: {}", self.control, error)


def _wait_quietly(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _contained(outcome: Outcome, usage: cgroups.Usage | None, memory: int) -> Outcome:
    """Attach ``usage``; a job that failed after the OOM killer fired in its group ran out of memory."""
    if usage is None:
        return outcome
    if usage.oom_killed and outcome.state is JobState.FAILED:
        return Outcome(JobState.OUT_OF_MEMORY, outcome.exit_code,
                       f"memory limit of {format_memory(memory)} exceeded: the kernel's OOM killer ended "
                       f"a process of the job ({outcome.reason})", usage)
    return Outcome(outcome.state, outcome.exit_code, outcome.reason, usage)


def _exited(returncode: int) -> Outcome:
    if returncode == 0:
        return Outcome(JobState.COMPLETED, 0, "")
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return Outcome(JobState.FAILED, 128 - returncode, f"killed by {name}")
    return Outcome(JobState.FAILED, returncode, f"exit status {returncode}")
