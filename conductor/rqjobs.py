"""What a worker accepts from its RQ queue: conductor's own job function, nothing else.

Anyone who can write to Redis can put an RQ job on a node's queue. RQ would import and call
whatever function the job names (``os.system`` included), and with its default pickle serializer
it would even run code while merely reading the job. So conductor's queues use RQ's JSON
serializer (reading a job can run nothing) and a worker runs a job only when it names
:func:`perform` with one job id; anything else is refused, logged at WARNING and counted per node
(``conductor_refused_rq_jobs_total``).
"""

from __future__ import annotations

from rq.exceptions import DeserializationError
from rq.job import Job
from rq.serializers import JSONSerializer

SERIALIZER = JSONSerializer


def perform(job_id: int) -> None:
    """What every RQ job conductor queues names: run conductor job ``job_id``.

    Placement queues jobs naming this function (its reference, never a string); a conductor
    worker recognises it and runs the job itself (``ConductorRQWorker.execute_job``), with the
    worker's own state, so RQ never calls it.
    """
    raise RuntimeError(f"conductor job {job_id} runs only inside `conductor worker`")


PERFORM = f"{perform.__module__}.{perform.__qualname__}"
# The name an older release queued its jobs under: still accepted during a rolling upgrade.
ACCEPTED = frozenset({PERFORM, "conductor.worker.perform"})


def refusal(job: Job) -> str | None:
    """Why ``job`` must not run, or None when it is a call of :data:`PERFORM` with one job id."""
    try:
        func, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "its data is not conductor's JSON (a pickled job, or garbage)"
    if func not in ACCEPTED:
        return f"it names {str(func)[:200]!r}, not {PERFORM}"
    if instance is not None or kwargs or len(args) != 1 or type(args[0]) is not int:
        return f"its arguments are not one job id (args {str(args)[:200]}, kwargs {str(kwargs)[:200]})"
    hooks = [name for name in (getattr(job, f"_{kind}_callback_name", None) for kind in ("success", "failure", "stopped"))
             if name] + [hook.url for hook in getattr(job, "webhooks", None) or ()]
    if hooks:  # RQ would import and call these after the job: code or requests of the enqueuer's choice
        return f"it carries callbacks or webhooks ({', '.join(map(str, hooks))[:200]})"
    return None
