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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
# Each v1 hierarchy a job joins is a directory to make, join and remove, so a job joins only those
# it needs: the CPU controller only for a bandwidth quota, the freezer never (the end of a job
# kills the group's processes again and again until it is empty, which the pids limit bounds).
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


def limit_writes(mode: Mode, limits: Limits, mems: str, has_swap_limit: bool,
                 cpuset_inherited: bool = False) -> list[tuple[str, str, str]]:
    """The (hierarchy, file, value) writes that set ``limits`` on a new job group, in order.

    Pure, so the mapping of both versions is unit-tested. v1 cpusets start empty and must be
    given CPUs and memory nodes before a process may join, unless the parent has
    ``cgroup.clone_children`` set (``cpuset_inherited``: :func:`prepare` sets it), which makes the
    kernel copy the parent's at creation; v2 ones always inherit their parent's.
    """
    layout = LAYOUTS[mode]
    v1_empty = mode is Mode.V1 and not cpuset_inherited
    writes: list[tuple[str, str, str]] = []
    if v1_empty:
        writes.append((*layout.mems, mems))
    if limits.cpu_ids is not None:
        writes.append((*layout.cpus, ",".join(str(c) for c in sorted(limits.cpu_ids))))
    elif v1_empty:
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


# A job's files are read and written with plain system calls on string paths: a few per job, but
# on the path of every job, where pathlib and text-mode file objects cost more than the kernel.
def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path | str) -> str:
    """A cgroup file's text in one read (these files are small)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _join_thread(tasks_files: Iterable[str]) -> None:
    """Move the calling thread, and only it, into the v1 group of each ``tasks`` file.

    ``0`` written to a v1 ``tasks`` file names the writer itself; the kernel moves a single thread
    that moves itself without the global lock that moving a whole process takes (writing a PID to
    ``cgroup.procs``), whose every use waits for an RCU grace period: milliseconds per hierarchy,
    more on a loaded machine. That wait was most of what containment cost per job.
    """
    for path in tasks_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


@dataclass
class JobGroup:
    """One job's cgroup (one directory per v1 hierarchy, one for v2)."""

    mode: Mode
    relative: str
    paths: dict[str, str] = field(default_factory=dict)  # hierarchy: directory

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.mode]

    @property
    def directories(self) -> dict[str, Path]:
        return {hierarchy: Path(path) for hierarchy, path in self.paths.items()}

    def file(self, entry: tuple[str, str]) -> str:
        return f"{self.paths[entry[0]]}/{entry[1]}"

    def procs_files(self) -> list[str]:
        return [f"{path}/cgroup.procs" for path in self.paths.values()]

    def tasks_files(self) -> list[str]:
        return [f"{path}/tasks" for path in self.paths.values()]

    def enter(self) -> None:
        """Move the calling process into the group (run in the job's child between fork and exec).

        The child is single-threaded there, so on v1 moving its one thread (``tasks``, see
        :func:`_join_thread`) moves the whole process, without the global lock; v2 has no such
        file for a domain group and takes the process's PID in ``cgroup.procs``.
        """
        if self.mode is Mode.V1:
            _join_thread(self.tasks_files())
            return
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
        if self.mode is Mode.V2 and not os.path.exists(peak):  # before Linux 5.19 no memory.peak: the current value is a floor
            peak = self.file(("", "memory.current"))
        return parse_usage(self.mode, _read(peak), _read(self.file(layout.cpu_usage)),
                           _read(self.file(layout.oom_events)))

    def pids(self) -> set[int]:
        """The processes in the group, never this worker itself (whose spawning thread visits the
        group for an instant, see :meth:`Containment.spawning`): a worker never signals itself."""
        found: set[int] = set()
        for path in self.procs_files():
            try:
                found |= {int(p) for p in _read(path).split()}
            except FileNotFoundError:
                continue
        found.discard(os.getpid())
        return found

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill every process of the group and remove it.

        Removal is tried first: a group whose processes are all gone (a job whose script was
        reaped, having left nothing behind: the common case) is removed at once, without reading
        its members or signalling anyone. A group still holding processes refuses (EBUSY); then
        they are killed (v2: ``cgroup.kill``, Linux 5.14+, else frozen, killed, thawed; v1: SIGKILL
        to every member, again at each try) and removal is retried, waiting briefly, then longer,
        until they have exited (a process is counted in its group until its last context switch,
        a moment after it was reaped).
        """
        deadline = time.monotonic() + timeout
        delay = 0.0005
        for directory in reversed(list(self.paths.values())):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the killed processes have exited
                    if time.monotonic() > deadline:
                        raise ContainmentError(
                            f"cgroup {directory} still holds processes {sorted(self.pids())} after SIGKILL") from None
                    self._kill()
                    time.sleep(delay)
                    delay = min(2 * delay, 0.01)

    def _kill(self) -> None:
        kill_file = self.file(("", "cgroup.kill")) if self.mode is Mode.V2 else None
        if kill_file is not None and os.path.exists(kill_file):
            _write(kill_file, "1")
        else:
            self._freeze_and_kill()

    def _freeze_and_kill(self) -> None:
        hierarchy = self.layout.freeze[0]
        freeze = self.file(self.layout.freeze) if hierarchy in self.paths else None
        frozen = freeze is not None and os.path.exists(freeze)
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
    cpuset_inherited: bool = False  # v1: the parent's cgroup.clone_children is set (see limit_writes)
    # v1: where the spawning thread goes back to after visiting a job's group, per hierarchy; None:
    # it does not visit, the child joins from inside (see spawning)
    thread_home: dict[str, str] | None = None

    def group(self, relative: str, hierarchies: tuple[str, ...] | None = None) -> JobGroup:
        layout = LAYOUTS[self.mode]
        return JobGroup(self.mode, relative,
                        {h: str(_directory(self.mode, h, relative)) for h in hierarchies or layout.controllers})

    def leftovers(self) -> list[JobGroup]:
        """The job groups below this worker's subtree, whole (every hierarchy a job may join).

        At a worker's start they can only be a previous process of the same instance's (an
        instance has one live process), so their jobs are over for this host whatever Redis
        says: among them a job whose worker died between starting its script and noting the
        script's process group, which no record leads the reaper to.
        """
        if self.mode is Mode.NONE:
            return []
        names: set[str] = set()
        for hierarchy in LAYOUTS[self.mode].controllers:
            try:
                names.update(entry.name for entry in os.scandir(_directory(self.mode, hierarchy, self.parent))
                             if entry.is_dir() and entry.name.startswith("job-") and entry.name[4:].isdigit())
            except FileNotFoundError:
                continue
        return [self.group(f"{self.parent}/{name}") for name in sorted(names)]

    def create(self, name: str, limits: Limits) -> JobGroup:
        """Make the group ``<parent>/<name>`` with ``limits`` set; raises OSError when the kernel refuses."""
        needed = None
        if self.mode is Mode.V1:
            needed = V1_ALWAYS + (("cpu",) if limits.cpu_ids is None else ())
        group = JobGroup(self.mode, f"{self.parent}/{name}",
                         {h: f"{self._base(h)}/{name}" for h in needed or LAYOUTS[self.mode].controllers})
        try:
            for directory in group.paths.values():
                os.mkdir(directory)
            mems = cpus = ""
            if self.mode is Mode.V1 and not self.cpuset_inherited:
                parent = _directory(Mode.V1, "cpuset", self.parent)
                mems = _read(parent / "cpuset.mems").strip()
                cpus = _read(parent / "cpuset.cpus").strip()
            for hierarchy, name_, value in limit_writes(self.mode, limits, mems, self.has_swap_limit,
                                                        self.cpuset_inherited):
                _write(f"{group.paths[hierarchy]}/{name_}", cpus if value == "PARENT" else value)
        except BaseException:
            group.destroy()
            raise
        return group

    @contextmanager
    def spawning(self, group: JobGroup) -> Iterator[Callable[[], None] | None]:
        """Around the fork of a job's first process: yields the ``preexec_fn`` that puts the child in
        ``group``, or None when the child is born there.

        v1 (``thread_home``): the calling thread joins the group for the length of the fork and
        goes back to its home afterwards (:func:`thread_home`); a child is born in its parent
        thread's groups, so it is contained from its first instruction, as with its CPU binding.
        No ``preexec_fn`` lets Python start the child with vfork, without copying the worker's
        memory map (a fork of a ~50 MB worker costs milliseconds), and a thread moving itself
        avoids the global lock (:func:`_join_thread`). The visit lasts until the child has
        exec'd; what the worker allocates meanwhile may be charged to the job's memory group (a
        few pages). Otherwise the child joins between fork and exec (:meth:`JobGroup.enter`).
        """
        home = self.thread_home
        if home is None:
            yield group.enter
            return
        try:
            _join_thread(group.tasks_files())
            yield None
        finally:  # also after a failed join: home again in every hierarchy
            _join_thread([f"{home[hierarchy]}/tasks" for hierarchy in group.paths])

    def _base(self, hierarchy: str) -> str:
        """The worker's own directory in ``hierarchy`` (``parent`` is never empty here)."""
        return f"{ROOT}/{hierarchy}/{self.parent}" if self.mode is Mode.V1 else f"{ROOT}/{self.parent}"


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
        if mode is Mode.V1:
            containment.cpuset_inherited = _read(
                _directory(mode, "cpuset", containment.parent) / "cgroup.clone_children").strip() == "1"
        probe = containment.create(f"probe-{os.getpid()}", Limits(0, 1, None, 16))
        try:
            if mode is Mode.V1:
                _try_thread_join(containment, probe)
        finally:
            probe.destroy()
    except OSError as error:
        return Containment(Mode.NONE, reason=f"cannot manage cgroups below {candidate}: {error}")
    return containment


