"""The HTTP API: the seed's ``POST /api/v1/jobs/submit`` and what an operator of a batch system expects.

It is a second face of the job module, not a second implementation: the body of a submission is
:class:`conductor.jobs.JobSubmission` itself, and every answer is one of the views the CLI prints
with ``--json``. The API keeps no state of its own; Redis holds everything, so any number of API
processes can serve the same cluster and a restart loses nothing.

Checks that run in a plain ASGI layer before FastAPI sees a request (:class:`Guard`): the bearer
token, so a client without it learns nothing (not even whether its body would parse); the body
size limit, so an oversized body is refused before it is parsed or stored; and UTF-8, so that
every bad body is a 422 that names the body. Oversized bodies get 422 rather than 413 because
the API's contract (issue 3) counts "body over a size limit" among the bad inputs answered 422,
in FastAPI's shape, with ``loc: ["body"]``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from redis import Redis

from . import jobs, keys, metrics, nodestate, partitions, placement, registry, resources, runner
from .config import Settings
from .jobs import JobRejected, JobState, JobSubmission
from .store import UNREACHABLE, NotReplicated, connect, redacted

PREFIX = "/api/v1"
MAX_BODY_BYTES = 2 << 20  # a script may be 1 MiB (jobs.MAX_SCRIPT_BYTES); JSON escaping needs headroom
MAX_OUTPUT_CHUNK = 8 << 20
OPEN_PATHS = frozenset({"/healthz"})  # answered without a token: a liveness probe carries no secret

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- response bodies (field names are the contract shared with the CLI's --json) ---------------


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
                                  "PartitionDown, NodeDown")
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

    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$",
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
    job_id: int
    state: JobState = Field(description="CANCELLED, or RUNNING while its worker stops it")
    detail: str


class Status(BaseModel):
    status: str


# --- application ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the routes share: one Redis client of each kind, thread-safe pools, for the app's life."""

    settings: Settings
    connection: Redis
    rq_connection: Redis
    metrics: CollectorRegistry


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``; a factory so that tests (and several nodes in one process) get their own."""
    connection = connect(settings)
    context = Context(settings, connection, connect(settings, decode=False),
                      metrics.registry_for(connection, settings.redis_url))
    token = settings.api_token.get_secret_value()
    app = FastAPI(
        title="conductor",
        version=version("conductor"),
        description="Slurm-like batch jobs on N concurrent RQ workers per node; Redis is the only store.",
        lifespan=_lifespan(context),
    )
    app.state.conductor = context
    app.add_middleware(Guard, token=token, max_body=MAX_BODY_BYTES)
    guarded = _guard_docs(bool(token))
    app.include_router(jobs_router, prefix=PREFIX, **guarded)
    app.include_router(probes_router, **guarded)
    app.include_router(open_router)
    for error in UNREACHABLE:
        app.add_exception_handler(error, _redis_unreachable)
    app.add_exception_handler(JobRejected, _job_rejected)
    app.add_exception_handler(NotReplicated, _not_replicated)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def serve(settings: Settings) -> None:
    """Run the API on API_HOST:API_PORT until SIGTERM/SIGINT (uvicorn finishes open requests first)."""
    app = create_app(settings)
    logger.info("conductor API on http://{}:{} (Redis {}, token {})", settings.api_host, settings.api_port,
                redacted(settings.redis_url), "required" if settings.api_token.get_secret_value() else "off")
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None,
                server_header=False, timeout_graceful_shutdown=10)


def _lifespan(context: Context) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        context.connection.close()
        context.rq_connection.close()

    return lifespan


def _context(request: Request) -> Context:
    return request.app.state.conductor  # type: ignore[no-any-return]


Ctx = Annotated[Context, Depends(_context)]
JobId = Annotated[int, PathParam(ge=1, description="the job id that submit answered")]
bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="API_TOKEN of the node's app.properties (checked before anything else)")


def _guard_docs(token_required: bool) -> dict[str, Any]:
    """Router options that document the token; :class:`Guard` enforces it, before the body is read."""
    if not token_required:
        return {}
    return {
        "dependencies": [Security(bearer)],
        "responses": {401: {"model": Problem, "description": "missing or wrong bearer token"}},
    }


REDIS_DOWN: dict[int | str, dict[str, Any]] = {503: {"model": Problem, "description": "Redis is unreachable"}}
jobs_router = APIRouter(tags=["jobs"], responses=REDIS_DOWN)
probes_router = APIRouter(tags=["operations"])
open_router = APIRouter(tags=["operations"])


# --- jobs -----------------------------------------------------------------------------------


SUBMIT_LINKS = {  # lets generated clients (and schemathesis) follow a new job to its other routes
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id"}}
    for name, operation in (("GetJob", "get_job"), ("GetJobOutput", "get_job_output"), ("CancelJob", "cancel_job"))
}


@jobs_router.post(
    "/jobs/submit", status_code=201, response_model=Submitted, operation_id="submit_job",
    responses={201: {"links": SUBMIT_LINKS}, 422: {"model": ValidationProblem,
                     "description": "a field of the body is invalid, or no node could ever run the job"}},
)
def submit_job(submission: JobSubmission, ctx: Ctx) -> Submitted:
    """Store a job (PENDING) and place it at once if a node has room: the seed's request, verbatim."""
    _require_unicode(submission)
    job_id = partitions.submit(ctx.connection, submission, ctx.settings.allow_unknown_partitions,
                               ctx.settings.max_array_size)
    return Submitted(job_id=job_id, state=_place(ctx, job_id))


