"""Baseline: the seed's multiprocessing parent (:mod:`bench.baselines.seed_parent`) as one program."""

from __future__ import annotations

import sys

from .rq_system import RqSystem

NODE = "bench-node"
TOTAL_CPUS = 32  # the seed's example node


class SeedParent(RqSystem):
    key = "seed-parent"
    label = "seed parent (multiprocessing)"

    def configure(self) -> None:
        command = [sys.executable, "-m", "bench.baselines.seed_parent", "--redis-url", self.redis.url,
                   "--node-name", NODE, "--concurrency", str(self.workers), "--total-cpus", str(TOTAL_CPUS),
                   "--queue", self.queue_name, "--log-level", "WARNING", "--restart"]
        self.write_programs(self.program("seed-parent", command))
