"""``conductor jobs --format``: squeue's ``%`` fields, so Slurm users' format strings carry over.

``%.18i`` right-justifies the job id in 18 columns, ``%-9P`` or ``%9P`` left-justifies the
partition; a value longer than its width is cut, as squeue does. Fields of squeue that have no
meaning here (user, QOS, ...) are refused with the list of those that exist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .units import format_memory

DEFAULT = "%.18i %.9P %.8j %.8a %.2t %.10M %.6D %R"
COMPACT = {"PENDING": "PD", "RUNNING": "R", "COMPLETED": "CD", "FAILED": "F", "CANCELLED": "CA",
           "TIMEOUT": "TO", "NODE_FAIL": "NF", "OUT_OF_MEMORY": "OOM"}
_SPEC = re.compile(r"%(\.?)(-?)(\d*)(.)")


def _seconds(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _used(job: dict[str, Any]) -> str:
    start = _seconds(job["started_at"])
    if start is None:
        return "0:00"
    end = _seconds(job["ended_at"]) or time.time()
    return _clock(end - start)


def _clock(seconds: float) -> str:
    """squeue's TIME: ``M:SS``, ``H:MM:SS`` or ``D-HH:MM:SS``."""
    days, rest = divmod(max(int(seconds), 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _limit(job: dict[str, Any]) -> str:
    return "UNLIMITED" if job["time_limit"] is None else _clock(job["time_limit"])


def _reason(job: dict[str, Any]) -> str:
    return job.get("pending_reason") or job["reason"] or "None"


def _nodelist_reason(job: dict[str, Any]) -> str:
    return f"({_reason(job)})" if job["state"] == "PENDING" else (job["node"] or "")


def _job_id(job: dict[str, Any]) -> Any:
    """squeue's %i: an array task as ``<array job id>_<task index>``, other jobs (and the part of an
    array not yet materialised, already spelled ``123_[5-999%16]``) by id."""
    if job.get("array_job_id") is not None and job.get("array_task_id") is not None:
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return job["id"]


# %A is a job's own id; the part of an array not yet materialised (task id "[5-999%16]") has none
# of its own and shows the array's, as squeue shows the record that holds it.
FIELDS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "i": ("JOBID", _job_id),
    "A": ("JOBID", lambda j: j["array_job_id"] if isinstance(j.get("array_task_id"), str) else j["id"]),
    "F": ("ARRAY_JOB_ID", lambda j: j["id"] if j.get("array_job_id") is None else j["array_job_id"]),
    "K": ("ARRAY_TASK_ID", lambda j: "N/A" if j.get("array_task_id") is None else j["array_task_id"]),
    "j": ("NAME", lambda j: j["name"]),
    "P": ("PARTITION", lambda j: j["partition"]),
    "a": ("ACCOUNT", lambda j: j["account"]),
    "t": ("ST", lambda j: COMPACT.get(j["state"], j["state"])),
    "T": ("STATE", lambda j: j["state"]),
    "M": ("TIME", _used),
    "l": ("TIME_LIMIT", _limit),
    "D": ("NODES", lambda j: 1),
    "C": ("CPUS", lambda j: j["cpus"]),
    "m": ("MIN_MEMORY", lambda j: format_memory(j["memory"] or 0)),
    "N": ("NODELIST", lambda j: j["node"] or ""),
    "R": ("NODELIST(REASON)", _nodelist_reason),
    "r": ("REASON", _reason),
    "V": ("SUBMIT_TIME", lambda j: (j["submitted_at"] or "")[:19]),
    "S": ("START_TIME", lambda j: (j["started_at"] or "N/A")[:19]),
    "e": ("END_TIME", lambda j: (j["ended_at"] or "N/A")[:19]),
    "w": ("WORKER", lambda j: j["worker"] or ""),
}


def parse(spec: str) -> list[str | tuple[str, bool, int | None]]:
    """Literal text and (field letter, right-justified, width) items, or ValueError naming the bad one."""
    items: list[str | tuple[str, bool, int | None]] = []
    position = 0
    for match in _SPEC.finditer(spec):
        items.append(spec[position:match.start()])
        dot, _, width, letter = match.groups()
        if letter == "%":
            items.append("%")
        elif letter not in FIELDS:
            known = " ".join(f"%{k} ({v[0]})" for k, v in FIELDS.items())
            raise ValueError(f"--format: %{letter} is not a field conductor knows; known: {known}")
        else:
            items.append((letter, bool(dot), int(width) if width else None))
        position = match.end()
    items.append(spec[position:])
    return [item for item in items if item != ""]


def render(spec: str, rows: list[dict[str, Any]]) -> str:
    """The header and one line per job, as squeue prints them."""
    items = parse(spec)

    def line(values: Callable[[str], str]) -> str:
        parts = []
        for item in items:
            if isinstance(item, str):
                parts.append(item)
                continue
            letter, right, width = item
            text = values(letter)
            if width is not None:
                text = text[:width]
                text = text.rjust(width) if right else text.ljust(width)
            parts.append(text)
        return "".join(parts).rstrip()

    lines = [line(lambda letter: FIELDS[letter][0])]
    for job in rows:
        lines.append(line(lambda letter, j=job: "" if (v := FIELDS[letter][1](j)) is None else str(v)))
    return "\n".join(lines)