def _place(ctx: Context, job_id: int) -> Literal["PENDING", "RUNNING"]:
    """Try to start the job now; if Redis fails here the job is stored and the heartbeats place it."""
    try:
        placement.place(ctx.connection, ctx.rq_connection)
        state = ctx.connection.hget(keys.job(job_id), "state")
    except UNREACHABLE as error:
        logger.warning("job {} is stored but placing it failed ({}); the workers' next tick places it",
                       job_id, error)
        return "PENDING"
    return "PENDING" if state == JobState.PENDING else "RUNNING"


def _require_unicode(submission: JobSubmission) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``), which no UTF-8 store can hold: refuse them by field."""
    for loc, text in _strings(submission.model_dump(mode="python"), ("body",)):
        try:
            text.encode()
        except UnicodeEncodeError:
            raise RequestValidationError([{
                "type": "string_unicode", "loc": loc,
                "msg": "contains a lone surrogate (such as \\ud800), which is not valid Unicode text",
            }]) from None


def _strings(value: Any, loc: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, dict):  # a bad key is reported at its mapping: the key itself cannot be shown
        return [item for key, inner in value.items()
                for item in _strings(key, loc) + _strings(inner, (*loc, _printable(key)))]
    return []


def _printable(key: Any) -> str | int:
    if isinstance(key, int):
        return key
    return str(key).encode("utf-8", "backslashreplace").decode()


@jobs_router.get("/jobs", response_model=list[JobView], operation_id="list_jobs")
def list_jobs(
    ctx: Ctx,
    response: Response,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**12, description="jobs to skip, newest first")] = 0,
) -> list[dict[str, Any]]:
    """Jobs, newest first; ``X-Total-Count`` says how many match, for paging with offset and limit."""
    counts = jobs.count_by_state(ctx.connection)
    response.headers["X-Total-Count"] = str(counts[state.value] if state else sum(counts.values()))
    return partitions.annotate(ctx.connection, jobs.list_jobs(ctx.connection, state, limit, offset))


@jobs_router.get("/jobs/{job_id}", response_model=JobView, operation_id="get_job",
                 responses={404: {"model": Problem}})
def get_job(job_id: JobId, ctx: Ctx) -> dict[str, Any]:
    """One job: state, placement, resources, exit code and timestamps; a PENDING one says why it waits."""
    return partitions.annotate(ctx.connection, [_job_or_404(ctx, job_id)])[0]


def _job_or_404(ctx: Context, job_id: int) -> dict[str, Any]:
    found = jobs.get(ctx.connection, job_id)
    if found is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return found


@jobs_router.post(
    "/jobs/{job_id}/cancel", response_model=Cancelled, operation_id="cancel_job",
    responses={404: {"model": Problem}, 409: {"model": Problem, "description": "the job has already ended"}},
)
def cancel_job(job_id: JobId, ctx: Ctx) -> Cancelled:
    """Cancel a PENDING job at once, or tell a RUNNING job's worker to stop every process of it."""
    answer = jobs.cancel(ctx.connection, job_id)
    if answer == "missing":
        raise HTTPException(404, f"job {job_id} does not exist")
    if answer.startswith("final:"):
        state = answer.split(":", 1)[1]
        raise HTTPException(409, f"job {job_id} has already ended ({state}); "
                                 "only PENDING or RUNNING jobs can be cancelled")
    if answer == "cancelled":
        return Cancelled(job_id=job_id, state=JobState.CANCELLED, detail=f"job {job_id} cancelled")
    worker = _job_or_404(ctx, job_id)["worker"]
    return Cancelled(job_id=job_id, state=JobState.RUNNING,
                     detail=f"cancel requested: worker {worker} is stopping every process of job {job_id}; "
                            "it ends CANCELLED within seconds")


