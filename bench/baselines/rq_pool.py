"""Baseline: ``rq worker-pool -n N``, RQ's own way to run N workers from one command."""

from __future__ import annotations

from ..infra import BIN, REPO
from .rq_system import RqSystem


class RqWorkerPool(RqSystem):
    key = "rq-worker-pool"
    label = "rq worker-pool"

    def configure(self) -> None:
        command = [str(BIN / "rq"), "worker-pool", "--url", self.redis.url, "--path", str(REPO),
                   "--logging-level", "WARNING", "--num-workers", str(self.workers), self.queue_name]
        self.write_programs(self.program("rq-worker-pool", command))
