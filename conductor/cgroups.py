"""Job containment: one cgroup per job, below its worker's subtree; the only module that knows /sys/fs/cgroup.

Why: the ledger books CPUs and memory, the kernel enforces them. Each job gets a group of its
own before its script starts (the child joins it between fork and exec), with a hard memory
limit equal to the job's memory (swap counted against it), the job's CPU ids as its cpuset (or a
CPU bandwidth quota where the ids are not real CPUs of this host), and a pids limit. At its end
every process of the group is killed, daemons that called ``setsid`` included, and the group is
removed; its peak memory, CPU time and whether the OOM killer fired are read first.

Both layouts are handled with one code path; only file names differ (:data:`V1` / :data:`V2`):

- cgroup v1 (legacy or hybrid): one hierarchy per controller under /sys/fs/cgroup/<controller>;
- cgroup v2 (unified): one tree at /sys/fs/cgroup, controllers enabled per level through
  ``cgroup.subtree_control``, and no processes in a group that has children.

Where a worker's subtree comes from: a root-run launcher prepares ``<CGROUP_PARENT>/<worker>``
owned by SERVICE_USER (:func:`prepare`), or systemd delegates the worker unit's own group
(``Delegate=``). Without either, jobs run uncontained (containment ``none``) and the worker
says once why.
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from . import procs

ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000


class Mode(StrEnum):
    """A node's containment, as ``conductor nodes`` and the API show it."""

    NONE = "none"
    V1 = "cgroup-v1"
    V2 = "cgroup-v2"


@dataclass(frozen=True)
class Layout:
    """The file names of one cgroup version; ``controllers`` are the hierarchies a job joins.

    For v1 each entry is (controller hierarchy, file); for v2 the hierarchy is always "".
    """

    controllers: tuple[str, ...]
    procs: tuple[str, str]
    memory_limit: tuple[str, str]
    swap_limit: tuple[str, str]  # v1: memory+swap limit (= memory); v2: swap alone (= 0)
    cpus: tuple[str, str]
    mems: tuple[str, str]
    cpu_quota: tuple[str, str]
    pids_max: tuple[str, str]
    peak: tuple[str, str]
    cpu_usage: tuple[str, str]
    oom_events: tuple[str, str]
    freeze: tuple[str, str]


V1 = Layout(
    controllers=("memory", "cpuset", "cpu", "cpuacct", "pids", "freezer"),
    procs=("", "cgroup.procs"),
    memory_limit=("memory", "memory.limit_in_bytes"),
    swap_limit=("memory", "memory.memsw.limit_in_bytes"),
    cpus=("cpuset", "cpuset.cpus"),
    mems=("cpuset", "cpuset.mems"),
    cpu_quota=("cpu", "cpu.cfs_quota_us"),
    pids_max=("pids", "pids.max"),
    peak=("memory", "memory.max_usage_in_bytes"),
    cpu_usage=("cpuacct", "cpuacct.usage"),
    oom_events=("memory", "memory.oom_control"),
    freeze=("freezer", "freezer.state"),
)
V2 = Layout(
    controllers=("",),
    procs=("", "cgroup.procs"),
    memory_limit=("", "memory.max"),
    swap_limit=("", "memory.swap.max"),
    cpus=("", "cpuset.cpus"),
    mems=("", "cpuset.mems"),
    cpu_quota=("", "cpu.max"),
    pids_max=("", "pids.max"),
    peak=("", "memory.peak"),
    cpu_usage=("", "cpu.stat"),
    oom_events=("", "memory.events"),
    freeze=("", "cgroup.freeze"),
)
V2_CONTROLLERS = ("cpuset", "cpu", "memory", "pids")
# Joining a v1 hierarchy costs the kernel an RCU grace period (milliseconds), so a job joins only
# those it needs: the CPU controller only for a bandwidth quota, the freezer never (the end of a
# job kills the group's processes again and again until it is empty, which the pids limit bounds).
V1_ALWAYS = ("memory", "cpuset", "pids", "cpuacct")
LAYOUTS = {Mode.V1: V1, Mode.V2: V2}


class ContainmentError(RuntimeError):
    """Job cgroups cannot be managed here; the message says why, for the operator."""


