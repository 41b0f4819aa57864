"""The three ways a user would run N RQ workers on a node instead of conductor.

Each runs the same job work (:func:`bench.baselines.work.run_script`: bash on the benchmark's
script file), is fed with ``Queue.enqueue`` on the same kind of private Redis, and runs under
supervisord as it would in production.
"""

from __future__ import annotations

from .rq_pool import RqWorkerPool
from .rq_workers import RqWorkers
from .seed import SeedParent

BASELINES = (SeedParent, RqWorkerPool, RqWorkers)
