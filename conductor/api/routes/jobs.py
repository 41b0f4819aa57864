"""Job routes: submit, list, show, cancel, and read a job's output (``/api/v1/jobs...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from loguru import logger

from ... import jobs, keys, partitions, placement, runner, workflow
from ...config import Settings
from ...jobs import JobState, JobSubmission
from ...store import UNREACHABLE
from ..context import Context, Ctx
from ..errors import printable
from ..models import REDIS_DOWN, Cancelled, JobView, Problem, Submitted, ValidationProblem

MAX_OUTPUT_CHUNK = 8 << 20
JobId = Annotated[str, PathParam(
    pattern=workflow.JOB_REF_PATTERN, examples=["123", "123_7"],
    description="the job id that submit answered, or <array job id>_<index> for one task of a job array "
                "(squeue's and scancel's form)")]

router = APIRouter(tags=["jobs"], responses=REDIS_DOWN)


SUBMIT_LINKS = {  # lets generated clients (and schemathesis) follow a new job to its other routes
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id"}}
    for name, operation in (("GetJob", "get_job"), ("GetJobOutput", "get_job_output"), ("CancelJob", "cancel_job"))
}


@router.post(
    "/jobs/submit", status_code=201, response_model=Submitted, operation_id="submit_job",
    responses={201: {"links": SUBMIT_LINKS}, 422: {"model": ValidationProblem,
                     "description": "a field of the body is invalid, or no node could ever run the job"}},
)
def submit_job(submission: JobSubmission, ctx: Ctx) -> Submitted:
    r"""Store a job (PENDING) and place it at once if a node has room: the seed's request, verbatim.

    A sweep of 1,000 points, at most 4 at once (sbatch --array), answers the array's id:

        {"job": {"name": "sweep", "cpus_per_task": 2, "array": "0-999%4"},
         "script": "#!/bin/bash\npython3 simulate.py --point $SLURM_ARRAY_TASK_ID"}

    and a collector that runs once every task of that array (here 1) succeeded:

        {"job": {"name": "collect", "dependency": "afterok:1"}, "script": "#!/bin/bash\npython3 collect.py"}

    Tasks are then `GET /api/v1/jobs/1_7`; `POST /api/v1/jobs/1/cancel` cancels the whole array,
    `/jobs/1_7/cancel` one task.
    """
    _require_unicode(submission)
    job_id = partitions.submit(ctx.connection, submission, ctx.settings.allow_unknown_partitions,
                               ctx.settings.max_array_size, ctx.settings.kill_invalid_depend)
    return Submitted(job_id=job_id, state=_place(ctx, job_id, submission.job.cpus))


@router.api_route("/jobs/submit", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def submit_other_methods() -> None:
    """Only POST submits: any other method is 405, not a lookup of a job named "submit" (422)."""
    raise HTTPException(405, "only POST is allowed on /api/v1/jobs/submit", headers={"Allow": "POST"})


def _place(ctx: Context, job_id: int, cpus: int) -> Literal["PENDING", "RUNNING"]:
    """Try to start the job now; if Redis fails here the job is stored and the heartbeats place it."""
    try:
        placement.place(ctx.connection, ctx.rq_connection, needs=cpus)
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
                for item in _strings(key, loc) + _strings(inner, (*loc, printable(key)))]
    return []


@router.get("/jobs", response_model=list[JobView], operation_id="list_jobs")
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


@router.get("/jobs/{job_id}", response_model=JobView, operation_id="get_job",
                 responses={404: {"model": Problem}})
def get_job(job_id: JobId, ctx: Ctx) -> dict[str, Any]:
    """One job (``123_7``: task 7 of array 123): state, placement, resources, exit code and
    timestamps; a PENDING one says why it waits."""
    return partitions.annotate(ctx.connection, [_job_or_404(ctx, job_id)])[0]


def _job_or_404(ctx: Context, job_id: str) -> dict[str, Any]:
    number, task = workflow.parse_job_ref(job_id)
    found = jobs.get_named(ctx.connection, number, task)
    if found is None:
        raise HTTPException(404, f"job {job_id} does not exist" + (
            " (or the task is not materialised yet: it waits in the array's pending part)" if task is not None
            else jobs.why_missing(ctx.connection, number)))
    return found


@router.post(
    "/jobs/{job_id}/cancel", response_model=Cancelled, operation_id="cancel_job",
    responses={404: {"model": Problem}, 409: {"model": Problem, "description": "the job has already ended"}},
)
def cancel_job(job_id: JobId, ctx: Ctx) -> Cancelled:
    """Cancel a PENDING job at once, or tell a RUNNING job's worker to stop every process of it.

    As scancel: a job array's id cancels the whole array (the part not yet materialised at once,
    atomically, then each task), ``<array id>_<index>`` one task, materialised or not.
    """
    number, task = workflow.parse_job_ref(job_id)
    whole_array = task is None and bool(ctx.connection.exists(keys.array(number)))
    answers = jobs.cancel_named(ctx.connection, number, task)
    if answers == ["missing"]:
        raise HTTPException(404, f"job {job_id} does not exist")
    if len(answers) == 1 and answers[0].startswith("final:"):
        raise HTTPException(409, f"job {job_id} has already ended ({answers[0].split(':', 1)[1]}); "
                                 "only PENDING or RUNNING jobs can be cancelled")
    done = all(answer == "cancelled" for answer in answers)
    state = JobState.CANCELLED if done else JobState.RUNNING
    if whole_array:
        stopping = sum(answer == "signalled" for answer in answers)
        return Cancelled(job_id=number, state=state, array_job_id=number, detail=(
            f"job array {number} cancelled: no task not yet materialised will start"
            + (f"; {stopping} running task(s) are being stopped by their workers and end CANCELLED within seconds"
               if stopping else "")))
    view = jobs.get_named(ctx.connection, number, task)
    own_id = view["id"] if view else number
    label = f"job {job_id}" if task is None else f"task {job_id} (job {own_id})" if view else f"task {job_id}"
    if done:
        return Cancelled(job_id=own_id, state=state, array_job_id=number if task is not None else None,
                         array_task_id=task, detail=f"{label} cancelled")
    worker = view["worker"] if view else None
    return Cancelled(job_id=own_id, state=state, array_job_id=number if task is not None else None,
                     array_task_id=task,
                     detail=f"cancel requested: worker {worker} is stopping every process of {label}; "
                            "it ends CANCELLED within seconds")


OUTPUT_HEADERS = {
    "X-Next-Offset": {"description": "the offset to ask for next", "schema": {"type": "integer"}},
    "X-Output-Size": {"description": "bytes in the output file now", "schema": {"type": "integer"}},
    "X-Job-State": {"description": "the job's state when the output was read", "schema": {"type": "string"}},
    "X-Output-Complete": {"description": "true when the job has ended and every byte was sent",
                          "schema": {"type": "string", "enum": ["true", "false"]}},
}


@router.get(
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
    path = runner.output_file(ctx.settings.job_root, job["id"], job.get("array_job_id"), job.get("array_task_id"))
    try:
        data, size = _read_chunk(path, offset, limit)
    except FileNotFoundError:
        _explain_missing_output(ctx.settings, job, path)
        data, size = b"", 0
    except OSError as error:  # not Redis: say which file and why, instead of a bare 500
        raise HTTPException(500, f"cannot read the output of job {job['id']} at {path}: {error}") from None
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
