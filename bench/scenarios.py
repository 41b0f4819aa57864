"""The measurements taken on a running system, identical for conductor and every baseline."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import procstat
from .infra import BenchError, clean_env, wait_until
from .system import System


@dataclass(frozen=True)
class Scripts:
    """The job scripts, one file each, shared by every system."""

    trivial: Path
    sleeper: Path
    stamper: Path
    stamp: Path

    @classmethod
    def write(cls, directory: Path, sleep: float) -> Scripts:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = directory / "stamp"
        files = {
            "true.sh": "#!/bin/bash\ntrue\n",
            "sleep.sh": f"#!/bin/bash\nsleep {sleep:g}\n",
            # $EPOCHREALTIME is a bash variable: reading the clock forks nothing.
            "stamp.sh": f'#!/bin/bash\necho "$EPOCHREALTIME" > {stamp}\n',
        }
        for name, text in files.items():
            (directory / name).write_text(text)
        return cls(directory / "true.sh", directory / "sleep.sh", directory / "stamp.sh", stamp)


SETTLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class Throughput:
    jobs: int
    seconds: float
    failures: int
    cpu_own: float  # CPU seconds of the system's long-lived processes
    cpu_children: float  # ... of the children they reaped: bash jobs, and work-horses where RQ forks them
    cpu_redis: float
    cpu_client: float  # the submitting process (the benchmark itself) while it submitted

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def per_job_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.jobs

    @property
    def cpu_total(self) -> float:
        """The whole cost of a job: the system's processes (work-horses and jobs included) plus Redis."""
        return self.cpu_own + self.cpu_children + self.cpu_redis


@dataclass(frozen=True)
class Makespan:
    jobs: int
    workers: int
    sleep: float
    seconds: float
    failures: int

    @property
    def ideal(self) -> float:
        return math.ceil(self.jobs / self.workers) * self.sleep

    @property
    def ratio(self) -> float:
        return self.seconds / self.ideal


def settle(system: System, ids: list[str], before: int, what: str) -> list[tuple[bool, float]]:
    """Wait for ``ids`` to reach final states; their (success, end time), every end time known."""
    wait_until(lambda: system.settled() - before >= len(ids), SETTLE_TIMEOUT, what, interval=0.02)
    found = system.outcomes(ids)
    if any(end is None for _, end in found):
        raise BenchError(f"{system.label}: a settled job has no end time ({what})")
    return [(ok, float(end or 0)) for ok, end in found]


def run_batch(system: System, script: Path, count: int) -> tuple[float, float, list[tuple[bool, float]]]:
    """Submit ``count`` jobs back to back; returns (start epoch, client CPU seconds, outcomes)."""
    before = system.settled()
    client = time.process_time()
    start = time.time()
    ids = [system.submit(script) for _ in range(count)]
    client = time.process_time() - client
    return start, client, settle(system, ids, before, f"{count} jobs on {system.label}")


def warm_up(system: System, script: Path, count: int) -> None:
    """Run a few jobs first, so first-job costs (imports, connections) are not timed."""
    run_batch(system, script, count)


def throughput(system: System, script: Path, count: int) -> Throughput:
    """``count`` trivial jobs, first submit to last final state, with the CPU they cost everyone."""
    pids = system.processes()
    cpu = procstat.total_cpu(pids)
    redis_cpu = procstat.cpu_times(system.redis.pid)
    start, client, found = run_batch(system, script, count)
    cpu = procstat.total_cpu(pids) - cpu
    redis_cpu = procstat.cpu_times(system.redis.pid) - redis_cpu
    end = max(end for _, end in found)
    return Throughput(count, end - start, sum(not ok for ok, _ in found), cpu.own, cpu.children,
                      redis_cpu.own, client)


def makespan(system: System, script: Path, count: int, sleep: float) -> Makespan:
    """``count`` jobs of ``sleep`` seconds, first submit to last final state."""
    start, _, found = run_batch(system, script, count)
    return Makespan(count, system.workers, sleep, max(end for _, end in found) - start,
                    sum(not ok for ok, _ in found))


def read_stamp(stamp: Path) -> float | None:
    """The epoch the script wrote (bash's $EPOCHREALTIME, no fork), once completely written."""
    try:
        text = stamp.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text.endswith("\n") else None


def latency(system: System, submit: Callable[[], object], stamp: Path, samples: int, period: float) -> list[float]:
    """Seconds from submit to the script's first instruction, one job at a time onto idle workers."""
    found = []
    for _ in range(samples):
        stamp.unlink(missing_ok=True)
        before = system.settled()
        start = time.time()
        submit()
        began = wait_until(lambda: read_stamp(stamp), 60, f"a latency job on {system.label} to start")
        wait_until(partial(settled_beyond, system, before), 60, f"a latency job on {system.label} to end")
        found.append(began - start)
        time.sleep(max(start + period - time.time(), 0))
    return found


def settled_beyond(system: System, count: int) -> bool:
    return system.settled() > count


def cli_submitter(command: list[str]) -> Callable[[], object]:
    """Submitting by running the system's command line, as a user at a shell would."""
    env = clean_env()
    return lambda: subprocess.run(command, check=True, capture_output=True, env=env, timeout=60)


def pss_per_worker(system: System) -> float:
    """PSS bytes of the system's processes (a pool's or parent's included) per worker, while idle."""
    return sum(procstat.pss_bytes(pid) for pid in system.processes()) / system.workers


def newcomers(system: System, known: dict[int, float]) -> dict[int, float]:
    """Registered RQ workers that were not there before: pid -> registration time."""
    return {pid: birth for pid, birth in system.rq_workers().items() if pid not in known}


@dataclass(frozen=True)
class Restart:
    registered: float  # seconds from SIGKILL to the replacement's registration in RQ
    spawned: float  # ... to the replacement process's start: the supervisor's (or pool's) reaction


def restart(system: System, kills: int, pause: float) -> list[Restart]:
    """SIGKILL a registered worker, time its replacement's start and registration (RQ ``birth``)."""
    found = []
    for _ in range(kills):
        before = system.rq_workers()
        victim = min(before)
        start, boot_clock = time.time(), procstat.uptime()
        os.kill(victim, signal.SIGKILL)
        fresh = wait_until(partial(newcomers, system, before), 60, f"a replacement worker on {system.label}")
        pid, birth = min(fresh.items(), key=lambda item: item[1])
        found.append(Restart(birth - start, max(procstat.started(pid) - boot_clock, 0.0)))
        wait_until(lambda: len(system.rq_workers()) >= system.workers and system.supervisor.all_running(), 60,
                   f"{system.label} back to full strength")
        time.sleep(pause)
    return found


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation; p99 of few samples is close to the maximum."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
