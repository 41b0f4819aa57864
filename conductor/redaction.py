"""The one redaction of a REDIS_URL, for every place that shows one.

Standard library only, so that the Ansible role's filter plugin can load this very file on the
controller (its ``--diff`` guard hides app.properties exactly when this finds a password).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit


def redacted(url: str) -> str:
    """``url`` with every password replaced, fit for logs, error messages and HTTP answers.

    The one redaction of a REDIS_URL: the password of the user information
    (``redis://user:PW@host``) and a ``password`` in the query string (``redis://h/0?password=PW``,
    ``unix:///run/redis.sock?password=PW``, the form Unix sockets need), which redis-py reads too.
    Whatever cannot be parsed is not shown at all.
    """
    base, mark, query = url.partition("?")
    try:
        parts = urlsplit(base)
        password = parts.password
    except ValueError:
        return "(an unparseable URL, not shown)"
    if password is not None:
        user = parts.username or ""
        base = f"{parts.scheme}://{user}:***@{parts.netloc.rsplit('@', 1)[1]}{parts.path}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_is_secret(name) for name, _ in pairs):
        query = "&".join(f"{quote(name, safe='_.-')}={'***' if _is_secret(name) else quote(value, safe='/_.-')}"
                         for name, value in pairs)
    return base + mark + query


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (user information or query string): what :func:`redacted` hides."""
    return redacted(url) != url


def _is_secret(name: str) -> bool:
    return name.strip().lower() in ("password", "pass", "passwd", "requirepass")
