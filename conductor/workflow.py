"""Parsers of sbatch's workflow options: ``--dependency`` (and the array task ids it may name).

Pure functions, no Redis: the grammar of sbatch's manual, checked here once, so the CLI and the
HTTP API refuse the same input with the same message. The Lua scripts read only the normalised
form these functions return (``afterok:5:6,afterany:7`` or ``afterok:5?afternotok:6``), never
what the user typed.

Grammar (sbatch(1), ``--dependency=<dependency_list>``)::

    dependency_list := condition (("," condition)* | ("?" condition)*)   # "," all, "?" any; never mixed
    condition       := "singleton" | "after" (":" job_id ["+" minutes])+ | type (":" job_id)+
    type            := "afterany" | "afterok" | "afternotok"
    job_id          := digits | digits "_" digits                      # a job, or one task of an array

``after:ID+time``: once job ID has started (or was cancelled) and ``time`` more minutes have passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("after", "afterany", "afterok", "afternotok")
UNSUPPORTED = ("aftercorr", "afterburstbuffer")
_JOB_ID = re.compile(r"([1-9][0-9]{0,17})(?:_(0|[1-9][0-9]{0,8}))?")
_MINUTES = re.compile(r"[0-9]{1,7}")  # after:ID+time, in minutes (at most about 19 years)


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
                seen[int(split_delay(job_id)[0].partition("_")[0])] = None
        return list(seen)


def split_delay(job_id: str) -> tuple[str, int]:
    """``"5+10"`` (after:5+10) as ("5", 10) minutes; ``"5"`` as ("5", 0)."""
    name, _, minutes = job_id.partition("+")
    return name, int(minutes or 0)


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
        name, plus, minutes = job_id.partition("+")
        if plus:
            if kind != "after":
                raise DependencyError(f"{part!r}: a delay (+time) is allowed only with after (after:<job_id>+<minutes>)")
            if not _MINUTES.fullmatch(minutes):
                raise DependencyError(f"{part!r}: {minutes!r} after '+' is not a number of minutes")
            minutes = str(int(minutes))
        match = _JOB_ID.fullmatch(name)
        if not match:
            raise DependencyError(f"{part!r}: {name!r} is not a job id (123, or 123_7 for an array task)")
        job_ids.append(name + (f"+{minutes}" if plus and int(minutes) else ""))
    return Condition(kind, tuple(job_ids))


JOB_REF_PATTERN = r"^[1-9][0-9]{0,17}(_(0|[1-9][0-9]{0,8}))?$"  # for request models: the same grammar as parse_job_ref


def parse_job_ref(text: str) -> tuple[int, int | None]:
    """A job as scancel and scontrol name it: ``123``, or ``123_7`` for task 7 of array 123.

    Returns (job id, task index or None), or ValueError saying what is expected. Python's ``int``
    would read ``123_7`` as 1237 (digit grouping), hence the grammar here.
    """
    match = _JOB_ID.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a job id (123, or 123_7 for one task of an array)")
    return int(match[1]), None if match[2] is None else int(match[2])


# --- job arrays (sbatch --array) ------------------------------------------------------------------

ARRAY_INDEX_BOUND = 4_000_001  # the syntax's own bound (Slurm's largest MaxArraySize); MAX_ARRAY_SIZE is the setting
_ARRAY_ITEM = re.compile(r"(0|[1-9][0-9]{0,8})(?:-(0|[1-9][0-9]{0,8})(?::([1-9][0-9]{0,8}))?)?")


class ArrayError(ValueError):
    """An ``--array`` value outside the grammar or over the size limit; the message says which part."""


@dataclass(frozen=True)
class ArraySpec:
    """A parsed ``--array``: task indices as ascending, disjoint arithmetic runs, and the ``%N`` limit.

    ``str()`` is the normalised form the Lua scripts iterate lazily (``start-end:step`` runs joined
    by ``,``, then ``%N``): a 10,000-task array is one short string, not 10,000 records.
    """

    runs: tuple[tuple[int, int, int], ...]
    limit: int = 0  # 0: no limit on tasks running at once

    def __str__(self) -> str:
        text = ",".join(f"{start}-{end}:{step}" for start, end, step in self.runs)
        return text + (f"%{self.limit}" if self.limit else "")

    def indices(self) -> list[int]:
        return [i for start, end, step in self.runs for i in range(start, end + 1, step)]

    @property
    def count(self) -> int:
        return sum((end - start) // step + 1 for start, end, step in self.runs)

    @property
    def step(self) -> int:
        """SLURM_ARRAY_TASK_STEP: the step of a single run, else 1."""
        return self.runs[0][2] if len(self.runs) == 1 else 1


def check_array(text: str) -> str:
    """``text`` (stripped) if it follows the grammar, without expanding it: the request model checks
    syntax; the size limit is a setting, applied by :func:`parse_array` at submit."""
    _array_items(text.strip(), ARRAY_INDEX_BOUND)
    return text.strip()


def parse_array(text: str, max_array_size: int) -> ArraySpec:
    """``text`` as sbatch's ``--array`` (``0-15``, ``1,3,5``, ``0-15:4``, ``...%N``); every index must
    be below ``max_array_size`` (Slurm's MaxArraySize), or :class:`ArrayError` says why not.
    Each range is checked against the limit before it is expanded."""
    items, limit = _array_items(text.strip(), max_array_size)
    indices: set[int] = set()
    for start, end, step in items:
        indices.update(range(start, end + 1, step))
    return ArraySpec(_runs(sorted(indices)), limit)


def _array_items(text: str, max_array_size: int) -> tuple[list[tuple[int, int, int]], int]:
    body, percent, limit_text = text.partition("%")
    limit = 0
    if percent:
        if not re.fullmatch(r"[1-9][0-9]{0,8}", limit_text):
            raise ArrayError(f"{text!r}: the limit after '%' must be a positive integer")
        limit = int(limit_text)
    if not body:
        raise ArrayError("empty array index list")
    items = []
    for item in body.split(","):
        match = _ARRAY_ITEM.fullmatch(item)
        if not match:
            raise ArrayError(f"{item!r} is not an index, a range N-M or a stepped range N-M:S")
        start = int(match[1])
        end = int(match[2]) if match[2] is not None else start
        step = int(match[3]) if match[3] is not None else 1
        if end < start:
            raise ArrayError(f"{item!r}: the range ends before it starts")
        last = start + (end - start) // step * step  # 1-6:2 ends at 5: the indices count, not the bound written
        if last >= max_array_size:
            raise ArrayError(f"{item!r}: index {last} is over the limit (MAX_ARRAY_SIZE={max_array_size}: "
                             f"indices 0..{max_array_size - 1})")
        items.append((start, end, step))
    return items, limit


def _runs(ordered: list[int]) -> tuple[tuple[int, int, int], ...]:
    """Sorted distinct indices as greedy arithmetic runs (0,4,8,12 -> 0-12:4)."""
    runs = []
    i = 0
    while i < len(ordered):
        start = ordered[i]
        if i + 1 == len(ordered):
            runs.append((start, start, 1))
            break
        step = ordered[i + 1] - start
        j = i + 1
        while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] == step:
            j += 1
        if j == i + 1 and i + 2 < len(ordered) and ordered[i + 2] - ordered[i + 1] != step:
            runs.append((start, start, 1))  # a lone index, not a two-element run
            i += 1
            continue
        runs.append((start, ordered[j], step))
        i = j + 1
    return tuple(runs)


def remaining(spec: ArraySpec, run: int, next_index: int, skipped: set[int]) -> str:
    """The not yet materialised part of an array as squeue shows it: ``5-999%16``, ``[5,7,9-20:2]``.

    ``run`` (1-based) and ``next_index`` are the cursor the Lua scripts keep; '' when nothing is left.
    """
    left = [i for number, (start, end, step) in enumerate(spec.runs, 1) if number >= run
            for i in range(next_index if number == run else start, end + 1, step) if i not in skipped]
    if not left:
        return ""
    parts = [f"{a}" if a == b else f"{a},{b}" if b - a == s and s != 1 else f"{a}-{b}" + (f":{s}" if s != 1 else "")
             for a, b, s in _runs(left)]
    return ",".join(parts) + (f"%{spec.limit}" if spec.limit else "")


def parse_normalised_array(text: str) -> ArraySpec:
    """The form ``str(ArraySpec)`` wrote (read back from a job record)."""
    body, _, limit = text.partition("%")
    runs = tuple(tuple(int(n) for n in re.split("[-:]", run)) for run in body.split(","))
    return ArraySpec(runs, int(limit or 0))  # type: ignore[arg-type]
