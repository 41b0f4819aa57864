"""Identifying and stopping process groups safely across PID reuse.

A job runs in its own session; its leader's PID is the group id. A recorded (pgid, start time)
pair lets a reaper on the same host kill what a dead worker left behind without ever hitting an
unrelated process that happens to have been given the same number later.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


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


def kill_orphaned_group(pgid: int, leader_ticks: int | None) -> bool:
    """SIGKILL the group ``pgid`` left by a dead worker, unless the number now belongs to someone else.

    While any member of the original group lives, Linux does not hand its number out again; so
    the group is ours if its leader is gone, or if the leader is still the recorded process.
    """
    leader = start_ticks(pgid)
    if leader is not None and leader_ticks is not None and leader != leader_ticks:
        return False
    return signal_group(pgid, signal.SIGKILL)


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to every process of group ``pgid``; False if the group is already gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True
