"""The ``conductor`` command: the node's entrypoints and a Slurm-like job client.

The client talks to Redis directly, as ``rq info`` does, so it works without the HTTP API.
Exit status 2 means bad input (configuration, job spec); 1 means the system could not do it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .startup import loading

with loading():  # see conductor.startup: most of a command's run time is this
    import click
    from pydantic import ValidationError

    from . import jobs, nodestate, render, resources, squeue, workflow
    from . import partitions as partitions_module
    from .config import ConfigError, Settings, load_settings
    from .jobs import JobRejected, JobState, JobSubmission
    from .store import UNREACHABLE, NotReplicated, connect, redacted
    from .units import format_memory

if TYPE_CHECKING:
    from redis import Redis

# Each command imports what only it needs (the worker loop, RQ, the log sinks) where it runs: a
# worker process then keeps no command-line code it never uses, and `conductor submit`, `jobs`,
# `show` or `nodes` do not pay for importing a worker's modules on every call.

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """An error printed as ``conductor: error: ...`` with a chosen exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.exit_code = status

    def show(self, file: Any = None) -> None:
        for line in self.message.splitlines():
            click.echo(f"conductor: error: {line}", err=True)


def with_settings(command: F) -> F:
    """Add ``--config`` and pass the loaded :class:`Settings`, turning every failure into a clear message."""

    @click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False),
                  help="app.properties to read (default: $CONDUCTOR_CONFIG, ./app.properties, /etc/conductor/app.properties)")
    @wraps(command)
    def wrapper(config: Path | None, **kwargs: Any) -> Any:
        try:
            settings = load_settings(config)
        except ConfigError as error:
            raise Failure(str(error), 2) from None
        try:
            return command(settings, **kwargs)
        except JobRejected as error:
            raise Failure(str(error), 2) from None
        except NotReplicated as error:
            raise Failure(str(error)) from None
        except UNREACHABLE as error:
            raise Failure(f"cannot reach Redis at {redacted(settings.redis_url)}: {error}") from None
        except OSError as error:  # a local fault, named as such (not blamed on Redis)
            raise Failure(f"{error.filename}: {error.strerror}" if error.filename else str(error)) from None

    return wrapper  # type: ignore[return-value]


def _connections(settings: Settings) -> tuple[Redis, Redis]:
    return connect(settings), connect(settings, decode=False)


def _emit(data: Any, as_json: bool, table: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else table(data))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conductor")
def main() -> None:
    """Run N concurrent batch workers per compute node, and submit and watch their jobs."""


@main.command()
@click.option("--cluster", is_flag=True, help="also check the live cluster's invariants (read-only)")
@click.option("--json", "as_json", is_flag=True, help="with --cluster: the violations as JSON")
@with_settings
def check(settings: Settings, cluster: bool, as_json: bool) -> None:
    """Validate app.properties and print the effective configuration; --cluster checks the books."""
    if cluster:
        from .invariants import cluster_violations

        violations = cluster_violations(connect(settings))
        if as_json:
            click.echo(json.dumps({"ok": not violations, "violations": violations}, indent=2))
        else:
            click.echo("\n".join(violations) if violations else "cluster invariants hold")
        if violations:
            raise SystemExit(1)
        return
    click.echo(f"# configuration: {settings.config_path or '(no file: defaults and environment)'}")
    for key, value in settings.describe().items():
        click.echo(f"{key}={value}")
    for warning in settings.warnings():
        click.echo(f"# warning: {warning}", err=True)


@main.command("worker")
@click.option("--index", type=click.IntRange(min=1), required=True, help="this instance's number, 1..WORKER_CONCURRENCY")
@with_settings
def worker_command(settings: Settings, index: int) -> None:
    """Run one worker instance (what supervisord and systemd start, once per index)."""
    with loading():
        from . import worker
        from .logs import setup as setup_logs

    setup_logs(settings.log_level, settings.log_file, f"Worker-{index}")
    try:
        status = worker.run(settings, index)
    except worker.WorkerStartError as error:
        raise Failure(str(error), error.status) from None
    sys.exit(status)


@main.command("api")
@with_settings
def api_command(settings: Settings) -> None:
    """Serve the HTTP API on API_HOST:API_PORT."""
    with loading():
        from .api import serve
        from .logs import setup as setup_logs

    setup_logs(settings.log_level, settings.log_file, "API")
    serve(settings)


