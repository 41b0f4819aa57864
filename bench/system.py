"""What every system under test offers the scenarios: start N workers, submit, count, inspect.

Each system gets its own redis-server and supervisord for the time it is measured, so nothing of
one run (keys, stale worker records, load) leaks into the next.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from . import procstat
from .infra import RedisServer, Supervisord, wait_until

RQ_WORKERS = "rq:workers"


def rq_time(text: str) -> float:
    """RQ's timestamps (``2024-01-02T03:04:05.123456Z``, UTC) as epoch seconds."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return moment.timestamp()


class System(ABC):
    """One way of running N workers on a node, started fresh on a private Redis and supervisord."""

    key: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        self.workers = workers
        root.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(root / "redis")
        self.supervisor = Supervisord(root / "supervisor")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Redis, then the system's programs under supervisord, then wait for N registered workers."""
        self.redis.start()
        self.connection = self.redis.client()
        self.raw = self.redis.client(decode=False)
        self.configure()
        self.supervisor.start()
        wait_until(lambda: len(self.rq_workers()) >= self.workers and self.supervisor.all_running(), 90,
                   f"{self.workers} {self.label} workers to register in RQ", interval=0.05)

    def stop(self) -> None:
        self.supervisor.stop()
        self.redis.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @abstractmethod
    def configure(self) -> None:
        """Write the supervisord program sections (and any config) into the supervisor's conf.d."""

    @abstractmethod
    def submit(self, script: Path) -> str:
        """Submit one job running ``script`` through the system's own Python path; returns its id."""

    @abstractmethod
    def cli_command(self, script: Path) -> list[str]:
        """The shell command a user would type to submit ``script``."""

    @abstractmethod
    def settled(self) -> int:
        """How many jobs have reached a final state so far."""

    @abstractmethod
    def outcomes(self, ids: list[str]) -> list[tuple[bool, float | None]]:
        """For each job: did it succeed, and when (epoch seconds) did it reach its final state."""

    def rq_workers(self) -> dict[int, float]:
        """Live registered RQ workers: pid -> registration time (RQ's ``birth``), for every system alike."""
        keys = sorted(self.connection.smembers(RQ_WORKERS))
        with self.connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "pid", "birth", "death")
            rows = pipe.execute()
        return {int(pid): rq_time(birth) for pid, birth, death in rows
                if pid and birth and not death and procstat.alive(int(pid))}

    def processes(self) -> list[int]:
        """The system's long-lived processes: its programs and their children (a pool's workers)."""
        programs = [pid for name, pid in self.supervisor.program_pids().items() if not self.auxiliary(name)]
        return programs + [child for pid in programs for child in procstat.children(pid)]

    def auxiliary(self, program: str) -> bool:
        """Programs that are not part of the worker side (conductor's HTTP API)."""
        return False
