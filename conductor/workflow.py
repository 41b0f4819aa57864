"""Parsers of sbatch's workflow options: ``--dependency`` (and the array task ids it may name).

Pure functions, no Redis: the grammar of sbatch's manual, checked here once, so the CLI and the
HTTP API refuse the same input with the same message. The Lua scripts read only the normalised
form these functions return (``afterok:5:6,afterany:7`` or ``afterok:5?afternotok:6``), never
what the user typed.

Grammar (sbatch(1), ``--dependency=<dependency_list>``)::

    dependency_list := condition (("," condition)* | ("?" condition)*)   # "," all, "?" any; never mixed
    condition       := "singleton" | type (":" job_id)+
    type            := "after" | "afterany" | "afterok" | "afternotok"
    job_id          := digits | digits "_" digits                      # a job, or one task of an array
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("after", "afterany", "afterok", "afternotok")
UNSUPPORTED = ("aftercorr", "afterburstbuffer")
_JOB_ID = re.compile(r"([1-9][0-9]{0,17})(?:_(0|[1-9][0-9]{0,8}))?")


class DependencyError(ValueError):
    """A ``--dependency`` value outside the grammar; the message names the offending part."""


@dataclass(frozen=True)
class Condition:
    """One condition: ``kind`` on every one of ``job_ids`` (each "123" or "123_7"), or singleton."""

    kind: str
    job_ids: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ":".join((self.kind, *self.job_ids))


@dataclass(frozen=True)
class Dependency:
    """A parsed ``--dependency``: all conditions must hold (``any_of`` False) or one of them."""

    conditions: tuple[Condition, ...]
    any_of: bool = False

    def __str__(self) -> str:
        return ("?" if self.any_of else ",").join(str(c) for c in self.conditions)

    def job_ids(self) -> list[int]:
        """The jobs (array tasks: their array job) named, each once, in order of appearance."""
        seen: dict[int, None] = {}
        for condition in self.conditions:
            for job_id in condition.job_ids:
                seen[int(job_id.partition("_")[0])] = None
        return list(seen)


def parse_dependency(text: str) -> Dependency:
    """``text`` as sbatch's ``--dependency`` grammar, or :class:`DependencyError` saying why not."""
    text = text.strip()
    if not text:
        raise DependencyError("empty dependency list")
    if "," in text and "?" in text:
        raise DependencyError("',' (all of) and '?' (any of) cannot be mixed in one dependency list")
    any_of = "?" in text
    conditions = []
    for part in text.split("?" if any_of else ","):
        conditions.append(_condition(part))
    return Dependency(tuple(conditions), any_of)


def _condition(part: str) -> Condition:
    if part == "singleton":
        return Condition("singleton")
    kind, _, rest = part.partition(":")
    if kind in UNSUPPORTED:
        raise DependencyError(f"{kind!r} is not supported (use after, afterany, afterok, afternotok or singleton)")
    if kind not in KINDS:
        raise DependencyError(f"{part!r}: unknown dependency type {kind!r} "
                              "(expected after, afterany, afterok, afternotok or singleton)")
    if not rest:
        raise DependencyError(f"{part!r}: {kind} needs at least one job id ({kind}:<job_id>[:<job_id>...])")
    job_ids = []
    for job_id in rest.split(":"):
        if "+" in job_id:
            raise DependencyError(f"{part!r}: a delay (+time) after a job id is not supported")
        match = _JOB_ID.fullmatch(job_id)
        if not match:
            raise DependencyError(f"{part!r}: {job_id!r} is not a job id (123, or 123_7 for an array task)")
        job_ids.append(job_id)
    return Condition(kind, tuple(job_ids))