OUTPUT_HEADERS = {
    "X-Next-Offset": {"description": "the offset to ask for next", "schema": {"type": "integer"}},
    "X-Output-Size": {"description": "bytes in the output file now", "schema": {"type": "integer"}},
    "X-Job-State": {"description": "the job's state when the output was read", "schema": {"type": "string"}},
    "X-Output-Complete": {"description": "true when the job has ended and every byte was sent",
                          "schema": {"type": "string", "enum": ["true", "false"]}},
}


@jobs_router.get(
    "/jobs/{job_id}/output", response_class=Response, operation_id="get_job_output",
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "headers": OUTPUT_HEADERS,
              "description": "the bytes of the output from `offset`, at most `limit` of them"},
        404: {"model": Problem, "description": "unknown job, or its output is on another node"},
    },
)
def job_output(
    job_id: JobId,
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0, description="first byte to return; pass X-Next-Offset to tail "
                                                   "(past the end: nothing, as reading past a file's end)")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_OUTPUT_CHUNK, description="most bytes to return")] = 1 << 20,
) -> Response:
    """The job's combined stdout/stderr from ``offset``: call again with ``X-Next-Offset`` to tail it.

    The file lives in JOB_ROOT of the node that ran the job, so this API serves the jobs of its
    own node (or all of them when JOB_ROOT is shared storage); for another node's job it says
    which node to ask.
    """
    job = _job_or_404(ctx, job_id)  # state first: once final, the file no longer grows
    path = runner.output_file(ctx.settings.job_root, job_id, job.get("array_job_id"), job.get("array_task_id"))
    try:
        data, size = _read_chunk(path, offset, limit)
    except FileNotFoundError:
        _explain_missing_output(ctx.settings, job, path)
        data, size = b"", 0
    except OSError as error:  # not Redis: say which file and why, instead of a bare 500
        raise HTTPException(500, f"cannot read the output of job {job_id} at {path}: {error}") from None
    complete = JobState(job["state"]).final and offset + len(data) >= size
    return Response(data, media_type="text/plain", headers={
        "X-Next-Offset": str(offset + len(data)), "X-Output-Size": str(size),
        "X-Job-State": job["state"], "X-Output-Complete": str(complete).lower(),
    })