@main.command("render")
@click.argument("target", type=click.Choice(sorted(render.EXPORTERS)))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="directory to write into")
@with_settings
def render_command(settings: Settings, target: str, out: Path) -> None:
    """Write the supervisord or systemd files for WORKER_CONCURRENCY workers."""
    for path, changed in render.write(render.EXPORTERS[target](settings).files(), out):
        click.echo(f"{'wrote' if changed else 'unchanged'} {path}")


@main.command()
@click.argument("script", type=click.File("r"))
@click.option("--name", "-J", default=None, help="job name (default: the script's file name)")
@click.option("--account", "-A", default="default", show_default=True)
@click.option("--partition", "-p", default="default", show_default=True)
@click.option("--ntasks-per-node", type=int, default=1, show_default=True)
@click.option("--cpus-per-task", "-c", type=int, default=1, show_default=True)
@click.option("--mem", default="0", help="memory per node, e.g. 512M or 8G (default: not accounted)")
@click.option("--time-limit", "-t", default=None, help="minutes, or [D-]HH:MM:SS")
@click.option("--requeue", is_flag=True, help="run the job again once if its worker dies")
@click.option("--env", "environment", multiple=True, metavar="NAME=VALUE", help="set a variable for the job (repeatable)")
@click.option("--array", "-a", default=None, metavar="INDICES",
              help="a job array: 0-999, 1,3,5, 0-15:4, with %N to run at most N tasks at once")
@click.option("--dependency", "-d", default=None, metavar="LIST",
              help="start only after other jobs: afterok:ID[:ID...], after[:ID+MINUTES], afterany, afternotok, singleton; "
                   "',' = all, '?' = any")
@with_settings
def submit(settings: Settings, script: Any, name: str | None, account: str, partition: str,
           ntasks_per_node: int, cpus_per_task: int, mem: str, time_limit: str | None,
           requeue: bool, environment: tuple[str, ...], dependency: str | None, array: str | None) -> None:
    """Submit SCRIPT (a file, or - for stdin) as a batch job; prints the job id."""
    with loading():
        from . import placement

    body = {
        "job": {
            "name": name or (Path(script.name).name if script.name != "<stdin>" else "stdin"),
            "account": account,
            "partition": partition,
            "ntasks_per_node": ntasks_per_node,
            "cpus_per_task": cpus_per_task,
            "memory_per_node": mem,
            "time_limit": time_limit,
            "environment": dict(_pair(item) for item in environment),
            "requeue": requeue,
            "dependency": dependency,
            "array": array,
        },
        "script": _read_script(script),
    }
    try:
        submission = JobSubmission.model_validate(body)
    except ValidationError as error:
        raise Failure("\n".join(_describe(e) for e in error.errors()), 2) from None
    connection, rq_connection = _connections(settings)
    job_id = partitions_module.submit(connection, submission, settings.allow_unknown_partitions,
                                      settings.max_array_size, settings.kill_invalid_depend)
    placement.place(connection, rq_connection, needs=submission.job.cpus)
    click.echo(job_id)


def _read_script(script: Any) -> str:
    try:
        return script.read()
    except UnicodeDecodeError as error:
        raise Failure(f"{script.name}: the script is not UTF-8 text ({error.reason} at byte {error.start})", 2) from None


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise Failure(f"--env {item!r}: expected NAME=VALUE", 2)
    return name, value


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@with_settings
def show(settings: Settings, job_id: str, as_json: bool) -> None:
    """Show one job; ID_N shows task N of job array ID."""
    connection = connect(settings)
    job = jobs.get_named(connection, *_job_ref(job_id))
    if job is None:
        number, task = _job_ref(job_id)
        why = " (or the task is not materialised yet)" if task is not None else jobs.why_missing(connection, number)
        raise Failure(f"job {job_id} does not exist{why}")
    job = partitions_module.annotate(connection, [job])[0]
    _emit(job, as_json, lambda j: "\n".join(f"{k:>16}: {'' if v is None else v}" for k, v in j.items()))


@main.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState], case_sensitive=False))
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--format", "-o", "format_", metavar="FORMAT",
              help=f"squeue's %-fields, e.g. '{squeue.DEFAULT}'")
@with_settings
def jobs_command(settings: Settings, state: str | None, limit: int, as_json: bool, format_: str | None) -> None:
    """List jobs, newest first; PENDING ones with the reason they wait, and the part of each job
    array not yet materialised as squeue shows it (``123_[5-999%16]``)."""
    if format_ is not None:
        try:
            squeue.parse(format_)
        except ValueError as error:
            raise Failure(str(error), 2) from None
    connection = connect(settings)
    found = partitions_module.annotate(connection, jobs.list_jobs(connection, JobState(state.upper()) if state else None, limit))
    if as_json:
        _emit(found, as_json, _jobs_table)
        return
    if state in (None, "PENDING", "pending"):
        found = _array_remainders(connection, found) + found
    if format_ is not None:
        click.echo(squeue.render(format_, found))
        return
    _emit(found, as_json, _jobs_table)


