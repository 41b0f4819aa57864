"""The local node of ``make run``: its configuration, and the password of the Redis it starts.

deploy/run-local.sh calls this once per start or reload (``python -m conductor.localrun prepare``).
The checkout's app.properties stays what the user edits and may be readable by everyone, so the
node runs from a copy, ``<node directory>/app.properties`` (0640 root:SERVICE_USER), that adds
what must not be in the checkout:

- the password of the Redis that ``make run`` starts itself (when nothing answers at a local
  REDIS_URL). It is generated once and kept in ``redis-password`` (0600, root's, or the user's
  when not run by root), given to redis-server in ``redis.conf`` (0640 root:SERVICE_USER, never
  on its command line, where ``ps`` would show it) and to the services in REDIS_URL;
- JOB_USER=conductor-job when run by root and app.properties names no JOB_USER, so that jobs
  never run as the service user, which can read that copy, the password and the workers'
  environment. Run by another user, JOB_USER is emptied: that user can neither create a job
  user nor switch to one, and everything runs as that user anyway.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import secrets
import sys
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

from .config import parse_properties
from .redaction import has_password, redacted

DEFAULT_JOB_USER = "conductor-job"
PASSWORD_FILE = "redis-password"
REDIS_CONF = "redis.conf"
NODE_CONFIG = "app.properties"
_KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")


def write_private(path: Path, text: str, group: str, mode: int) -> None:
    """Write ``path`` atomically, created with ``mode`` (never readable by others, not even for a moment);
    root:``group`` when run by root, else the caller's own file."""
    partial = path.with_name(f".{path.name}.new")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o700)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if os.geteuid() == 0:
            os.chown(partial, 0, grp.getgrnam(group).gr_gid)
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def password(directory: Path) -> str:
    """The local Redis' password: read from ``directory/redis-password``, generated there the first time."""
    path = directory / PASSWORD_FILE
    if path.is_file():
        text = path.read_text().strip()
        if text:
            return text
    value = secrets.token_urlsafe(32)  # URL-safe: it goes into REDIS_URL unquoted
    write_private(path, value + "\n", "root", 0o600)
    return value


def url_password(url: str) -> str | None:
    """The password REDIS_URL carries (user information or ``?password=``), None without one."""
    base, _, query = url.partition("?")
    found = urlsplit(base).password
    if found is not None:
        return found
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.strip().lower() == "password":
            return value
    return None


def with_password(url: str, secret: str) -> str:
    """``redis://host:port/db`` with ``secret`` as the password of the default user."""
    parts = urlsplit(url)
    return parts._replace(netloc=f":{quote(secret, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}").geturl()


def answers(url: str) -> bool:
    """Whether a Redis answers a PING at ``url`` (with its password, if it has one)."""
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (RedisError, OSError, ValueError):
        return False


def node_config(source: Path, overrides: dict[str, str], defaults: dict[str, str]) -> str:
    """``source`` with the keys of ``overrides`` replaced, and ``defaults`` added where ``source``
    does not set them. Every other line, comments included, is kept as it is."""
    present = parse_properties(source)
    lines = []
    for raw in source.read_text(encoding="utf-8").split("\n"):
        key = _KEY.match(raw)
        if key and key.group(1) in overrides and key.group(1) in present:
            continue
        lines.append(raw)
    added = {**{k: v for k, v in defaults.items() if k not in present}, **overrides}
    text = "\n".join(lines).rstrip("\n") + "\n"
    if added:
        text += f"\n# Added by `make run` (deploy/run-local.sh) to {source}; edit that file instead.\n"
        text += "".join(f"{key}={value}\n" for key, value in added.items())
    return text