def _read_chunk(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    with path.open("rb") as file:
        size = file.seek(0, 2)
        if offset >= size:
            return b"", size
        file.seek(offset)
        return file.read(limit), size


def _explain_missing_output(settings: Settings, job: dict[str, Any], path: Path) -> None:
    """Return quietly when there is no output *yet* (or never will be); raise 404 when it is elsewhere."""
    if job["worker"] is None or (job["state"] == JobState.RUNNING and job["node"] == settings.node_name):
        return  # not started yet, ended without starting, or its worker is about to create the file
    if job["node"] != settings.node_name:
        raise HTTPException(404, (
            f"the output of job {job['id']} is on node {job['node']} ({path} there); this API runs on node "
            f"{settings.node_name} and reads only its own JOB_ROOT: ask the API on {job['node']}, "
            "or put JOB_ROOT on storage that every node shares"))
    raise HTTPException(404, (
        f"job {job['id']} ran on this node but {path} does not exist: it was removed, or the job "
        f"could not start ({job['reason'] or 'no reason recorded'})"))


# --- workers and nodes ------------------------------------------------------------------------


@jobs_router.get("/workers", response_model=list[WorkerView], tags=["cluster"], operation_id="list_workers")
def list_workers(ctx: Ctx) -> list[dict[str, Any]]:
    """Live workers of every node (a worker whose heartbeat expired is not listed)."""
    return registry.workers(ctx.connection)


@jobs_router.get("/nodes", response_model=list[NodeView], tags=["cluster"], operation_id="list_nodes")
def list_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    """Every node's CPUs, memory and workers: totals, allocated and free."""
    return resources.nodes(ctx.connection)


NodeName = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                                    description="a node's NODE_NAME")]


def _node_or_404(ctx: Context, name: str) -> dict[str, Any]:
    for node in resources.nodes(ctx.connection):
        if node["name"] == name:
            return node
    raise HTTPException(404, f"node {name!r} is unknown: no worker of it ever registered")


@jobs_router.post("/nodes/{name}/drain", response_model=NodeView, tags=["cluster"], operation_id="drain_node",
                  responses={404: {"model": Problem}})
def drain_node(name: NodeName, body: DrainRequest, request: Request, ctx: Ctx) -> dict[str, Any]:
    """Take a node out of service: no new jobs go to it, its running jobs finish (DRAINING, then DRAINED)."""
    client = request.client.host if request.client else "unknown"
    try:
        nodestate.drain(ctx.connection, name, body.reason.strip(), f"api@{client}")
    except nodestate.UnknownNode:
        raise HTTPException(404, f"node {name!r} is unknown: no worker of it ever registered") from None
    return _node_or_404(ctx, name)


@jobs_router.post("/nodes/{name}/resume", response_model=NodeView, tags=["cluster"], operation_id="resume_node",
                  responses={404: {"model": Problem}})
def resume_node(name: NodeName, ctx: Ctx) -> dict[str, Any]:
    """Return a drained node to service (a node not drained is left as it is)."""
    try:
        nodestate.resume(ctx.connection, name)
    except nodestate.UnknownNode:
        raise HTTPException(404, f"node {name!r} is unknown: no worker of it ever registered") from None
    placement.place(ctx.connection, ctx.rq_connection)
    return _node_or_404(ctx, name)


@jobs_router.get("/partitions", response_model=list[PartitionView], tags=["cluster"], operation_id="list_partitions")
def list_partitions(ctx: Ctx) -> list[dict[str, Any]]:
    """Partitions with their nodes by state and CPUs allocated, idle and total (as sinfo -s)."""
    return partitions.summary(ctx.connection)


# --- probes and metrics -------------------------------------------------------------------------


@open_router.get("/healthz", response_model=Status, operation_id="healthz")
def healthz() -> Status:
    """The process is up and serving; says nothing about Redis (that is /readyz), needs no token."""
    return Status(status="ok")


@probes_router.get("/readyz", response_model=Status, responses=REDIS_DOWN, operation_id="readyz")
def readyz(ctx: Ctx) -> Status:
    """Ready when Redis answers a ping: a load balancer should route here only then."""
    ctx.connection.ping()
    return Status(status="ready")