def _array_remainders(connection: Redis, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One PENDING row per array listed with a part not yet materialised, ``123_[5-999%16]`` as
    squeue shows it (array job id and, as the task id, the indices in brackets), waiting with
    reason JobArrayTaskLimit while its %N limit is reached, else for what its next task waits."""
    arrays = sorted({j["array_job_id"] for j in found if j.get("array_job_id")}, reverse=True)
    rest = jobs.array_remainders(connection, arrays)
    at_limit = jobs.arrays_at_limit(connection, list(rest))
    template = {j["array_job_id"]: j for j in found if j.get("array_job_id")}
    waiting = {j["array_job_id"]: j["pending_reason"] for j in found
               if j.get("array_job_id") and j["state"] == "PENDING"}
    return [{**template[a], "id": f"{a}_[{text}]", "array_job_id": a, "array_task_id": f"[{text}]",
             "state": "PENDING", "node": None, "worker": None, "exit_code": None, "reason": None,
             "pending_reason": "JobArrayTaskLimit" if a in at_limit else waiting.get(a),
             "started_at": None, "ended_at": None}
            for a, text in rest.items()]


def _jobs_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["JOBID", "NAME", "ACCOUNT", "STATE", "CPUS", "MEM", "NODE", "WORKER", "EXIT", "REASON"],
        [[_job_label(j), j["name"], j["account"], j["state"], j["cpus"], format_memory(j["memory"] or 0),
          j["node"], j["worker"], j["exit_code"], j.get("pending_reason") or j["reason"]] for j in rows],
    )


def _job_label(job: dict[str, Any]) -> Any:
    """An array task as squeue shows it, ``<array job id>_<task index>``; other jobs by id."""
    if job.get("array_job_id") is not None and job.get("array_task_id") is not None:
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return job["id"]


@main.command()
@click.argument("job_id")
@with_settings
def cancel(settings: Settings, job_id: str) -> None:
    """Cancel a PENDING or RUNNING job (every process of a running one is stopped); ID_N cancels
    one task of a job array, the array's id all of it."""
    number, task = _job_ref(job_id)
    answers = jobs.cancel_named(connect(settings), number, task)
    if answers == ["missing"]:
        raise Failure(f"job {job_id} does not exist")
    if len(answers) == 1 and answers[0].startswith("final:"):
        raise Failure(f"job {job_id} has already ended ({answers[0].split(':', 1)[1]})")
    click.echo(f"job {job_id}: {'cancelled' if all(a == 'cancelled' for a in answers) else 'cancel requested'}")


def _job_ref(text: str) -> tuple[int, int | None]:
    try:
        return workflow.parse_job_ref(text)
    except ValueError as error:
        raise Failure(str(error), 2) from None


@main.command("workers")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@with_settings
def workers_command(settings: Settings, as_json: bool) -> None:
    """List live workers."""
    from . import registry

    _emit(registry.workers(connect(settings)), as_json, lambda rows: _table(
        ["NAME", "NODE", "INDEX", "PID", "HOST", "STATE", "JOB", "LAST HEARTBEAT"],
        [[w["name"], w["node"], w["index"], w["pid"], w["host"], w["state"], w["job"], w["last_heartbeat"]]
         for w in rows]))


@main.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@with_settings
def nodes_command(settings: Settings, as_json: bool) -> None:
    """List nodes with their CPUs, memory and workers."""
    _emit(resources.nodes(connect(settings)), as_json, _nodes_table)


def _nodes_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["NODE", "STATE", "CPUS(A/T)", "FREE", "MEM(A/T)", "WORKERS", "BUSY", "PARTITIONS", "CONTAINMENT", "REASON"],
        [[n["name"], n["state"], f"{n['allocated_cpus']}/{n['total_cpus']}", n["free_cpus"],
          f"{format_memory(n['allocated_memory'])}/{format_memory(n['total_memory'])}",
          n["workers"], n["busy_workers"], ",".join(n["partitions"]) or "*", n["containment"],
          f"{n['reason']} ({n['drained_by']}, {(n['drained_at'] or '')[:19]})" if n["reason"] else ""] for n in rows],
    )


