"""Identifying and stopping process groups safely across PID reuse.

A job runs in its own session; its leader's PID is the group id. A recorded (pgid, start time)
pair lets a reaper on the same host kill what a dead worker left behind without ever hitting an
unrelated process that happens to have been given the same number later.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

SETPRIV = "/usr/bin/setpriv"
# JOB_USER's (uid, gid) when jobs run as another user than the worker: see signal_jobs_as.
_job_user: tuple[int, int] | None = None


def signal_jobs_as(uid: int, gid: int) -> None:
    """Jobs run as JOB_USER (``uid``, ``gid``): a signal the kernel refuses to this worker is sent again
    as that user, through setpriv, so the worker needs no CAP_KILL (which would let it signal any
    process of the machine). Called once at the worker's start."""
    global _job_user
    _job_user = (uid, gid)


def run_as_job_user(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | None:
    """Run ``argv`` as JOB_USER in ``cwd`` (entered by the worker first: JOB_USER may not pass JOB_ROOT);
    None when jobs run as the worker's own user."""
    if _job_user is None:
        return None
    uid, gid = _job_user
    return subprocess.run([SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=600)


def _as_job_user(signum: int, targets: list[str]) -> None:
    """``kill -s SIG -- targets`` as JOB_USER (bash's builtin kill; a negative target is a process group).

    Raises ProcessLookupError when a target is gone and PermissionError when even JOB_USER may not
    signal it (it belongs to a third user), as os.kill would.
    """
    assert _job_user is not None
    uid, gid = _job_user
    name = signal.Signals(signum).name.removeprefix("SIG")
    result = subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
         "/bin/bash", "-c", 'kill -s "$0" -- "$@"', name, *targets],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=30)
    if result.returncode != 0:
        if "not permitted" in result.stderr:
            raise PermissionError(f"kill -s {name} {' '.join(targets)} as uid {uid}: {result.stderr.strip()}")
        raise ProcessLookupError(f"kill -s {name} {' '.join(targets)}: {result.stderr.strip()}")


def send(pid: int, signum: int) -> None:
    """os.kill, and as JOB_USER where this worker is not allowed to (see :func:`signal_jobs_as`)."""
    try:
        os.kill(pid, signum)
    except PermissionError:
        if _job_user is None:
            raise
        _as_job_user(signum, [str(pid)])


def send_all(pids: list[int], signum: int) -> None:
    """:func:`send` to each of ``pids``; those refused go to JOB_USER together (one setpriv, not one
    per process: a group being killed may hold thousands). Gone processes are skipped."""
    refused = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        except PermissionError:
            if _job_user is None:
                raise
            refused.append(str(pid))
    if refused:
        try:
            _as_job_user(signum, refused)
        except ProcessLookupError:  # one of them exited meanwhile; bash signalled the others
            pass


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None if gone.

    A zombie counts as gone: it has exited and only waits for its parent to collect it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def is_running(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``ticks``."""
    current = start_ticks(pid)
    return current is not None and (ticks is None or current == ticks)


def boot_id() -> str:
    """This machine's boot and PID namespace: PIDs and start times mean something only within both.

    The kernel's boot id changes at every boot; containers share it, so the PID namespace is part
    of the identity too (two hosts with the same host name never pass for one another).
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown-boot"
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        namespace = "[unknown-ns]"
    return f"{boot}{namespace}"


BOOT = boot_id()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _is_jobs(pid: int, job_id: str) -> bool:
    """Whether ``pid`` provably runs for job ``job_id``: the runner put CONDUCTOR_JOB_ID into its
    environment, which its descendants inherit (reading it needs the same user, or root)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"CONDUCTOR_JOB_ID={job_id}".encode() in environ.split(b"\0")


def kill_orphaned_group(pgid: int, leader_ticks: int | None, boot: str = BOOT, job_id: str = "") -> list[int]:
    """SIGKILL what is left of job ``job_id``'s process group ``pgid``; returns the PIDs signalled.

    Only processes that are provably the job's are signalled: none after a reboot (another boot
    id), the leader only while it is the recorded process (PID + start time), others only if
    they carry the job's id in their environment. A signal the kernel refuses (a group that now
    belongs to another user) is logged, never fatal: a worker must start whatever it finds.
    """
    from loguru import logger

    if boot != BOOT:
        return []
    signalled = []
    for pid in _group_members(pgid):
        ticks = start_ticks(pid)
        if pid == pgid:
            ours = leader_ticks is not None and ticks == leader_ticks
        else:
            ours = bool(job_id) and _is_jobs(pid, job_id) and (leader_ticks is None or (ticks or 0) >= leader_ticks)
        if not ours:
            continue
        try:
            send(pid, signal.SIGKILL)
            signalled.append(pid)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            logger.error("not allowed to kill process {} of job {}'s group {}: {}", pid, job_id, pgid, error)
    return signalled


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to every process of group ``pgid``; False if the group is already gone."""
    try:
        try:
            os.killpg(pgid, signum)
        except PermissionError:  # the group runs as JOB_USER
            if _job_user is None:
                raise
            _as_job_user(signum, [str(-pgid)])
    except ProcessLookupError:
        return False
    return True
