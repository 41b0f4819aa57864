"""Baseline: N plain ``rq worker`` processes under supervisord ``numprocs`` (RQ's documented recipe)."""

from __future__ import annotations

from ..infra import BIN, REPO
from .rq_system import RqSystem


class RqWorkers(RqSystem):
    key = "rq-workers"
    label = "N x rq worker"

    def configure(self) -> None:
        command = [str(BIN / "rq"), "worker", "--url", self.redis.url, "--path", str(REPO),
                   "--logging_level", "WARNING", self.queue_name]
        self.write_programs(self.program("rq-worker", command, numprocs=self.workers))
