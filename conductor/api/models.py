"""The API's own request and response bodies, with their JSON schema declared on the fields.

Field names are the contract shared with the CLI's ``--json`` views; the views that mirror a CLI
command allow extra fields, so a field added there reaches HTTP clients too. The submission body is
not here: it is :class:`conductor.jobs.JobSubmission`, which carries its own schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..jobs import JobState

DRAIN_REASON_PATTERN = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"  # one line, not blank
NODE_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"


class Problem(BaseModel):
    """Every error but 422: one sentence that says what is wrong and what to do."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description='where, e.g. ["body", "job", "cpus_per_task"]')
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """422: FastAPI's shape, also for what the job module refuses after validation (JobRejected)."""

    detail: list[ValidationIssue]


class Submitted(BaseModel):
    job_id: int
    state: Literal["PENDING", "RUNNING"] = Field(
        description="PENDING: waiting for room; RUNNING: placed on a node (GET the job for its state now)"
    )


class JobView(BaseModel):
    """One job, as ``conductor show ID --json`` prints it."""

    model_config = ConfigDict(extra="allow")

    id: int
    name: str | None
    account: str | None
    partition: str | None
    state: JobState
    cpus: int | None
    memory: int | None = Field(description="bytes")
    node: str | None
    worker: str | None = Field(description="the worker that runs or ran it, <NODE>-<index>")
    exit_code: int | None
    reason: str | None
    submitted_at: str | None = Field(description="ISO 8601 UTC")
    started_at: str | None = Field(description="ISO 8601 UTC; when the job was placed on its node")
    ended_at: str | None = Field(description="ISO 8601 UTC")
    ntasks_per_node: int | None
    cpus_per_task: int | None
    time_limit: float | None = Field(description="seconds")
    cpu_ids: list[int] = Field(description="the CPUs the job is bound to on its node")
    requeue: bool = Field(default=False, description="runs again once if its worker dies (sbatch --requeue)")
    requeued: int = Field(default=0, description="how many times it was queued again")
    array_job_id: int | None = Field(default=None, description="the array's id (its first task's), for a task of a job array")
    array_task_id: int | None = Field(default=None, description="the task's index in its array")
    dependency: str | None = Field(default=None, description="its --dependency, normalised; reason "
                                   "Dependency while unmet, DependencyNeverSatisfied once it cannot be met")
    pending_reason: str | None = Field(
        default=None, description="why a PENDING job waits, as squeue: Resources, Priority, PartitionNodesDrained, "
                                  "ReqNodeNotAvail, PartitionDown, NodeDown, Dependency, DependencyNeverSatisfied")
    max_rss: int | None = Field(default=None, description="peak memory of the job's cgroup in bytes (MaxRSS)")
    cpu_time: float | None = Field(default=None, description="user+system CPU seconds of the job's cgroup")
    oom_killed: bool | None = Field(default=None, description="whether the OOM killer fired in the job's cgroup")


class WorkerView(BaseModel):
    """One live worker, as ``conductor workers --json`` prints it."""

    model_config = ConfigDict(extra="allow")

    name: str
    node: str
    index: int
    pid: int
    host: str
    state: Literal["idle", "busy"]
    job: int | None
    last_heartbeat: str | None


class NodeView(BaseModel):
    """One node's ledger, as ``conductor nodes --json`` prints it (memory in bytes)."""

    model_config = ConfigDict(extra="allow")

    name: str
    total_cpus: int
    allocated_cpus: int
    free_cpus: int
    total_memory: int
    allocated_memory: int
    free_memory: int
    workers: int
    busy_workers: int
    state: Literal["IDLE", "MIXED", "ALLOCATED", "DRAINING", "DRAINED", "DOWN"] = Field(
        description="as sinfo: DRAINING while a drained node still runs jobs, DOWN without live workers")
    reason: str | None = Field(default=None, description="why the node was drained")
    drained_by: str | None = Field(default=None, description="who drained it (user@host, or api@client)")
    drained_at: str | None = Field(default=None, description="ISO 8601 UTC")
    partitions: list[str] = Field(default_factory=list, description="NODE_PARTITIONS; empty: every partition")
    containment: Literal["none", "cgroup-v1", "cgroup-v2"] = Field(
        default="none", description="how the node's jobs are held to their CPUs and memory")
    oom_kills: int = Field(default=0, description="jobs of the node that ended OUT_OF_MEMORY")


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1024, pattern=DRAIN_REASON_PATTERN,
                        description="why, shown with the node (as scontrol's Reason=)")


class PartitionView(BaseModel):
    """One partition, as ``conductor partitions --json`` prints it."""

    name: str = Field(description='a partition name, or "*" for the nodes that serve every partition')
    nodes: int
    node_names: list[str]
    states: dict[str, int] = Field(description="how many of its nodes are in each node state")
    allocated_cpus: int
    free_cpus: int = Field(description="CPUs free on its nodes in service")
    total_cpus: int


class Cancelled(BaseModel):
    job_id: int = Field(description="the job cancelled: for a whole array, the array's id; for one task, "
                                    "the task's own job id (the array's id while the task was not materialised)")
    state: JobState = Field(description="CANCELLED, or RUNNING while its worker (for an array: some task's) stops it")
    detail: str
    array_job_id: int | None = Field(default=None, description="the array, when an array or one task of it was named")
    array_task_id: int | None = Field(default=None, description="the task's index, when one task was named")


class Status(BaseModel):
    status: str


# Documented answers that several routes share.
REDIS_DOWN: dict[int | str, dict[str, Any]] = {503: {"model": Problem, "description": "Redis is unreachable"}}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"model": Problem, "description": "missing or wrong bearer token"}}
