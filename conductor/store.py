"""Connections to the shared Redis.

conductor's own code reads strings (``decode_responses``); RQ needs raw bytes, so a worker holds
one connection of each kind. Both retry a dropped connection with backoff instead of failing the
first command after a Redis restart.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(url: str, *, decode: bool = True) -> Redis:
    """A client for ``url`` that retries transient connection errors a few times with backoff."""
    return Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def redacted(url: str) -> str:
    """``url`` with any password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
