"""A node-local spool for the ends of jobs that Redis could not take.

A job's end is written here before it is sent to Redis and removed once Redis took it. When Redis
is gone, the file stays (flushed to disk), so a worker told to stop can leave within its stop
timeout without losing the outcome: any worker of the node replays what a gone worker left here,
at its start and on its heartbeat, as soon as Redis answers again. The finish script is
idempotent and checks ownership, so a record replayed twice still settles its job once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loguru import logger
from redis import Redis

from . import procs, scripts
from .config import Settings


def directory(settings: Settings) -> Path:
    """The spool lives in the worker's state directory, next to the job directories (which are
    named by number only, so the name cannot collide); only the service user may read it."""
    return settings.job_root / ".spool"


def write(settings: Settings, job_id: int, args: list[object], sync: bool = False) -> Path:
    """Keep the finish script's ``args`` for job ``job_id``; ``sync`` flushes it to the disk."""
    pid = os.getpid()
    path = directory(settings) / f"{job_id}-{pid}.json"
    partial = path.with_suffix(".partial")
    record = {"args": args, "pid": pid, "pid_start": procs.start_ticks(pid), "boot": procs.BOOT}
    with open(partial, "w") as handle:
        json.dump(record, handle)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    partial.replace(path)
    if sync:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def replay(connection: Redis, settings: Settings) -> int:
    """Send Redis the ends spooled by workers of this node that are gone; returns how many.

    A record of a live writer is left to that writer (it is still trying itself).
    """
    spool = directory(settings)
    try:
        paths = sorted(spool.glob("*.json"))
    except FileNotFoundError:
        return 0
    done = 0
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # taken by a sibling meanwhile
        except ValueError as error:
            logger.error("spooled job end {} is unreadable ({}); kept for inspection", path, error)
            continue
        if record.get("boot") == procs.BOOT and procs.is_running(int(record["pid"]), record.get("pid_start")):
            continue
        args = record["args"]
        settled = scripts.run(connection, "finish", *args)
        path.unlink(missing_ok=True)
        done += 1
        logger.info("replayed the spooled end of job {} ({}): {}", args[0], args[1],
                    {1: "recorded", 2: "requeued"}.get(int(settled), "it had already been settled"))  # type: ignore[call-overload]
    return done
