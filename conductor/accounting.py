"""Job history: the final fields of every ended job, one JSON object per line, in sacct's names.

Records in Redis expire (see :mod:`conductor.retention`); before one does, its line is appended
to ACCOUNTING_FILE, so the history outlives Redis's bounded memory. Each write opens the file in
append mode and closes it again, so logrotate may move the file at any time (no copytruncate
needed) and a line is one write, never interleaved with another process's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .units import format_memory

FIELDS = ("JobID", "JobName", "Account", "Partition", "AllocCPUS", "ReqMem", "State", "ExitCode",
          "Submit", "Start", "End", "Elapsed", "NodeList", "MaxRSS", "Worker")


def elapsed(seconds: float | None) -> str:
    """sacct's ``[D-]HH:MM:SS``."""
    if seconds is None:
        return "00:00:00"
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def _moment(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def record(job: dict[str, Any]) -> dict[str, Any]:
    """The accounting line of an ended job's view (:func:`conductor.jobs.view`)."""
    start, end = _moment(job["started_at"]), _moment(job["ended_at"])
    code = job["exit_code"]
    # sacct's ExitCode is "status:signal"; conductor records 128+N for a job killed by signal N.
    exit_code = "0:0" if code is None else (f"0:{code - 128}" if code > 128 and job["state"] != "COMPLETED"
                                            and (job["reason"] or "").startswith("killed by") else f"{code}:0")
    return {
        "JobID": job["id"],
        "JobName": job["name"],
        "Account": job["account"],
        "Partition": job["partition"],
        "AllocCPUS": job["cpus"],
        "ReqMem": format_memory(job["memory"] or 0),
        "State": job["state"],
        "ExitCode": exit_code,
        "Submit": job["submitted_at"],
        "Start": job["started_at"],
        "End": job["ended_at"],
        "Elapsed": elapsed((end - start).total_seconds() if start and end else None),
        "NodeList": job["node"],
        # Peak memory where the job was contained (bytes), empty as in sacct where it was not measured.
        "MaxRSS": "" if job.get("max_rss") is None else job["max_rss"],
        "Worker": job["worker"],
        "Reason": job["reason"],
    }


def append(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Append ``records`` to ``path`` (created 0640 with its directory); returns how many were written.

    Written and synced before the caller deletes the records from Redis: a crash in between
    duplicates a line (readers keep the last line per JobID), never loses one.
    """
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    if not data:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return data.count("\n")


def read(path: Path, since: datetime | None = None, state: str | None = None,
         account: str | None = None) -> list[dict[str, Any]]:
    """Lines of ``path`` (and of its rotated copy ``path.1``, read first) that match, by JobID."""
    return select(load(path).values(), since, state, account)


def load(path: Path) -> dict[int, dict[str, Any]]:
    """Every line of ``path.1`` then ``path`` by JobID (the last line of a JobID wins)."""
    found: dict[int, dict[str, Any]] = {}
    for source in (path.with_name(path.name + ".1"), path):
        if not source.exists():
            continue
        with source.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{source}:{number}: not a JSON line ({error.msg})") from None
                found[int(item["JobID"])] = item
    return found


def select(items: Iterable[dict[str, Any]], since: datetime | None = None, state: str | None = None,
           account: str | None = None) -> list[dict[str, Any]]:
    """The accounting lines that match, by JobID."""
    rows = []
    for item in sorted(items, key=lambda r: int(r["JobID"])):
        if state and item["State"] != state:
            continue
        if account and item["Account"] != account:
            continue
        if since and (not item["End"] or datetime.fromisoformat(item["End"]) < since):
            continue
        rows.append(item)
    return rows


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age such as 2h or 7d."""
    from .units import parse_duration

    moment = now or datetime.now(tz=UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.fromtimestamp(moment.timestamp() - parse_duration(text), tz=UTC)
        except ValueError:
            raise ValueError(f"--since {text!r}: expected a date such as 2026-12-01, a time such as "
                             "2026-12-01T08:00, or an age such as 12h or 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
