"""The Lua scripts that change jobs and ledgers, each run atomically inside Redis.

Every state transition that touches resources is one script, so many submitters, workers and
reapers at once can never over-allocate a node or release a job's CPUs twice. The key prefixes
are injected from :mod:`conductor.keys`, the only place that spells them.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from redis import Redis
from redis.commands.core import Script

from . import keys


@cache
def _source(name: str) -> str:
    constants = "\n".join(
        f"local {constant} = {getattr(keys, constant)!r}"
        for constant in ("NEXT_JOB_ID", "JOBS", "NODES", "WORKERS", "JOB_PREFIX", "STATE_PREFIX",
                         "NODE_PREFIX", "WORKER_PREFIX", "PENDING_CLASSES", "PENDING_CLASS_PREFIX",
                         "ACTIVE_NAME_PREFIX", "RECONCILIATIONS", "ARRAY_PREFIX", "LIVENESS")
    )
    lua = files("conductor") / "lua"
    return "\n".join([constants, (lua / "prelude.lua").read_text(), (lua / f"{name}.lua").read_text()])


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