def _who() -> str:
    """``user@host`` of the operator, recorded with a drain as Slurm records it."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@main.command()
@click.argument("node")
@click.option("--reason", required=True, help="why (shown by `conductor nodes`), as scontrol's Reason=")
@with_settings
def drain(settings: Settings, node: str, reason: str) -> None:
    """Take NODE out of service: it gets no new jobs; its running jobs finish normally."""
    if not reason.strip():
        raise Failure("--reason: must not be empty", 2)
    connection = connect(settings)
    try:
        nodestate.drain(connection, node, reason.strip(), _who())
    except nodestate.UnknownNode as error:
        raise Failure(str(error), 2) from None
    view = next(n for n in resources.nodes(connection) if n["name"] == node)
    click.echo(f"node {node}: {view['state']} ({reason.strip()})")


@main.command()
@click.argument("node")
@with_settings
def resume(settings: Settings, node: str) -> None:
    """Return a drained NODE to service."""
    from . import placement

    connection, rq_connection = _connections(settings)
    try:
        was_drained = nodestate.resume(connection, node)
    except nodestate.UnknownNode as error:
        raise Failure(str(error), 2) from None
    placement.place(connection, rq_connection)
    view = next(n for n in resources.nodes(connection) if n["name"] == node)
    click.echo(f"node {node}: {view['state']}{'' if was_drained else ' (was not drained)'}")


@main.command("partitions")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@with_settings
def partitions_command(settings: Settings, as_json: bool) -> None:
    """Partitions with their nodes by state and CPUs allocated/idle/total (as sinfo -s)."""
    _emit(partitions_module.summary(connect(settings)), as_json, lambda rows: _table(
        ["PARTITION", "NODES", "STATES", "CPUS(A/I/T)", "NODELIST"],
        [[p["name"], p["nodes"], " ".join(f"{k.lower()}:{v}" for k, v in sorted(p["states"].items())),
          f"{p['allocated_cpus']}/{p['free_cpus']}/{p['total_cpus']}", ",".join(p["node_names"])] for p in rows]))


@main.command()
@click.option("--since", help="jobs that ended since: a date (2026-12-01), a time, or an age (12h, 7d)")
@click.option("--state", type=click.Choice([s.value for s in JobState if s.final], case_sensitive=False))
@click.option("--account", "-A", help="only this account's jobs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (sacct's field names)")
@with_settings
def history(settings: Settings, since: str | None, state: str | None, account: str | None, as_json: bool) -> None:
    """Ended jobs, as sacct: those still in Redis and those expired into ACCOUNTING_FILE."""
    from . import accounting, retention

    found: dict[int, dict[str, Any]] = {}
    try:
        moment = accounting.parse_since(since) if since else None
        if settings.accounting_file is None:
            click.echo("conductor: warning: ACCOUNTING_FILE is not set: jobs expired from Redis are not listed", err=True)
        else:
            found.update(accounting.load(settings.accounting_file))
    except ValueError as error:
        raise Failure(str(error), 2) from None
    except OSError as error:
        raise Failure(f"cannot read {settings.accounting_file}: {error}") from None
    try:
        connection = connect(settings)
        for final in ([JobState(state.upper())] if state else [s for s in JobState if s.final]):
            for job in jobs.list_jobs(connection, final, limit=settings.max_job_records + retention.BATCH):
                found[job["id"]] = accounting.record(job)
    except UNREACHABLE as error:
        click.echo(f"conductor: warning: Redis at {redacted(settings.redis_url)} is unreachable ({error}): "
                   "listing ACCOUNTING_FILE only", err=True)
    rows = accounting.select(found.values(), moment, state.upper() if state else None, account)
    _emit(rows, as_json, lambda found: _table(
        ["JobID", "JobName", "Account", "Partition", "AllocCPUS", "State", "ExitCode", "Elapsed", "NodeList"],
        [[r["JobID"], r["JobName"], r["Account"], r["Partition"], r["AllocCPUS"], r["State"], r["ExitCode"],
          r["Elapsed"], r["NodeList"]] for r in found]))


@main.command()
@click.argument("job_ids", nargs=-1)
@click.option("--interval", type=float, default=0.5, show_default=True, help="seconds between refreshes")
@with_settings
def watch(settings: Settings, job_ids: tuple[str, ...], interval: float) -> None:
    """Show jobs and nodes live until the given jobs (default: all running and pending) have ended."""
    connection = connect(settings)
    named = [_job_ref(text) for text in job_ids]
    shown = ""
    while True:
        rows = [j for j in (jobs.get_named(connection, *ref) for ref in named) if j] if named else (
            jobs.list_jobs(connection, JobState.RUNNING) + jobs.list_jobs(connection, JobState.PENDING))
        screen = "\n".join([_jobs_table(rows), "", _nodes_table(resources.nodes(connection))])
        if sys.stdout.isatty():
            click.clear()
            click.echo(f"{time.strftime('%H:%M:%S')}\n{screen}")
        elif screen != shown:  # a log or a pipe gets each change once
            click.echo(f"{time.strftime('%H:%M:%S')}\n{screen}\n")
        shown = screen
        if all(JobState(j["state"]).final for j in rows):
            return
        time.sleep(interval)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


@main.command("prepare-cgroups")
@with_settings
def prepare_cgroups(settings: Settings) -> None:
    """As root: give each worker of this node a cgroup subtree owned by SERVICE_USER (job containment)."""
    from . import cgroups

    if os.geteuid() != 0:
        raise Failure("prepare-cgroups must run as root (it creates cgroups owned by SERVICE_USER)")
    try:
        made = cgroups.prepare(settings.cgroup_parent, [settings.worker_name(i) for i in
                                                        range(1, settings.worker_concurrency + 1)],
                               settings.service_user)
    except (OSError, KeyError, cgroups.ContainmentError) as error:
        raise Failure(f"cannot prepare job cgroups: {error}") from None
    click.echo(f"prepared {len(made)} cgroup directories below {settings.cgroup_parent} for "
               f"{settings.worker_concurrency} workers owned by {settings.service_user}")


@main.command("apply")
@click.option("--mode", type=click.Choice(["systemd", "supervisord"]), required=True,
              help="systemd units, or supervisord programs")
@click.option("--local", "local", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="(supervisord) a node of your own in DIR: its private supervisord (DIR/supervisord.conf), "
                   "programs in DIR/conf.d, the configuration used where it is (what `make run` uses)")
@click.option("--check", is_flag=True, help="change nothing; report what would change")
@click.option("--json", "as_json", is_flag=True, help="print {changed, started, stopped, restarted} as JSON")
@with_settings
def apply_command(settings: Settings, mode: str, local: Path | None, check: bool, as_json: bool) -> None:
    """Bring this host to what app.properties says: user, directories, units or programs, instances."""
    from .converge import Converger, Layout
    from .hostops import HostError

    if local is not None and mode != "supervisord":
        raise Failure("--local works with --mode supervisord only", 2)
    if local is not None and settings.config_path is None:
        raise Failure("--local needs a configuration file (--config)", 2)
    layout = Layout.local(local, settings.config_path) if local else Layout.system()  # type: ignore[arg-type]
    say = (lambda line: click.echo(f"apply: {line}", err=True)) if as_json else (lambda line: click.echo(f"apply: {line}"))
    try:
        report = Converger(settings, mode, layout, check=check, say=say).run()
    except HostError as error:
        raise Failure(str(error), 2) from None
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    verb = "would " if check else ""
    for key, items in report.as_dict().items():
        if items:
            click.echo(f"apply: {verb}{'change' if key == 'changed' and check else key}: {', '.join(items)}")
    if not report.anything:
        click.echo("apply: nothing to change")


@main.command("verify")
@click.option("--mode", type=click.Choice(["systemd", "supervisord"]), default=None,
              help="default: systemd when conductor-workers.target is installed, else supervisord")
@click.option("--local", "local", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="the DIR given to `apply --local`")
@click.option("--expect", type=click.IntRange(min=0), default=None, help="worker count (default WORKER_CONCURRENCY)")
@click.option("--timeout", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="seconds to keep looking until the node is right")
@click.option("--json", "as_json", is_flag=True, help="print {ok, problems, workers} as JSON")
@with_settings
def verify_command(settings: Settings, mode: str | None, local: Path | None, expect: int | None,
                   timeout: float, as_json: bool) -> None:
    """Check that the node runs what app.properties says; exit 1 naming every problem."""
    from . import verify
    from .converge import TARGET, UNIT_DIR

    if mode is None:
        mode = "systemd" if local is None and (UNIT_DIR / TARGET).exists() else "supervisord"
    conf = local.resolve() / "supervisord.conf" if local else None
    findings = verify.wait(settings, mode, expect, timeout, conf)
    count = settings.worker_concurrency if expect is None else expect
    if as_json:
        click.echo(json.dumps(findings.as_dict()))
    elif not findings.problems:
        click.echo(f"verify: all {count} workers of node {settings.node_name} run and are registered ({mode})")
    if findings.problems:
        raise Failure("\n".join(findings.problems), 1)