@dataclass(frozen=True)
class Limits:
    """What a job may use: memory in bytes (0: no limit of its own), CPU ids or a CPU count, processes."""

    memory: int
    cpus: int
    cpu_ids: frozenset[int] | None  # None: the ids are not real CPUs here, so a bandwidth quota instead
    pids_max: int


@dataclass(frozen=True)
class Usage:
    """What a job used, as Slurm's accounting names it: MaxRSS (bytes), CPU time (s), OOM kill."""

    max_rss: int
    cpu_time: float
    oom_killed: bool


def limit_writes(mode: Mode, limits: Limits, mems: str, has_swap_limit: bool) -> list[tuple[str, str, str]]:
    """The (hierarchy, file, value) writes that set ``limits`` on a new job group, in order.

    Pure, so the mapping of both versions is unit-tested. v1 cpusets start empty and must be
    given CPUs and memory nodes before a process may join; v2 ones inherit their parent's.
    """
    layout = LAYOUTS[mode]
    writes: list[tuple[str, str, str]] = []
    if mode is Mode.V1:
        writes.append((*layout.mems, mems))
    if limits.cpu_ids is not None:
        writes.append((*layout.cpus, ",".join(str(c) for c in sorted(limits.cpu_ids))))
    elif mode is Mode.V1:
        writes.append((*layout.cpus, "PARENT"))
    if limits.cpu_ids is None:
        quota = limits.cpus * CFS_PERIOD_US
        writes.append((*layout.cpu_quota, str(quota) if mode is Mode.V1 else f"{quota} {CFS_PERIOD_US}"))
    if limits.memory > 0:
        writes.append((*layout.memory_limit, str(limits.memory)))
        if has_swap_limit:
            writes.append((*layout.swap_limit, str(limits.memory) if mode is Mode.V1 else "0"))
    writes.append((*layout.pids_max, str(limits.pids_max)))
    return writes


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, memory.oom_control, cpu.stat) as a dict."""
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


def parse_usage(mode: Mode, peak: str, cpu: str, events: str) -> Usage:
    """A :class:`Usage` from the texts of the layout's ``peak``, ``cpu_usage`` and ``oom_events`` files."""
    cpu_time = int(cpu) / 1e9 if mode is Mode.V1 else parse_keyed(cpu).get("usage_usec", 0) / 1e6
    return Usage(max_rss=int(peak), cpu_time=round(cpu_time, 6),
                 oom_killed=parse_keyed(events).get("oom_kill", 0) > 0)