@probes_router.get(
    "/metrics", response_class=Response, operation_id="metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text format; conductor_redis_up is 0 when Redis is down"}},
)
def prometheus_metrics(ctx: Ctx) -> Response:
    """Prometheus metrics, read from Redis at scrape time (see :mod:`conductor.metrics`)."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)


# --- errors -----------------------------------------------------------------------------------


class AsciiJSONResponse(JSONResponse):
    """JSON that can always be sent: errors may quote input with lone surrogates, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _validation_body(errors: list[dict[str, Any]]) -> AsciiJSONResponse:
    """FastAPI's 422 shape (``loc``, ``msg``, ``type``), without echoing the input (scripts are long)."""
    detail = [{"type": str(e.get("type", "value_error")), "loc": [_printable(p) for p in e.get("loc", ())],
               "msg": str(e.get("msg", "invalid")).removeprefix("Value error, ")} for e in errors]
    return AsciiJSONResponse({"detail": detail}, status_code=422)


async def _invalid_request(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    return _validation_body(list(error.errors()))


async def _job_rejected(_: Request, error: Exception) -> Response:
    """A job the model accepts but no node could run: the same 422 shape, at the field at fault."""
    assert isinstance(error, JobRejected)
    loc = ["body", *error.field.split(".")]
    return _validation_body([{"type": "job_rejected", "loc": loc, "msg": error.reason}])


async def _redis_unreachable(request: Request, error: Exception) -> Response:
    """A 503 that names the problem, so that clients retry and operators know where to look."""
    url = redacted(_context(request).settings.redis_url)
    logger.error("{} {}: Redis at {} is unreachable: {}", request.method, request.url.path, url, error)
    return JSONResponse({"detail": f"Redis at {url} is unreachable ({error}); try again shortly"},
                        status_code=503, headers={"Retry-After": "5"})


# --- the ASGI guard -----------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """The request body is over the limit; the message says by how much and what the limits are."""


class ClientGone(Exception):
    """The client disconnected while sending its body: there is no one to answer."""


class Guard:
    """Token, body size and body encoding checks, before routing or parsing.

    The token comes first: a request without it is answered 401 before a single byte of its
    body is read, so an anonymous client cannot make the API buffer megabytes (a client that
    sends ``Expect: 100-continue`` is not even asked for its body). Only then is the body read
    whole (it is small by construction) and handed on; it is read even when the answer is "too
    large", because a server that answers and closes while request data is still unread makes
    the client's TCP stack drop the answer. Reading is not parsing: nothing of a refused body is
    interpreted.
    """

    DRAIN_LIMIT = 64 << 20  # beyond this a client is not making a mistake: answer without reading on

    def __init__(self, app: ASGIApp, token: str, max_body: int) -> None:
        self.app = app
        self.token = token.encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            # Connection: close, since the unread body cannot be the next request on this connection.
            await _send_json(scope, _unread, send, 401, {"detail": self._why_unauthorized(scope)},
                             {"WWW-Authenticate": 'Bearer realm="conductor"', "Connection": "close"})
            return
        try:
            body = await self._read_body(scope, receive)
            problem = _not_utf8(body)
        except BodyTooLarge as error:
            body, problem = b"", {"type": "body_too_large", "loc": ["body"], "msg": str(error)}
        except ClientGone:
            return
        if problem:
            await _send_json(scope, receive, send, 422, {"detail": [problem]})
        else:
            await self.app(scope, _replay(body, receive), send)

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = _header(scope, b"authorization").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)

    @staticmethod
    def _why_unauthorized(scope: Scope) -> str:
        if not _header(scope, b"authorization"):
            return "authentication required: send the header 'Authorization: Bearer <API_TOKEN>'"
        return "the bearer token is wrong: send 'Authorization: Bearer <API_TOKEN>' with the node's API_TOKEN"

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.DRAIN_LIMIT:
            raise BodyTooLarge(self._too_large(int(declared)))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body:
                chunks.append(chunk)
            elif size > self.DRAIN_LIMIT:
                break
            more = message.get("more_body", False)
        if size > self.max_body:
            raise BodyTooLarge(self._too_large(size))
        return b"".join(chunks)

    def _too_large(self, size: int) -> str:
        return (f"the request body has {size} bytes or more; the API accepts at most {self.max_body} bytes "
                f"({self.max_body >> 20} MiB), and a job script at most {jobs.MAX_SCRIPT_BYTES} bytes")


