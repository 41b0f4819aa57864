"""Noticing that Redis changed under a running process: a failover or a restart.

After Sentinel promotes a replica, or Redis restarts from its AOF/RDB, the data may be a few
writes older than what the workers saw, and every worker record may have expired. A worker
that noticed the change (Redis's ``run_id`` differs) neither reaps nor places for one
HEARTBEAT_TTL: that is the time every live worker needs to re-register and re-assert its job
(:mod:`conductor.reconcile`), and reaping sooner would settle jobs that are in fact running.
"""

from __future__ import annotations

import time

from loguru import logger
from redis import Redis


class Epoch:
    """The Redis server (``run_id``) a process last talked to, and when that changed."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.changed_at = float("-inf")

    def observe(self, connection: Redis) -> bool:
        """Read the server's run_id; True when it differs from the one seen before."""
        run_id = str(connection.info("server")["run_id"])
        changed = self.run_id is not None and run_id != self.run_id
        if changed:
            self.changed_at = time.monotonic()
            logger.warning("Redis changed (failover or restart: run_id {} -> {}); re-asserting this worker",
                           self.run_id[:8], run_id[:8])  # type: ignore[index]
        self.run_id = run_id
        return changed

    def settling(self, seconds: float) -> bool:
        """Whether the last change is less than ``seconds`` ago: not yet time to reap anyone."""
        return time.monotonic() - self.changed_at < seconds


EPOCH = Epoch()  # one per process