def own_groups(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; v2's entry ``0::/path`` is keyed "" (as layouts do)."""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            groups[name] = path
    return groups


def detect_mode() -> Mode:
    """Which cgroup layout this host mounts at /sys/fs/cgroup (NONE when there is none)."""
    if (ROOT / "cgroup.controllers").exists():
        return Mode.V2
    if (ROOT / "memory" / "cgroup.procs").exists():
        return Mode.V1
    return Mode.NONE


def _directory(mode: Mode, hierarchy: str, relative: str) -> Path:
    base = ROOT / hierarchy if mode is Mode.V1 else ROOT
    return base / relative.strip("/") if relative.strip("/") else base


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


@dataclass
class JobGroup:
    """One job's cgroup (one directory per v1 hierarchy, one for v2)."""

    mode: Mode
    relative: str
    directories: dict[str, Path] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.mode]

    def file(self, entry: tuple[str, str]) -> Path:
        return self.directories[entry[0]] / entry[1]

    def procs_files(self) -> list[str]:
        return [str(directory / "cgroup.procs") for directory in self.directories.values()]

    def enter(self) -> None:
        """Move the calling process into the group (run in the job's child between fork and exec)."""
        pid = str(os.getpid()).encode()
        for path in self.procs_files():
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def usage(self) -> Usage:
        layout = self.layout
        peak = self.file(layout.peak)
        if not peak.exists():  # v2 before Linux 5.19 has no memory.peak: the current value is a floor
            peak = peak.with_name("memory.current")
        return parse_usage(self.mode, peak.read_text(), self.file(layout.cpu_usage).read_text(),
                           self.file(layout.oom_events).read_text())

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files():
            try:
                found |= {int(p) for p in Path(path).read_text().split()}
            except FileNotFoundError:
                continue
        return found

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill every process of the group and remove it.

        v2: ``cgroup.kill`` (Linux 5.14+), else frozen, killed, thawed. v1: SIGKILL to every member
        until the group is empty and can be removed (frozen first where it joined the freezer).
        """
        if not any(directory.exists() for directory in self.directories.values()):
            return
        kill_file = self.directories[""] / "cgroup.kill" if self.mode is Mode.V2 else None
        if kill_file is not None and kill_file.exists():
            _write(kill_file, "1")
        else:
            self._freeze_and_kill()
        deadline = time.monotonic() + timeout
        for directory in reversed(list(self.directories.values())):
            while directory.exists():
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    break
                except OSError:  # busy until the killed processes have exited
                    if time.monotonic() > deadline:
                        raise ContainmentError(
                            f"cgroup {directory} still holds processes {sorted(self.pids())} after SIGKILL")
                    procs.send_all(sorted(self.pids()), signal.SIGKILL)
                    time.sleep(0.01)

    def _freeze_and_kill(self) -> None:
        hierarchy = self.layout.freeze[0]
        freeze = self.file(self.layout.freeze) if hierarchy in self.directories else None
        frozen = freeze is not None and freeze.exists()
        if freeze is not None and frozen:
            _write(freeze, "FROZEN" if self.mode is Mode.V1 else "1")
        try:
            procs.send_all(sorted(self.pids()), signal.SIGKILL)
        finally:
            if freeze is not None and frozen:
                _write(freeze, "THAWED" if self.mode is Mode.V1 else "0")


@dataclass
class Containment:
    """A worker's place in the cgroup tree: where its jobs' groups go, or why there are none."""

    mode: Mode
    parent: str = ""  # relative to each hierarchy's root
    reason: str = ""
    has_swap_limit: bool = True

    def group(self, relative: str, hierarchies: tuple[str, ...] | None = None) -> JobGroup:
        layout = LAYOUTS[self.mode]
        return JobGroup(self.mode, relative,
                        {h: _directory(self.mode, h, relative) for h in hierarchies or layout.controllers})

    def create(self, name: str, limits: Limits) -> JobGroup:
        """Make the group ``<parent>/<name>`` with ``limits`` set; raises OSError when the kernel refuses."""
        needed = None
        if self.mode is Mode.V1:
            needed = V1_ALWAYS + (("cpu",) if limits.cpu_ids is None else ())
        group = self.group(f"{self.parent}/{name}", needed)
        try:
            for directory in group.directories.values():
                directory.mkdir()
            mems = cpus = ""
            if self.mode is Mode.V1:
                parent = _directory(Mode.V1, "cpuset", self.parent)
                mems = (parent / "cpuset.mems").read_text().strip()
                cpus = (parent / "cpuset.cpus").read_text().strip()
            for hierarchy, name_, value in limit_writes(self.mode, limits, mems, self.has_swap_limit):
                _write(group.directories[hierarchy] / name_, cpus if value == "PARENT" else value)
        except BaseException:
            group.destroy()
            raise
        return group


def detect(parent: str, worker: str, setting: str) -> Containment:
    """The containment this worker can offer its jobs; ``setting`` is JOB_CONTAINMENT.

    Tried in order: a subtree ``<parent>/<worker>`` prepared by a root-run launcher, then the
    worker's own group when systemd delegated it (same path in every controller, not the root).
    A probe group is created and removed, so a read-only cgroup filesystem (containers) is told
    apart from a usable one before the first job.
    """
    if setting == "off":
        return Containment(Mode.NONE, reason="JOB_CONTAINMENT=off")
    mode = detect_mode()
    if mode is Mode.NONE:
        return Containment(Mode.NONE, reason=f"no cgroup filesystem at {ROOT}")
    layout = LAYOUTS[mode]
    prepared = f"{parent}/{worker}"
    own = own_groups(Path("/proc/self/cgroup").read_text())
    if all(_directory(mode, h, prepared).is_dir() for h in layout.controllers):
        candidate = prepared
    else:
        paths = {own.get(h) for h in layout.controllers}
        candidate = paths.pop() if len(paths) == 1 else None
        if not candidate or candidate == "/":
            return Containment(Mode.NONE, reason=(
                f"no cgroup subtree was prepared for this worker ({_directory(mode, layout.controllers[-1], prepared)}"
                " is missing; `conductor prepare-cgroups` as root does it) and systemd did not delegate one"))
    containment = Containment(mode, candidate.strip("/"))
    try:
        if mode is Mode.V2:
            _enter_v2_leaf(containment, own.get("", ""))
        containment.has_swap_limit = _swap_limit_available(containment)
        containment.create(f"probe-{os.getpid()}", Limits(0, 1, None, 16)).destroy()
    except OSError as error:
        return Containment(Mode.NONE, reason=f"cannot manage cgroups below {candidate}: {error}")
    return containment


def _swap_limit_available(containment: Containment) -> bool:
    """v1 has memory.memsw.* only with swap accounting on; v2 has memory.swap.max only with swap support."""
    hierarchy, name = LAYOUTS[containment.mode].swap_limit
    return (_directory(containment.mode, hierarchy, containment.parent) / name).exists()


def _enter_v2_leaf(containment: Containment, current: str) -> None:
    """v2 allows no processes in a group with children: move the worker into ``<parent>/worker`` first.

    Then the controllers the job groups need are enabled below the parent.
    """
    base = _directory(Mode.V2, "", containment.parent)
    leaf = base / "worker"
    if current.strip("/") != f"{containment.parent}/worker":
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
    available = set((base / "cgroup.controllers").read_text().split())
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise ContainmentError(f"controllers {missing} are not delegated to {base} (Delegate= in the unit)")
    _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))


def job_group_name(job_id: int | str) -> str:
    return f"job-{int(job_id)}"


def destroy(relative: str) -> None:
    """Kill and remove the job group ``relative`` (as recorded on the job) left by a dead worker."""
    mode = detect_mode()
    if mode is Mode.NONE or not relative:
        return
    Containment(mode).group(relative).destroy()


def prepare(parent: str, workers: Iterable[str], user: str) -> list[Path]:
    """Create ``<parent>/<worker>`` for each worker, owned by ``user`` (run as root by launchers).

    The one function the supervisord installer and ``make run`` call: after it, an unprivileged
    worker can create, limit and remove its jobs' groups there. v1 cpusets are given their
    parent's CPUs and memory nodes at each level (they start empty). Returns what it created.
    """
    mode = detect_mode()
    if mode is Mode.NONE:
        raise ContainmentError(f"no cgroup filesystem at {ROOT}")
    account = pwd.getpwnam(user)
    layout = LAYOUTS[mode]
    made: list[Path] = []
    for worker in workers:
        for hierarchy in layout.controllers:
            for relative in (parent, f"{parent}/{worker}"):
                directory = _directory(mode, hierarchy, relative)
                if not directory.is_dir():
                    directory.mkdir()
                    made.append(directory)
                if mode is Mode.V1 and hierarchy == "cpuset":
                    for name in ("cpuset.cpus", "cpuset.mems"):
                        if not (directory / name).read_text().strip():
                            _write(directory / name, (directory.parent / name).read_text().strip())
                if mode is Mode.V2:
                    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
                    _write(directory.parent / "cgroup.subtree_control", enable)
                    if relative != parent:
                        _write(directory / "cgroup.subtree_control", enable)
            worker_dir = _directory(mode, hierarchy, f"{parent}/{worker}")
            for path in (worker_dir, *(worker_dir / n for n in ("cgroup.procs", "tasks", "cgroup.subtree_control",
                                                                 "cgroup.threads"))):
                if path.exists():
                    os.chown(path, account.pw_uid, account.pw_gid)
    return made


def remove_tree(parent: str) -> None:
    """Kill everything below ``<parent>`` and remove it (tests, uninstall)."""
    mode = detect_mode()
    if mode is Mode.NONE:
        return
    for hierarchy in LAYOUTS[mode].controllers:
        top = _directory(mode, hierarchy, parent)
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            Containment(mode).group(str(directory.relative_to(_directory(mode, hierarchy, "")))).destroy()
        Containment(mode).group(parent).destroy()
