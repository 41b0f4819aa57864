"""The Lua scripts that change jobs and ledgers, each run atomically inside Redis.

Every state transition that touches resources is one script, so many submitters, workers and
reapers at once can never over-allocate a node or release a job's CPUs twice. The key names
(prefixes and suffixes) are injected from :mod:`conductor.keys`, the only place that spells them:
a script refers to them by the constants' names.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from redis import Redis
from redis.commands.core import Script

from . import keys


LUA_NAME = re.compile(r"^[A-Za-z0-9_.:-]*$")  # what a key name may be spelled with: no quoting needed in Lua


def key_names() -> dict[str, str]:
    """Every upper-case string constant of :mod:`conductor.keys`: the names each script is given."""
    names = {name: value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)}
    for name, value in names.items():
        if not LUA_NAME.fullmatch(value):
            raise ValueError(f"keys.{name} = {value!r}: a Redis name given to the Lua scripts may hold only "
                             "letters, digits and . _ : -")
    return names


@cache
def _constants() -> str:
    """The key names from :mod:`conductor.keys` as Lua locals."""
    return "\n".join(f"local {name} = '{value}'" for name, value in sorted(key_names().items()))


@cache
def _prelude_file() -> str:
    return (files("conductor") / "lua" / "prelude.lua").read_text()


@cache
def prelude() -> str:
    """The text every script starts with: the key names from :mod:`conductor.keys`, then ``lua/prelude.lua``."""
    return "\n".join([_constants(), _prelude_file()])


DEFINITION = re.compile(r"^(?:local\s+function\s+(\w+)|function\s+(\w+)|local\s+(\w+(?:\s*,\s*\w+)*)\b)")
IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
COMMENT = re.compile(r"--[^\n]*")


def _definitions(text: str) -> list[tuple[set[str], str]]:
    """``text`` cut at each top-level definition: (the names it defines, its text), in order."""
    chunks: list[tuple[set[str], list[str]]] = [(set(), [])]
    for line in text.split("\n"):
        found = DEFINITION.match(line)
        if found:
            names = found.group(1) or found.group(2) or found.group(3)
            chunks.append(({n.strip() for n in names.split(",")}, []))
        chunks[-1][1].append(line)
    return [(names, "\n".join(lines)) for names, lines in chunks]


def _used(text: str) -> set[str]:
    return set(IDENTIFIER.findall(COMMENT.sub("", text)))


def trimmed_prelude(body: str) -> str:
    """The prelude with only the definitions ``body`` uses, directly or through each other.

    Redis runs a script's whole text on every call, so every function the prelude defines is
    created again each time (tens of microseconds of Redis CPU for all of them): a script carries
    only what it calls. The key-name constants are all kept (they cost next to nothing).
    """
    chunks = _prelude_chunks()
    wanted = _used(body)
    chosen: set[int] = set()
    grew = True
    while grew:
        grew = False
        for number, (names, _, uses) in enumerate(chunks):
            if number not in chosen and (number == 0 or names & wanted):
                chosen.add(number)
                wanted |= uses
                grew = True
    return "\n".join([_constants(), *(text for number, (_, text, _) in enumerate(chunks) if number in chosen)])


@cache
def _prelude_chunks() -> list[tuple[set[str], str, set[str]]]:
    """The prelude's definitions (see :func:`_definitions`), each with the names it uses: read
    and scanned once per process, not once per script (a worker prepares every script at start)."""
    return [(names, text, _used(text)) for names, text in _definitions(_prelude_file())]


@cache
def _source(name: str) -> str:
    body = (files("conductor") / "lua" / f"{name}.lua").read_text()
    return "\n".join([trimmed_prelude(body), body])


def script(connection: Redis, name: str) -> Script:
    """The script ``lua/<name>.lua`` bound to ``connection`` (sent once, then called by its hash)."""
    cached: dict[str, Script] = connection.__dict__.setdefault("_conductor_scripts", {})
    if name not in cached:
        cached[name] = connection.register_script(_source(name))
    return cached[name]


def run(connection: Redis, name: str, *args: object) -> object:
    """Run script ``name`` with ``args`` as ARGV."""
    return script(connection, name)(args=list(args))


def load_all(connection: Redis) -> None:
    """Read every script now, at start: a worker that is draining during an in-place upgrade
    must keep running the scripts of its own version, not read newer ones from disk."""
    for path in sorted((files("conductor") / "lua").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".lua") and path.name != "prelude.lua":
            script(connection, path.name.removesuffix(".lua"))
