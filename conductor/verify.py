"""``conductor verify``: is this node what app.properties says? Every problem named, or none.

Units or programs active, exactly N worker processes (one per index 1..N, none above), none of
them root, each registered in Redis by that very process and heartbeating, Redis reachable. The
one definition of "the node is up" that install.sh, the Ansible role, ``make run`` and the
testinfra suite use, instead of each waiting and parsing in its own way.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import keys
from .config import Settings
from .store import UNREACHABLE, connect, redacted


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    workers: dict[int, int] = field(default_factory=dict)  # index -> pid of its one process

    def as_dict(self) -> dict[str, object]:
        return {"ok": not self.problems, "problems": self.problems,
                "workers": {str(i): pid for i, pid in sorted(self.workers.items())}}


def worker_processes(settings: Settings, config: Path) -> dict[int, list[int]]:
    """index -> PIDs of the processes running ``INSTALL_PREFIX/bin/conductor worker --index i --config <config>``."""
    program = str(settings.install_prefix / "bin" / "conductor")
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if program not in argv or "worker" not in argv or "--index" not in argv or "--config" not in argv:
            continue
        try:
            index = int(argv[argv.index("--index") + 1])
            named = Path(argv[argv.index("--config") + 1])
        except (IndexError, ValueError):
            continue
        if os.path.realpath(named) == os.path.realpath(config):
            found.setdefault(index, []).append(int(entry))
    return found


def _uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def services(settings: Settings, mode: str, expect: int, supervisord_conf: Path | None) -> list[str]:
    """Problems with the units or programs that should be active."""
    problems = []
    if mode == "systemd":
        units = [f"conductor-worker@{i}.service" for i in range(1, expect + 1)] + ["conductor-workers.target"]
        units += ["conductor-api.service"] if settings.api_enabled else []
        states = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True).stdout.split()
        problems += [f"{unit} is {state}, not active" for unit, state in zip(units, states) if state != "active"]
    else:
        ctl = ([str(Path(sys.executable).parent / "supervisorctl"), "-c", str(supervisord_conf)]
               if supervisord_conf else ["supervisorctl"])
        result = subprocess.run([*ctl, "status"], capture_output=True, text=True)
        if result.returncode not in (0, 3):
            return [f"supervisorctl status exited {result.returncode}: {(result.stdout + result.stderr).strip()}"]
        states = {p[0]: p[1] for p in (line.split() for line in result.stdout.splitlines()) if len(p) >= 2}
        wanted = [f"conductor-worker-{i}" for i in range(1, expect + 1)] + (["conductor-api"] if settings.api_enabled else [])
        problems += [f"program {p} is {states.get(p, 'missing')}, not RUNNING" for p in wanted if states.get(p) != "RUNNING"]
    return problems


def inspect(settings: Settings, mode: str, expect: int | None = None, supervisord_conf: Path | None = None) -> Findings:
    """One look at the node."""
    expect = settings.worker_concurrency if expect is None else expect
    config = settings.config_path or Path("/etc/conductor/app.properties")
    findings = Findings()
    problems = findings.problems
    problems += services(settings, mode, expect, supervisord_conf)

    processes = worker_processes(settings, config)
    try:
        service_uid = pwd.getpwnam(settings.service_user).pw_uid
    except KeyError:
        service_uid = None
        problems.append(f"SERVICE_USER {settings.service_user} does not exist")
    for index in sorted(set(processes) | set(range(1, expect + 1))):
        pids = processes.get(index, [])
        if index > expect:
            problems.append(f"worker {index} runs (pid {', '.join(map(str, pids))}) but only {expect} are expected")
        elif not pids:
            problems.append(f"worker {index} has no process")
        elif len(pids) > 1:
            problems.append(f"worker {index} has {len(pids)} processes: {', '.join(map(str, pids))}")
        else:
            findings.workers[index] = pids[0]
        for pid in pids:
            uid = _uid(pid)
            if uid == 0 and settings.service_user != "root":
                problems.append(f"worker {index} (pid {pid}) runs as root")
            elif uid is not None and service_uid is not None and uid != service_uid:
                problems.append(f"worker {index} (pid {pid}) runs as uid {uid}, not SERVICE_USER {settings.service_user}")

    try:
        connection = connect(settings.redis_url)
        connection.ping()
        with connection.pipeline(transaction=False) as pipe:
            for index in range(1, expect + 1):
                pipe.hgetall(keys.worker(settings.worker_name(index)))
            records = pipe.execute()
        now = connection.time()
    except UNREACHABLE as error:
        problems.append(f"Redis at {redacted(settings.redis_url)} does not answer: {error}")
        return findings
    clock = now[0] + now[1] / 1e6
    for index, record in enumerate(records, start=1):
        name = keys.worker(settings.worker_name(index))
        if not record:
            problems.append(f"{name} is not registered in Redis")
            continue
        pid = findings.workers.get(index)
        if pid is not None and record.get("pid") != str(pid):
            problems.append(f"{name} is registered by pid {record.get('pid')}, not by the running process {pid}")
        age = clock - float(record.get("last_heartbeat") or 0)
        if age > settings.heartbeat_ttl:
            problems.append(f"{name} has not heartbeated for {age:.0f} s (HEARTBEAT_TTL {settings.heartbeat_ttl:g})")
    return findings


def wait(settings: Settings, mode: str, expect: int | None, timeout: float,
         supervisord_conf: Path | None = None) -> Findings:
    """Look again until the node is right or ``timeout`` seconds have passed; the last look."""
    deadline = time.monotonic() + timeout
    while True:
        findings = inspect(settings, mode, expect, supervisord_conf)
        if not findings.problems or time.monotonic() >= deadline:
            return findings
        time.sleep(0.5)
