"""Jobs: the submission model (shared by the CLI and the HTTP API), states, and the job store.

A submission is validated completely before anything is written, and stored with one atomic
script, so a rejected request leaves no trace and an accepted one is never half-stored.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from redis import Redis
from redis.exceptions import NoScriptError

from . import keys, scripts, workflow
from .store import REPLICA_ACK_TIMEOUT_MS, UNREACHABLE, NotReplicated, pinned, sentinel_managed
from .units import MAX_BYTES, MAX_TIME_LIMIT_MINUTES, MEMORY_PATTERN, parse_memory, parse_time_limit

MAX_SCRIPT_BYTES = 1 << 20
PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")  # no C0/C1 controls, no line breaks
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NO_NUL = r"^[^\x00]*$"
BLANK = r"\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # str.isspace()
SCRIPT_PATTERN = rf"^[^\x00]*[^{BLANK}\x00][^\x00]*$"  # what JobSubmission._script accepts: not blank, no NUL

# What the validators accept, in JSON Schema words. pydantic would describe the Python types
# (memory_per_node: int), but clients send the seed's "8G" and sbatch's "1:30:00"; a schema
# without these would make generated clients and schemathesis reject or mis-send them. Where a
# validator checks with a regex, the schema quotes that very regex, so the two cannot drift.
MemoryInput = Annotated[int, WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 0, "maximum": MAX_BYTES},
    {"type": "string", "pattern": MEMORY_PATTERN},
]})]
TimeLimitInput = Annotated[float | None, WithJsonSchema({"anyOf": [
    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIME_LIMIT_MINUTES},
    {"type": "string", "description": "minutes, or [D-]HH:MM:SS, MM:SS, D-HH as sbatch --time"},
    {"type": "null"},
]})]


class JobState(StrEnum):
    """Slurm's names for the states a job passes through."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"

    @property
    def final(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class JobRejected(ValueError):
    """A submission that cannot be accepted; ``field`` names the part of the request at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class JobSpec(BaseModel):
    """The seed's ``job`` object: what to run it with, as Slurm's sbatch options name it."""

    # Validators are built at the first validation (submit, the API), not at import: workers and
    # the read-only commands import this module for its functions and never validate a submission.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    account: str = Field(default="default", min_length=1, max_length=128,
                         json_schema_extra={"pattern": PRINTABLE.pattern})
    name: str = Field(default="job", min_length=1, max_length=256, json_schema_extra={"pattern": PRINTABLE.pattern})
    partition: str = Field(default="default", min_length=1, max_length=128,
                           json_schema_extra={"pattern": PRINTABLE.pattern})
    ntasks_per_node: int = Field(default=1, ge=1, le=4096)
    cpus_per_task: int = Field(default=1, ge=1, le=4096)
    memory_per_node: MemoryInput = Field(default=0, description="bytes, or 512M, 8G, ... (powers of 1024, as Slurm)")
    time_limit: TimeLimitInput = Field(
        default=None, description="minutes (a number or a string), or [D-]HH:MM:SS; at most 366 days"
    )  # stored as seconds
    environment: dict[str, str] = Field(default_factory=dict, max_length=256, json_schema_extra={
        "propertyNames": {"pattern": ENV_NAME.pattern}, "additionalProperties": {"type": "string", "pattern": NO_NUL},
    })
    requeue: bool = Field(default=False, description="run again once if the worker dies (sbatch --requeue)")
    array: str | None = Field(
        default=None, max_length=4096,
        description="sbatch --array: a job array of indices (0-15, 1,3,5, 0-15:4, combined with ',': "
                    "0-9,20-40:5) and an "
                    "optional %N limit on tasks running at once (0-999%4); indices below MAX_ARRAY_SIZE (default 1001). "
                    "The answer's job_id is the array's id (its first task's); each task is a job with "
                    "array_job_id and array_task_id, named <array id>_<index> in /jobs/{job_id}",
    )
    dependency: str | None = Field(
        default=None, max_length=4096,
        description="sbatch --dependency: after|afterany|afterok|afternotok:<id>[:<id>...] or singleton "
                    "(after:<id>+<minutes>: that long after <id> started), "
                    "joined by ',' (all) or '?' (any), e.g. afterok:123, afterany:123:124, afterok:5?afternotok:6; <id> is a job, an array (every task of it) or "
                    "<array id>_<index> (one task). Unmet: PENDING with reason Dependency; never to be met: "
                    "reason DependencyNeverSatisfied",
    )

    @field_validator("account", "name", "partition")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not PRINTABLE.fullmatch(value):
            raise ValueError("must not contain control characters such as newlines")
        return value

    @field_validator("memory_per_node", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time_limit(cls, value: Any) -> float | None:
        return None if value is None else parse_time_limit(value)

    @field_validator("array")
    @classmethod
    def _array(cls, value: str | None) -> str | None:
        return None if value is None else workflow.check_array(value)

    @field_validator("dependency")
    @classmethod
    def _dependency(cls, value: str | None) -> str | None:
        return None if value is None else str(workflow.parse_dependency(value))

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if "\x00" in text:
                raise ValueError(f"value of {name} contains a NUL byte")
        return value

    @property
    def cpus(self) -> int:
        return self.ntasks_per_node * self.cpus_per_task


class JobSubmission(BaseModel):
    """The seed's request body: ``{"job": {...}, "script": "#!/bin/bash ..."}``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    job: JobSpec
    script: str = Field(max_length=MAX_SCRIPT_BYTES, json_schema_extra={"pattern": SCRIPT_PATTERN},
                        description="the batch script, run with bash; not blank, at most 1 MiB")

    @field_validator("script")
    @classmethod
    def _script(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the script is empty")
        if "\x00" in value:
            raise ValueError("the script contains a NUL byte")
        if len(value.encode()) > MAX_SCRIPT_BYTES:
            raise ValueError(f"the script is larger than {MAX_SCRIPT_BYTES} bytes")
        return value


def largest_node(connection: Redis) -> tuple[int, int]:
    """The most CPUs and the most memory any registered node offers.

    A node whose workers have all stopped (DOWN) still counts, as a DOWN node does in Slurm: its
    restart, reboot or upgrade must not turn submissions of what only it can run into errors. Such a
    job waits PENDING (reason ReqNodeNotAvail) and holds back no other job: placement looks only at
    nodes with a free worker slot, and at the oldest job of each class that fits one.

    One read of what nodes last declared (:data:`keys.LARGEST_NODE`); every node is read only when
    that is missing (books written by an older release).
    """
    cpus, memory = connection.hmget(keys.LARGEST_NODE, "cpus", "memory")
    if cpus is not None and memory is not None:
        return int(cpus), int(memory)
    names = sorted(connection.smembers(keys.NODES))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.node(name), "total_cpus", "total_memory")
        totals = pipe.execute()
    cpus = max((int(c or 0) for c, _ in totals), default=0)
    memory = max((int(m or 0) for _, m in totals), default=0)
    return cpus, memory


def submit(connection: Redis, submission: JobSubmission, max_array_size: int = 1001,
           kill_invalid_depend: bool = False, job_id: int | None = None) -> int:
    """Store ``submission`` as a PENDING job and return its id, or raise :class:`JobRejected`.

    ``kill_invalid_depend`` (the setting KILL_INVALID_DEPEND) is kept with the job: should its
    dependency become impossible, the Lua transition that finds out cancels it instead of holding it.
    With sentinels, ``job_id`` may be an id from :func:`reserve_id` (None: one is reserved here),
    and :class:`NotReplicated` is raised when no replica confirms the job (see :func:`_store_replicated`).
    """
    spec = submission.job
    max_cpus, max_memory = largest_node(connection)
    if max_cpus == 0:
        raise JobRejected("job", "no compute node has registered yet: start a worker first")
    if spec.cpus > max_cpus:
        raise JobRejected(
            "job.cpus_per_task",
            f"the job needs {spec.cpus} CPUs (ntasks_per_node x cpus_per_task) "
            f"but the largest node offers {max_cpus}",
        )
    if spec.memory_per_node > max_memory:
        raise JobRejected(
            "job.memory_per_node",
            f"the job needs {spec.memory_per_node} bytes but the largest node offers {max_memory}",
        )
    if spec.dependency:
        _check_dependency(connection, workflow.parse_dependency(spec.dependency))
    try:
        array = workflow.parse_array(spec.array, max_array_size) if spec.array else None
    except workflow.ArrayError as error:
        raise JobRejected("job.array", str(error)) from None
    fields = {
        "name": spec.name,
        "account": spec.account,
        "partition": spec.partition,
        "ntasks_per_node": spec.ntasks_per_node,
        "cpus_per_task": spec.cpus_per_task,
        "cpus": spec.cpus,
        "memory": spec.memory_per_node,
        "time_limit": "" if spec.time_limit is None else spec.time_limit,
        "environment": json.dumps(spec.environment, sort_keys=True),
        "script": submission.script,
        "requeue": int(spec.requeue),
        "requeued": 0,
        "node": "",
        "worker": "",
        "cpu_ids": "",
        "exit_code": "",
        "reason": "",
        "started_at": "",
        "ended_at": "",
        "dependency": spec.dependency or "",
        "dependency_state": "",
        "kill_invalid_depend": int(kill_invalid_depend),
        "array": str(array) if array else "",
        "array_job_id": "",
        "array_task_id": "",
        "array_task_count": array.count if array else "",
        "array_task_min": array.runs[0][0] if array else "",
        "array_task_max": array.runs[-1][1] if array else "",
        "array_task_step": array.step if array else "",
    }
    flat = [item for pair in fields.items() for item in pair]
    if not sentinel_managed(connection):
        return int(scripts.run(connection, "submit", *flat))  # type: ignore[arg-type]
    return _store_replicated(connection, flat, job_id)


def reserve_id(connection: Redis) -> int:
    """A new job id that a replica holds (the counter's INCR, confirmed by ``WAIT 1``), or raise
    :class:`NotReplicated`, naming no id: nothing was stored, the client may simply submit again."""
    counted, acked = pinned(connection, ("INCR", keys.NEXT_JOB_ID), ("WAIT", 1, REPLICA_ACK_TIMEOUT_MS))
    for reply in (counted, acked):
        if isinstance(reply, Exception):
            raise reply
    if int(acked) < 1:  # type: ignore[call-overload]
        raise NotReplicated(f"no replica confirmed the write within {REPLICA_ACK_TIMEOUT_MS} ms: nothing was "
                            "submitted (no job was created, no job id given); submit again once a replica "
                            "is connected and keeping up")
    return int(counted)  # type: ignore[call-overload]


def _store_replicated(connection: Redis, flat: list[Any], job_id: int | None) -> int:
    """Store the job under an id a replica already holds, then wait for a replica to hold the job.

    Why the id comes first: a client told "job N reached the primary but no replica confirmed it"
    looks N up later. Were the id counted in the same write as the job, a replica promoted after
    the primary's death would lack both and hand N to the next submission, and `conductor show N`
    would show someone else's job (seen in tests/integration/test_failover.py). With the counter
    confirmed first, every later primary counts past N, so N stays this job's or nobody's. When
    even the reservation is not confirmed nothing has been stored, and no id is named. The cost is
    one more ``WAIT 1`` per submission, and only with sentinels.
    """
    script = scripts.script(connection, "submit")
    for _ in range(3):
        reserved = reserve_id(connection) if job_id is None else job_id
        commands = (("EVALSHA", script.sha, 0, "id", reserved, *flat), ("WAIT", 1, REPLICA_ACK_TIMEOUT_MS))
        try:
            stored, acked = pinned(connection, *commands)
            if isinstance(stored, NoScriptError):  # a new primary: send the script, then again
                connection.script_load(script.script)
                stored, acked = pinned(connection, *commands)
        except UNREACHABLE as error:
            raise NotReplicated(f"job {reserved}: Redis was lost before a replica confirmed the job ({error}); "
                                f"`conductor show {reserved}` tells whether it was stored (the id is never "
                                "given to another job)") from None
        for reply in (stored, acked):
            if isinstance(reply, Exception):
                raise reply
        if stored == 0:  # a primary that never saw the reservation gave the id out itself
            if job_id is not None:
                raise NotReplicated(f"job id {job_id} is already taken")
            continue
        if int(acked) < 1:  # type: ignore[call-overload]
            raise NotReplicated(f"job {reserved} reached the primary but no replica confirmed the write within "
                                f"{REPLICA_ACK_TIMEOUT_MS} ms: it is lost if the primary fails now (`conductor "
                                f"show {reserved}` tells whether it survived; the id is never given to another job)")
        return reserved
    raise NotReplicated("three job ids a replica confirmed were already taken on the current primary: "
                        "a failover to a replica that lacked them; submit again")


def _check_dependency(connection: Redis, dependency: workflow.Dependency) -> None:
    """Refuse a dependency on a job that does not exist (sbatch does too): it could never be met.

    An array exists while its own keys do, even after its first task's record (whose id it
    shares) has expired; one task of it exists while its record does (or it is still to come).
    """
    for condition in dependency.conditions:
        for token in condition.job_ids:
            job_id, delay = workflow.split_delay(token)
            if delay and "_" not in job_id and connection.exists(keys.array(job_id)):
                raise JobRejected("job.dependency", f"{token}: a delay is not supported on a whole array "
                                  f"(name one task, {job_id}_<index>+{delay})")
            if "_" in job_id:
                array_id, _, index = job_id.partition("_")
                spec, task = connection.hmget(keys.array(array_id), ["spec", f"task:{index}"])
                if spec is None:
                    found = connection.exists(keys.job(array_id))
                    raise JobRejected("job.dependency", f"{job_id}: job {array_id} is not an array" if found
                                      else f"{job_id}: no such array: {array_id}")
                if int(index) not in workflow.parse_normalised_array(spec).indices():
                    raise JobRejected("job.dependency", f"{job_id}: array {array_id} has no task {index}")
                if task is not None and not connection.exists(keys.job(task)):
                    raise JobRejected("job.dependency", f"{job_id}: the task has ended and its record expired "
                                      "(JOB_RETENTION)")
    ids = dependency.job_ids()
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.exists(keys.job(job_id), keys.array(job_id))
        found = pipe.execute()
    missing = [job_id for job_id, exists in zip(ids, found) if not exists]
    if missing:
        raise JobRejected("job.dependency", f"no such job: {', '.join(map(str, missing))}")


def cancel(connection: Redis, job_id: int, reason: str = "cancelled by user") -> str:
    """Cancel a job: 'cancelled' (ended now), 'signalled' (its worker stops it), 'final:<STATE>', 'missing'."""
    answer = scripts.run(connection, "cancel", job_id, reason)
    return ":".join(answer)  # type: ignore[arg-type]


VIEW_FIELDS = (
    "id", "name", "account", "partition", "state", "cpus", "memory", "node", "worker",
    "exit_code", "reason", "submitted_at", "started_at", "ended_at", "ntasks_per_node",
    "cpus_per_task", "time_limit", "cpu_ids", "requeue", "requeued", "dependency",
    "max_rss", "cpu_time", "oom_killed",
    "array_job_id", "array_task_id",
)


def cancel_array(connection: Redis, array_job_id: int, task: int | None = None,
                 reason: str = "cancelled by user") -> list[str]:
    """Cancel a whole array (``task`` None) or one task: the part not yet materialised at once and
    atomically, then each materialised task as :func:`cancel` does. Returns their answers
    ('missing' for no such array or task index, 'cancelled' for a task never materialised)."""
    if task is not None:
        spec = connection.hget(keys.array(array_job_id), "spec")
        if spec is None or task not in workflow.parse_normalised_array(spec).indices():
            return ["missing"]
    answer = scripts.run(connection, "cancel_array", array_job_id, "" if task is None else task)
    kind, *task_ids = answer  # type: ignore[misc]
    if kind == "missing":
        return ["missing"]
    if kind == "skipped":
        return ["cancelled"]
    if kind == "final":  # a task cancelled before it was materialised, or an array whose every task ended
        return ["final:CANCELLED" if task is not None else "final:every task of the array has ended"]
    return [cancel(connection, int(task_id), reason) for task_id in task_ids]


def cancel_named(connection: Redis, job_id: int, task: int | None = None,
                 reason: str = "cancelled by user") -> list[str]:
    """Cancel what scancel's argument names: a job, a whole array (by its id), or one task of an
    array (``task``); the CLI and the API both come here. Returns the answers of :func:`cancel`
    for each job acted on: ['missing'] for nothing of that name, ['final:<why>'] when it had ended."""
    if task is not None or connection.exists(keys.array(job_id)):
        return cancel_array(connection, job_id, task, reason)
    return [cancel(connection, job_id, reason)]


def task_job_id(connection: Redis, array_job_id: int, task: int) -> int | None:
    """The job id of task ``task`` of array ``array_job_id``, None while it is not materialised
    (or when it never will be: cancelled before, or no such task)."""
    found = connection.hget(keys.array(array_job_id), f"task:{task}")
    return None if found is None else int(found)


def get_named(connection: Redis, job_id: int, task: int | None = None) -> dict[str, Any] | None:
    """The view of job ``job_id``, or of task ``task`` of that array (None when it has no record)."""
    if task is not None:
        found = task_job_id(connection, job_id, task)
        return None if found is None else get(connection, found)
    return get(connection, job_id)


def why_missing(connection: Redis, job_id: int) -> str:
    """Why job ``job_id`` has no record, for "job N does not exist": nothing for an id never given
    out; otherwise the ways an id given out can lack a job, so that a client told of an unconfirmed
    submission (:func:`_store_replicated`) learns that it was lost and must be submitted again."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(keys.NEXT_JOB_ID)
        pipe.zscore(keys.EXPIRED_THROUGH, "id")
        counted, expired_through = pipe.execute()
    if job_id > int(counted or 0):
        return ""
    expired = " or it ended and its record expired (JOB_RETENTION, MAX_JOB_RECORDS);" if job_id <= (expired_through or 0) else ""
    return (f": the id was given out but no job is stored under it:{expired} a submission that failed with an error "
            "after the id was given, or one that reached a Redis primary which died before a replica had it "
            "(lost: submit it again)")


def array_remainders(connection: Redis, array_job_ids: list[int]) -> dict[int, str]:
    """The not yet materialised part of each array, as squeue shows it (``5-999%16``); arrays with
    nothing left are left out."""
    with connection.pipeline(transaction=False) as pipe:
        for array_id in array_job_ids:
            pipe.hmget(keys.array(array_id), "spec", "run", "next", "cancelled")
            pipe.smembers(keys.array_skip(array_id))
        replies = pipe.execute()
    found = {}
    for array_id, (spec, run, next_index, cancelled), skipped in zip(array_job_ids, replies[::2], replies[1::2]):
        if spec is None or cancelled == "1":
            continue
        rest = workflow.remaining(workflow.parse_normalised_array(spec), int(run), int(next_index),
                                  {int(i) for i in skipped})
        if rest:
            found[array_id] = rest
    return found


def arrays_at_limit(connection: Redis, array_job_ids: list[int]) -> set[int]:
    """The arrays whose ``%N`` limit is reached (N tasks not yet ended): the rest of each waits
    with squeue's reason ``JobArrayTaskLimit``."""
    with connection.pipeline(transaction=False) as pipe:
        for array_id in array_job_ids:
            pipe.hget(keys.array(array_id), "limit")
            pipe.zcard(keys.array_tasks(array_id))
        replies = pipe.execute()
    return {array_id for array_id, limit, unended in zip(array_job_ids, replies[::2], replies[1::2])
            if int(limit or 0) and unended >= int(limit)}


def get(connection: Redis, job_id: int) -> dict[str, Any] | None:
    """The job's view (see :func:`view`), or None for an unknown id."""
    values = connection.hmget(keys.job(job_id), VIEW_FIELDS)
    return view(dict(zip(VIEW_FIELDS, values))) if values[0] is not None else None


def list_jobs(
    connection: Redis, state: JobState | None = None, limit: int = 1000, offset: int = 0
) -> list[dict[str, Any]]:
    """Views of jobs, newest first, optionally only those in ``state``."""
    index = keys.state(state) if state else keys.JOBS
    ids = connection.zrevrange(index, offset, offset + limit - 1)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), VIEW_FIELDS)
        rows = pipe.execute()
    return [view(dict(zip(VIEW_FIELDS, row))) for row in rows if row[0] is not None]


