"""Connections to the shared Redis.

conductor's own code reads strings (``decode_responses``); RQ needs raw bytes, so a worker holds
one connection of each kind. Both retry a dropped connection with backoff instead of failing the
first command after a Redis restart.

:func:`connect` is the one way every process (worker, API, CLI, metrics) reaches Redis. With
REDIS_SENTINELS set it asks the sentinels for the current primary of REDIS_SENTINEL_MASTER on
every new connection, so after a failover the same client object simply lands on the new
primary: a dropped connection or a ``READONLY`` reply from a demoted primary is a connection
error, retried briefly here and then by the caller's own loop (bounded backoff, same process). Lua scripts are
called by hash; redis-py's Script loads them again on a ``NOSCRIPT`` reply from a fresh primary.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import redis
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

if TYPE_CHECKING:
    from .config import Settings

from .redaction import has_password, redacted  # noqa: E402,F401  (re-exported: callers import them from here)

# Only Redis's own connection errors mean "Redis unreachable" (redis-py wraps socket errors in
# them); any other OSError is a local fault (an unwritable JOB_ROOT) and is reported as itself.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


REPLICA_ACK_TIMEOUT_MS = 2000  # how long a submission waits for a replica before failing


def _retry(retries: int = 3) -> Retry:
    """A few quick retries; longer outages are the callers' loops' business (heartbeat, RQ's
    dequeue, the end of a job), each with its own bounded backoff. A longer retry inside one
    command would not help across a failover: measured with redis-py 8, a blocking command
    caught by the primary's death kept retrying the dead address for all its retries (11.5 s
    with 14), while a fresh command after a short retry found the new primary at once."""
    return Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries)


@cache
def _driver() -> dict[str, object]:
    """What each connection tells Redis about its client (CLIENT SETINFO), made once per process.

    Left to itself, redis-py 8 looks its own version up in the installed packages' metadata for
    every new connection (the first lookup of a process costs 10-30 ms, each further one about 5 ms;
    a command opens two connections, a worker four). The same default description, with the
    version redis-py's package states, is given to all of them; an older redis-py has no
    ``driver_info`` and keeps its own way.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


def connect(target: str | Settings, *, decode: bool = True, socket_timeout: float | None = None,
            retries: int = 3) -> Redis:
    """A client for REDIS_URL, or for the primary the sentinels name, retrying transient errors.

    ``target`` is a URL or the node's Settings; only Settings can name sentinels. The URL's
    password, user name, database and scheme (``rediss://`` for TLS) apply to the primary either
    way, and to the sentinels too unless REDIS_SENTINEL_PASSWORD is set. ``socket_timeout``
    bounds each reply: a paused Redis (SIGSTOP, a hung host) accepts connections and never
    answers, which only a read timeout turns into an error.
    """
    url = target if isinstance(target, str) else target.redis_url
    options = dict(
        decode_responses=decode,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **_driver(),
    )
    sentinels = [] if isinstance(target, str) else target.sentinel_addresses
    if not sentinels:
        return Redis.from_url(url, retry=_retry(retries), **options)  # type: ignore[arg-type]
    assert not isinstance(target, str)
    parts = urlsplit(url)
    credentials = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    tls = {"ssl": True} if parts.scheme == "rediss" else {}
    sentinel_password = target.redis_sentinel_password.get_secret_value()
    sentinel_auth = {"password": sentinel_password} if sentinel_password else credentials
    sentinel = Sentinel(
        sentinels,
        sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2, **sentinel_auth, **tls},
        **tls,
    )
    database = int(parts.path.strip("/") or 0)
    return sentinel.master_for(  # type: ignore[no-any-return]
        target.redis_sentinel_master, redis_class=Redis, db=database, retry=_retry(retries),
        **credentials, **options,
    )


def sentinel_managed(connection: Redis) -> bool:
    """Whether ``connection`` follows a primary named by sentinels (and so has replicas to wait for)."""
    return isinstance(connection.connection_pool, SentinelConnectionPool)


class NotReplicated(RuntimeError):
    """A write reached the primary but no replica confirmed it in time."""


def confirm_replicated(connection: Redis) -> None:
    """With sentinels, return only once a replica holds every write of this connection so far.

    Sentinel promotes a replica when the primary dies; what the replica never received is lost.
    ``WAIT 1`` makes an acknowledgement mean "survives the primary's death". Without sentinels
    there is no replica to wait for and this costs nothing.
    """
    if not sentinel_managed(connection):
        return
    if int(connection.wait(1, REPLICA_ACK_TIMEOUT_MS)) < 1:
        raise NotReplicated(f"no replica confirmed the write within {REPLICA_ACK_TIMEOUT_MS} ms")


def pinned(connection: Redis, *commands: tuple[object, ...]) -> list[object]:
    """Send ``commands`` in one round trip on one connection, never retried; their replies in order
    (an error reply as its :class:`ResponseError`, in its place).

    For a write followed by ``WAIT``: WAIT confirms the writes of the connection it runs on, so it
    must follow the write on the same connection (a client shared by threads, as the API's is,
    may hand out another one between two calls), and it must never be retried on a new
    connection: after the primary's death that lands on the promoted replica, where a WAIT with
    nothing written before it answers at once and would confirm a write the new primary lacks.
    A lost connection is raised (one of :data:`UNREACHABLE`): what reached Redis is then unknown.
    """
    pool = connection.connection_pool
    link = pool.get_connection()
    try:
        link.send_packed_command(link.pack_commands(commands))
        replies: list[object] = []
        for _ in commands:
            try:
                replies.append(link.read_response())
            except ResponseError as error:
                replies.append(error)
    except BaseException:
        link.disconnect()  # a reply may still be unread: never hand this connection out again as is
        raise
    finally:
        pool.release(link)
    return replies
