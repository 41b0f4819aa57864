"""CPU time and memory of processes, read from /proc the same way for every system under test."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """Seconds of CPU: the process's own, and that of its children it has reaped.

    Reaped children matter here: a forking RQ worker's work-horses and every system's bash job
    show up only there, so leaving them out would hide the cost of forking a work-horse per job.
    """

    own: float
    children: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own - other.own, self.children - other.children)

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own + other.own, self.children + other.children)


ZERO = CpuTimes(0.0, 0.0)


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def cpu_times(pid: int) -> CpuTimes:
    """utime+stime and cutime+cstime of ``pid`` (/proc/PID/stat fields 14-17)."""
    fields = _stat_fields(pid)
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return CpuTimes((utime + stime) / CLOCK_TICK, (cutime + cstime) / CLOCK_TICK)


def total_cpu(pids: list[int]) -> CpuTimes:
    """The sum of :func:`cpu_times` over ``pids``.

    A process that has gone (a baseline's worker that died and was replaced) is reported on
    stderr and left out, rather than failing the whole run: its CPU is lost to the figure.
    """
    total = ZERO
    for pid in pids:
        try:
            total = total + cpu_times(pid)
        except FileNotFoundError:
            print(f"[bench] process {pid} ended during the measurement; its CPU time is not counted",
                  file=sys.stderr)
    return total


def uptime() -> float:
    """Seconds since boot, the clock /proc reports process start times in."""
    return float(Path("/proc/uptime").read_text().split()[0])


def started(pid: int) -> float:
    """When ``pid`` started, in seconds since boot (clock-tick resolution, 10 ms here)."""
    return int(_stat_fields(pid)[19]) / CLOCK_TICK


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split among their sharers, so forks are not double-counted."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. a worker pool's workers), found by their parent PID.

    /proc/PID/task/TID/children needs a kernel option some hosts lack, so scan /proc instead.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False