def count_by_state(connection: Redis) -> dict[str, int]:
    """How many jobs are in each state, from the per-state indexes (no scan)."""
    with connection.pipeline(transaction=False) as pipe:
        for state in JobState:
            pipe.zcard(keys.state(state))
        counts = pipe.execute()
    return {state.value: count for state, count in zip(JobState, counts)}


def view(raw: dict[str, str | None]) -> dict[str, Any]:
    """The machine-readable form shared by ``--json`` and the API (field names are a contract)."""

    def number(name: str) -> int | None:
        value = raw.get(name)
        return int(value) if value not in (None, "") else None

    limit = raw.get("time_limit")
    return {
        "id": number("id"),
        "name": raw.get("name"),
        "account": raw.get("account"),
        "partition": raw.get("partition"),
        "state": raw.get("state"),
        "cpus": number("cpus"),
        "memory": number("memory"),
        "node": raw.get("node") or None,
        "worker": raw.get("worker") or None,
        "exit_code": number("exit_code"),
        "reason": raw.get("reason") or None,
        "submitted_at": timestamp(raw.get("submitted_at")),
        "started_at": timestamp(raw.get("started_at")),
        "ended_at": timestamp(raw.get("ended_at")),
        "ntasks_per_node": number("ntasks_per_node"),
        "cpus_per_task": number("cpus_per_task"),
        "time_limit": float(limit) if limit else None,
        "cpu_ids": [int(c) for c in (raw.get("cpu_ids") or "").split(",") if c],
        "requeue": raw.get("requeue") == "1",
        "requeued": number("requeued") or 0,
        "dependency": raw.get("dependency") or None,
        "max_rss": number("max_rss"),
        "cpu_time": float(raw["cpu_time"]) if raw.get("cpu_time") else None,
        "oom_killed": raw.get("oom_killed") == "1" if raw.get("oom_killed") else None,
        "array_job_id": number("array_job_id"),
        "array_task_id": number("array_task_id"),
    }


def timestamp(epoch: str | None) -> str | None:
    """Redis TIME seconds as ISO 8601 UTC with microseconds, or None."""
    if not epoch:
        return None
    moment = datetime.fromtimestamp(float(epoch), tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
