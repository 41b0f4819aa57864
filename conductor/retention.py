"""Retention: ended jobs leave Redis after JOB_RETENTION, or sooner beyond MAX_JOB_RECORDS.

Slurm's MinJobAge and MaxJobCount, for the same reason: without them every job ever run stays
in Redis, whose memory then grows until it refuses writes and the whole cluster stops. The
cluster's maintenance (one worker at a time, under the same lease as the reaper) runs
:func:`expire`; each node removes the directories of its expired jobs itself
(:func:`remove_directories`), since JOB_ROOT is local to the node that ran them. A PENDING or
RUNNING job is never touched: only ids found in a final state's index are considered, and a
final state never changes.

A job array's own keys (its cursor, template and counters, and the dependents waiting for the
whole array) outlive its first task's record, which is the array's id: they go with the last
record of the array once every task has ended, so no task still to be materialised is lost and
months of arrays do not grow Redis.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from loguru import logger
from redis import Redis

from . import accounting, keys, scripts
from .config import Settings
from .jobs import VIEW_FIELDS, JobState, view

BATCH = 1000  # records looked at (and at most removed) per pass: bounded work per heartbeat
FINAL_STATES = tuple(state for state in JobState if state.final)


def expire(connection: Redis, settings: Settings) -> list[int]:
    """Remove the ended jobs past retention or over the cap, oldest first; returns their ids.

    Their accounting lines are appended to ACCOUNTING_FILE first, so nothing leaves Redis
    without a trace.
    """
    seconds, _ = connection.time()
    cutoff = seconds - settings.job_retention
    with connection.pipeline(transaction=False) as pipe:
        for state in FINAL_STATES:
            pipe.zrange(keys.state(state), 0, BATCH - 1)
            pipe.zcard(keys.state(state))
        replies = pipe.execute()
    ended_total = sum(replies[1::2])
    oldest = sorted((int(i) for ids in replies[::2] for i in ids))[:BATCH]
    over = max(ended_total - settings.max_job_records, 0)
    ends = _ended_at(connection, oldest)
    due = [job_id for position, (job_id, ended) in enumerate(zip(oldest, ends))
           if position < over or (ended and float(ended) < cutoff)]
    if not due:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for job_id in due:
            pipe.hmget(keys.job(job_id), VIEW_FIELDS)
        rows = pipe.execute()
    final = {s.value for s in FINAL_STATES}
    expired = [job for job in (view(dict(zip(VIEW_FIELDS, raw))) for raw in rows) if job["state"] in final]
    if not expired:
        return []
    if settings.accounting_file is not None:
        try:
            accounting.append(settings.accounting_file, (accounting.record(job) for job in expired))
        except OSError as error:  # keep the records: history must not lose what Redis forgets
            logger.error("retention: cannot append to ACCOUNTING_FILE {} ({}); {} expired job records are "
                         "kept until it can be written", settings.accounting_file, error, len(expired))
            return []
    # One Lua step removes the records and, with the last record of an array, the array's own keys;
    # it raises the watermark that keeps reconciliation from taking an expired record for a lost one.
    expire_script = scripts.script(connection, "expire")
    removed = [int(i) for i in expire_script(keys=[keys.EXPIRED_THROUGH], args=[job["id"] for job in expired])]
    if not removed:
        return []
    logger.info("retention: removed {} ended job records (ids {}..{})", len(removed), removed[0], removed[-1])
    return removed


def _ended_at(connection: Redis, ids: list[int]) -> list[str | None]:
    """When each of ``ids`` (jobs in a final state) ended, read from Redis once per connection.

    Every pass looks at the same oldest ended jobs until they are due (for JOB_RETENTION, 7 days
    by default), and a final job's end never changes: reading all of them again on every pass
    cost Redis up to BATCH commands per heartbeat interval. The connection remembers what it read
    for the ids of the last pass only (at most BATCH). Should a rolled-back Redis run a job again,
    its record may go by the first end, earlier than its second: never while it is unended, since
    the removal itself checks the state.
    """
    known: dict[int, str] = connection.__dict__.get("_conductor_ended_at", {})
    missing = [job_id for job_id in ids if job_id not in known]
    if missing:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in missing:
                pipe.hget(keys.job(job_id), "ended_at")
            read = dict(zip(missing, pipe.execute()))
    else:
        read = {}
    ends = [known.get(job_id) or read.get(job_id) for job_id in ids]
    connection.__dict__["_conductor_ended_at"] = {job_id: end for job_id, end in zip(ids, ends) if end}
    return ends


def _remove(directory: Path, empty: Callable[[Path], None] | None) -> None:
    try:
        shutil.rmtree(directory)
    except PermissionError:
        if empty is None:
            raise
        empty(directory)
        shutil.rmtree(directory)


def remove_directories(connection: Redis, job_root: Path, empty: Callable[[Path], None] | None = None) -> list[int]:
    """Remove ``JOB_ROOT/<id>`` directories whose job record no longer exists; returns their ids.

    ``empty`` removes, as the job's user, what the caller may not (jobs running as JOB_USER create
    subdirectories the worker cannot write); it is tried when removing a directory is refused.

    A job's directory is created by the worker that claimed it, while its record exists; a
    missing record therefore means an expired job, never one still to run.

    Only ids up to retention's watermark (:data:`keys.EXPIRED_THROUGH`, the highest id it removed)
    are asked about: a record above it has not been expired, so its directory stays without a
    look. Asking about every directory on every pass cost Redis one command per retained job
    per pass, over the whole of JOB_RETENTION; now a directory is asked about once it may be gone.
    """
    try:
        ids = sorted(int(entry.name) for entry in job_root.iterdir() if entry.name.isdigit() and entry.is_dir())
    except FileNotFoundError:
        return []
    if not ids:
        return []
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(keys.NEXT_JOB_ID)
        pipe.zscore(keys.EXPIRED_THROUGH, "id")
        last, through = pipe.execute()
    # An id above the counter belongs to another Redis (replaced, emptied): not ours to judge.
    ids = [job_id for job_id in ids if job_id <= min(int(last or 0), int(through or 0))]
    if not ids:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.exists(keys.job(job_id))
        present = pipe.execute()
    removed = []
    for job_id, exists in zip(ids, present):
        if exists:
            continue
        try:
            _remove(job_root / str(job_id), empty)
        except OSError as error:
            logger.error("retention: cannot remove {}: {}", job_root / str(job_id), error)
            continue
        removed.append(job_id)
    if removed:
        logger.info("retention: removed {} job directories of expired jobs", len(removed))
    return removed