async def _unread() -> Message:
    """The ``receive`` of a refused request: the body stays unread (a response needs none of it)."""
    return {"type": "http.disconnect"}


def _not_utf8(body: bytes) -> dict[str, Any] | None:
    """JSON between systems is UTF-8 (RFC 8259); anything else would reach FastAPI as an opaque 400."""
    try:
        body.decode()
    except UnicodeDecodeError as error:
        return {"type": "json_invalid", "loc": ["body", error.start],
                "msg": f"the body is not UTF-8 text (byte {error.start}): send JSON encoded in UTF-8"}
    return None


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return b""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then waits for the client as usual."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_json(scope: Scope, receive: Receive, send: Send, status: int, content: Any,
                     headers: dict[str, str] | None = None) -> None:
    await AsciiJSONResponse(content, status_code=status, headers=headers)(scope, receive, send)


# --- OpenAPI ----------------------------------------------------------------------------------

# What the validators of JobSpec accept, in JSON Schema words. pydantic describes the Python
# types (memory_per_node: int), but clients send the seed's "8G" and sbatch's "1:30:00"; a
# schema without these would make generated clients and schemathesis reject or mis-send them.
# Where the model checks with a regex, the document quotes that very regex, so the two cannot drift.
BLANK = r"\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # str.isspace()
SPELLINGS: dict[tuple[str, str], dict[str, Any]] = {
    ("JobSpec", "memory_per_node"): {"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 2**53},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[KMGTPkmgtp]?([iI]?[bB])?\s*$"},
    ], "default": 0, "description": "bytes, or 512M, 8G, ... (powers of 1024, as Slurm)"},
    ("JobSpec", "time_limit"): {"anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": 366 * 24 * 60},
        {"type": "string", "description": "minutes, or [D-]HH:MM:SS, MM:SS, D-HH as sbatch --time"},
        {"type": "null"},
    ], "default": None, "description": "minutes (a number or a string), or [D-]HH:MM:SS; at most 366 days"},
    ("JobSpec", "account"): {"pattern": jobs._PRINTABLE.pattern},
    ("JobSpec", "name"): {"pattern": jobs._PRINTABLE.pattern},
    ("JobSpec", "partition"): {"pattern": jobs._PRINTABLE.pattern},
    ("JobSpec", "environment"): {"propertyNames": {"pattern": jobs._ENV_NAME.pattern},
                                 "additionalProperties": {"type": "string", "pattern": r"^[^\x00]*$"}},
    ("JobSubmission", "script"): {"pattern": rf"^[^\x00]*[^{BLANK}\x00][^\x00]*$",
                                  "description": "the batch script, run with bash; not blank, at most 1 MiB"},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the accepted spellings of the job fields (see SPELLINGS)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
        schemas = document.get("components", {}).get("schemas", {})
        for (model, field), fragment in SPELLINGS.items():
            prop = schemas[model]["properties"][field]
            if "anyOf" in fragment:
                prop.pop("type", None)
            prop.update(fragment)
        app.openapi_schema = document
    return app.openapi_schema


async def _not_replicated(request: Request, error: Exception) -> JSONResponse:
    """A 503: the submission reached the primary but no replica confirmed it, so it may not survive
    a failover; the detail names the job id so the client can look before submitting again."""
    logger.error("submission not confirmed by a replica: {}", error)
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})