def thread_home(own: dict[str, str], parent: str, writable: Callable[[str], bool]) -> dict[str, str] | None:
    """Where a worker's spawning thread goes back to after a job's fork (:meth:`Containment.spawning`),
    per v1 hierarchy a job may join: where it is now (``own``, from /proc/thread-self/cgroup) when
    it may move itself there (a root worker, systemd's delegated group), else the worker's own
    subtree ``parent`` when it may (prepared for it: a supervisord worker may not go back into
    supervisord's group, so from its first job its spawning thread lives in its subtree); None
    when neither (the job's child then joins from inside). ``writable`` tells a ``tasks`` file the
    worker may write."""
    for relative in (None, parent):
        homes = {h: str(_directory(Mode.V1, h, own.get(h, "/") if relative is None else relative))
                 for h in (*V1_ALWAYS, "cpu")}
        if all(writable(f"{home}/tasks") for home in homes.values()):
            return homes
    return None


def _try_thread_join(containment: Containment, probe: JobGroup) -> None:
    """Set ``containment.thread_home`` where this thread can visit ``probe`` and go back home."""
    home = thread_home(own_groups(Path("/proc/thread-self/cgroup").read_text()), containment.parent,
                       lambda path: os.access(path, os.W_OK))
    if home is None:
        return
    containment.thread_home = home
    try:
        with containment.spawning(probe):
            pass
    except OSError:
        containment.thread_home = None


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
    worker can create, limit and remove its jobs' groups there, and move its own threads there
    (see :meth:`Containment.spawning`). v1 cpusets are given their parent's CPUs and memory nodes
    at each level (they start empty), and the worker's has ``cgroup.clone_children`` set, so its
    jobs' groups start with them too (two reads and writes less per job). Returns what it created.
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
                    if relative != parent:  # jobs' groups start with the worker's CPUs and memory nodes
                        _write(directory / "cgroup.clone_children", "1")
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