def redis_conf(port: int, data: Path, secret: str) -> str:
    """The local redis-server's configuration: loopback only, an append-only file, the password."""
    return "\n".join([
        "# The local Redis of `make run` (deploy/run-local.sh): loopback only, a password (requirepass),",
        "# its append-only file in the node's log directory. Generated; 0640 root:SERVICE_USER.",
        f"port {port}",
        "bind 127.0.0.1",
        f'dir "{data}"',
        "appenddirname redis-data",
        "appendonly yes",
        'save ""',
        f"requirepass {_quoted(secret)}",
        "",
    ])


def job_user(configured: str, as_root: bool, in_environment: bool) -> tuple[dict[str, str], dict[str, str]]:
    """(overrides, defaults) of JOB_USER for the node's copy, given app.properties' value.

    Run by root: conductor-job unless a JOB_USER is named (in the file or the environment, which
    outranks the file). Run by another user: empty, since that user can neither create a job user
    nor switch to one (no CAP_SETUID) and the services run as the caller anyway.
    """
    if as_root:
        return {}, ({} if in_environment else {"JOB_USER": DEFAULT_JOB_USER})
    return ({"JOB_USER": ""} if configured else {}), {}


def _quoted(value: str) -> str:
    """A redis.conf argument in double quotes (Redis reads \\" and \\\\ inside them)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prepare(source: Path, node: Path, run: Path, service_user: str) -> int:
    """Write ``node``/app.properties (and, when this node starts its own Redis, redis.conf);
    print ``start PORT`` or ``use`` for run-local.sh. Exit status 1: a non-local Redis that does not answer."""
    settings = parse_properties(source)
    url = os.environ.get("REDIS_URL") or (settings["REDIS_URL"][0] if "REDIS_URL" in settings else
                                           "redis://127.0.0.1:6379/0")
    overrides, defaults = job_user(settings.get("JOB_USER", ("",))[0], os.geteuid() == 0,
                                   "JOB_USER" in os.environ)
    if "JOB_USER" in overrides:
        _say(f"run-local: not run by root: jobs run as {service_user}, not JOB_USER={settings['JOB_USER'][0]}")
    action = "use"
    if answers(url):
        _say(f"run-local: using the Redis that answers at {redacted(url)}")
        if not has_password(url):
            _say("run-local: warning: that Redis has no password: every process of this machine, jobs "
                "included, can change the ledger or queue code for the workers")
    else:
        parts = urlsplit(url)
        if url.startswith("unix://") or parts.hostname not in ("127.0.0.1", "localhost"):
            _say(f"run-local: Redis at {redacted(url)} does not answer and is not local; start it first")
            return 1
        secret = url_password(url) or password(node)
        local = url if has_password(url) else with_password(url, secret)
        if not answers(local):  # else: the Redis this node started before, still running
            port = parts.port or 6379
            write_private(node / REDIS_CONF, redis_conf(port, run / "log", secret), service_user, 0o640)
            _say(f"run-local: starting redis-server on port {port} with a password (in {node / PASSWORD_FILE}, "
                f"0600), its append-only file in {run / 'log' / 'redis-data'}")
            action = f"start {port}"
        if not has_password(url):
            overrides["REDIS_URL"] = local
    write_private(node / NODE_CONFIG, node_config(source, overrides, defaults), service_user, 0o640)
    print(action)
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conductor.localrun")
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("prepare", help="write the local node's app.properties (and redis.conf)")
    step.add_argument("--config", type=Path, required=True, help="the app.properties the user edits")
    step.add_argument("--node", type=Path, required=True, help="where the node's app.properties and secrets go")
    step.add_argument("--run", type=Path, required=True, help="the node's run directory (logs, Redis data)")
    step.add_argument("--service-user", required=True)
    args = parser.parse_args(argv)
    if os.geteuid() == 0:
        from . import hostops

        hostops.ensure_user(args.service_user, False)  # the owner of what is written here
    else:
        pwd.getpwnam(args.service_user)
    args.node.mkdir(parents=True, exist_ok=True)
    return prepare(args.config, args.node, args.run, args.service_user)


if __name__ == "__main__":
    sys.exit(main())
