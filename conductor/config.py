"""Node settings: ``app.properties`` read through pydantic-settings, environment on top.

Every process of a node (each worker, the API, the generator) reads the same file, so an error
in it must be reported once, precisely (file, line, key, reason) and before anything is written.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import sys
from urllib.parse import urlsplit
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (Field, PrivateAttr, SecretStr, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .redaction import has_password, redacted
from .units import format_memory, parse_duration, parse_memory

ENV_CONFIG = "CONDUCTOR_CONFIG"
DEFAULT_LOCATIONS = (Path("app.properties"), Path("/etc/conductor/app.properties"))
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Directories a misconfiguration must never hand over to the service user (JOB_ROOT, LOG_FILE's
# directory): `conductor apply` makes those directories the service user's own.
SYSTEM_DIRS = frozenset(map(Path, (
    "/", "/bin", "/boot", "/dev", "/dev/shm", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
    "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/cache", "/var/lib", "/var/log", "/var/tmp",
)))
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class ConfigError(Exception):
    """A configuration problem, worded for the operator who has to fix the file."""


@dataclass(frozen=True)
class Origin:
    """Where a value came from, so an error can point at it."""

    path: Path | None
    line: int | None

    def describe(self, key: str) -> str:
        if self.path is None:
            return f"environment variable {key}"
        return f"{self.path}:{self.line}: {key}"


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_properties(path: Path) -> dict[str, tuple[str, int]]:
    """``KEY=VALUE`` lines, ``#`` comments (inline after whitespace), blank lines; key -> (value, line).

    A ``#`` not preceded by whitespace belongs to the value, so passwords in REDIS_URL survive.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read: {error}") from None
    return parse_properties_text(text, str(path))


def parse_properties_text(text: str, origin: str) -> dict[str, tuple[str, int]]:
    """The rules of :func:`parse_properties` applied to text already read (a deployed host's file
    fetched by testinfra, say); ``origin`` names it in errors."""
    values: dict[str, tuple[str, int]] = {}
    # Only "\n" ends a line: splitlines() would also break at form feeds or U+2028 and could
    # turn a commented-out setting into a live one.
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        line = re.split(r"\s#", raw, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{origin}:{number}: expected KEY=VALUE, got {raw.strip()!r}")
        if key in values:
            raise ConfigError(f"{origin}:{number}: {key} is already set on line {values[key][1]}")
        values[key] = (value.strip(), number)
    return values


_config_path: ContextVar[Path | None] = ContextVar("conductor_config_path", default=None)


class PropertiesSource(PydanticBaseSettingsSource):
    """Feeds the values of the app.properties file chosen by :func:`load_settings` to pydantic."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = _config_path.get()
        self.values = parse_properties(path) if path else {}
        self.path = path
        known = {name.upper() for name in settings_cls.model_fields}
        for key, (_, line) in self.values.items():
            if key not in known:
                hint = difflib.get_close_matches(key.upper(), sorted(known), n=1)
                suggestion = f"; did you mean {hint[0]}?" if hint else ""
                raise ConfigError(f"{path}:{line}: {key}: unknown key{suggestion}")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        entry = self.values.get(field_name.upper())
        return (entry[0] if entry else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name: self.values[name.upper()][0]
            for name in self.settings_cls.model_fields
            if name.upper() in self.values
        }


class Settings(BaseSettings):
    """One node's configuration; field names are the app.properties keys in lower case."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    node_name: str = Field(default_factory=socket.gethostname)
    total_cpus: int = Field(default_factory=_host_cpus, ge=1, le=65536)
    total_memory: int = Field(default_factory=_host_memory, gt=0)
    worker_concurrency: int = Field(default=1, ge=1, le=1024)
    worker_burst: bool = False
    worker_stop_timeout: int = Field(default=3600, ge=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    heartbeat_interval: float = Field(default=5.0, gt=0, le=3600)
    heartbeat_ttl: float = Field(default=15.0, gt=0, le=86400)
    log_level: LogLevel = "INFO"
    log_file: Path | None = None
    job_root: Path = Path("/var/lib/conductor/jobs")
    api_enabled: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_token: SecretStr = SecretStr("")
    install_prefix: Path = Path(sys.prefix)
    service_user: str = "conductor"
    allow_root_jobs: bool = False
    node_partitions: str = ""
    allow_unknown_partitions: bool = False
    job_retention: float = Field(default=7 * 86400.0, description="seconds; accepts 30m, 12h, 7d")
    max_job_records: int = Field(default=100_000, ge=1)
    accounting_file: Path | None = None
    job_containment: Literal["auto", "required", "off"] = "auto"
    job_pids_max: int = Field(default=4096, ge=8, le=4194304)
    cgroup_parent: str = "conductor"
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    redis_sentinel_password: SecretStr = SecretStr("")
    max_array_size: int = Field(default=1001, ge=1, le=4_000_001)  # array indices 0..N-1 (Slurm's MaxArraySize)
    # Slurm's kill_invalid_depend: a job whose dependency can never be met is cancelled instead of
    # held PENDING (DependencyNeverSatisfied); recorded in each job at submit, so one rule holds
    # wherever its parent ends.
    kill_invalid_depend: bool = False
    api_allow_anonymous: bool = False
    max_output_size: int = Field(default=1 << 30, gt=0)
    job_user: str = ""
    _source: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, PropertiesSource(settings_cls)

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value) or len(value) > 64:
            raise ValueError(f"{value!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("total_memory", "max_output_size", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)

    @field_validator("worker_concurrency", "total_cpus", "api_port", "worker_stop_timeout", "job_pids_max",
                     mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise ValueError(f"{value!r} is not a whole number")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError(f"{redacted(value)!r} must start with redis://, rediss:// or unix://")
        return value

    @field_validator("cgroup_parent")
    @classmethod
    def _cgroup_parent(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value) or value in (".", "..") or len(value) > 64:
            raise ValueError(f"{value!r} must be one cgroup name: 1-64 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("job_containment", mode="before")
    @classmethod
    def _lower_containment(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("service_user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not USER_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid user name")
        return value

    @field_validator("job_user")
    @classmethod
    def _job_user(cls, value: str, info: ValidationInfo) -> str:
        """Jobs as their own user keep them from the services' files and environment; never root, never SERVICE_USER."""
        if value and (not USER_PATTERN.fullmatch(value) or value == "root"):
            raise ValueError(f"{value!r} is not a valid user name for jobs (and never root)")
        if value and value == info.data.get("service_user"):
            raise ValueError(f"must differ from SERVICE_USER ({value}): jobs would reach the services' secrets")
        return value

    @field_validator("job_root", "install_prefix")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} must be an absolute path")
        return value

    @field_validator("heartbeat_ttl")
    @classmethod
    def _heartbeat_order(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value <= interval:
            raise ValueError(f"must be greater than HEARTBEAT_INTERVAL ({interval:g})")
        return value

    @field_validator("log_file", "job_root", "install_prefix")
    @classmethod
    def _no_nul(cls, value: Path | None) -> Path | None:
        if value is not None and "\x00" in str(value):
            raise ValueError("must not contain a NUL byte")
        if value is not None:
            carriable(str(value))
        return value

    @field_validator("node_partitions")
    @classmethod
    def _partitions(cls, value: str) -> str:
        """A comma-separated list of partition names (empty: the node serves every partition)."""
        names = [name.strip() for name in value.split(",") if name.strip()]
        for name in names:
            if not NAME_PATTERN.fullmatch(name) or len(name) > 128:
                raise ValueError(f"partition {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ -")
        return ",".join(dict.fromkeys(names))

    @field_validator("job_retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("max_job_records", mode="before")
    @classmethod
    def _whole_records(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise ValueError(f"{value!r} is not a whole number")
        return value

    @field_validator("accounting_file", mode="before")
    @classmethod
    def _accounting_empty(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("accounting_file")
    @classmethod
    def _accounting_absolute(cls, value: Path | None) -> Path | None:
        if value is not None and (not value.is_absolute() or "\x00" in str(value)):
            raise ValueError(f"{str(value)!r} must be an absolute path")
        return value

    @property
    def partitions(self) -> list[str]:
        """The partitions this node serves; empty means every partition."""
        return [name for name in self.node_partitions.split(",") if name]

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",")) if value.strip() else ():
            host, sep, port = item.rpartition(":")
            if not sep or not host or not re.fullmatch(r"\d{1,5}", port) or not 1 <= int(port) <= 65535:
                raise ValueError(f"{item!r} is not host:port (a comma-separated list of sentinels)")
        return value.strip()

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str, info: ValidationInfo) -> str:
        """Sentinels and the primary's name only make sense together; REDIS_URL then gives the
        credentials, database and TLS for the primary, so a unix socket cannot be combined."""
        sentinels = info.data.get("redis_sentinels")
        if sentinels is None:
            return value
        if sentinels and not value:
            raise ValueError("must name the primary the sentinels watch when REDIS_SENTINELS is set")
        if value and not sentinels:
            raise ValueError("needs REDIS_SENTINELS (host:port,...) as well")
        if value and not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} must be characters of A-Z a-z 0-9 . _ -")
        if value and str(info.data.get("redis_url", "")).startswith("unix://"):
            raise ValueError("cannot be used with a unix:// REDIS_URL (sentinels name TCP primaries)")
        return value

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty when Redis is reached through REDIS_URL alone."""
        pairs = []
        for item in self.redis_sentinels.split(",") if self.redis_sentinels else ():
            host, _, port = item.strip().rpartition(":")
            pairs.append((host.strip("[]"), int(port)))
        return pairs

    @field_validator("job_root")
    @classmethod
    def _own_job_root(cls, value: Path) -> Path:
        if _is_system_dir(value):
            raise ValueError(f"{str(value)!r} is a system directory; choose one of its own, such as /var/lib/conductor/jobs")
        return value

    @field_validator("log_file")
    @classmethod
    def _own_log_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r} must be an absolute path")
        if value is not None and _is_system_dir(value.parent):
            raise ValueError(f"{str(value.parent)!r} is a system directory; put the log in a directory of its own, "
                             "such as /var/log/conductor/workers.log")
        return value

    @model_validator(mode="after")
    def _never_root_by_accident(self) -> Settings:
        # Workers refuse to run jobs as root unless ALLOW_ROOT_JOBS: a root SERVICE_USER without it
        # is a node whose every worker exits at once, so it is refused here, before anything runs.
        if self.service_user == "root" and not self.allow_root_jobs:
            raise ValueError("SERVICE_USER=root: services, and so jobs, never run as root "
                             "(ALLOW_ROOT_JOBS=true allows it for development only)")
        return self

    @model_validator(mode="after")
    def _no_anonymous_public_api(self) -> Settings:
        """An API without a token runs any script for anyone who reaches it: only on loopback by default."""
        if (not self.api_token.get_secret_value() and not is_loopback(self.api_host)
                and not self.api_allow_anonymous):
            raise ValueError(
                f"API_TOKEN is empty while API_HOST={self.api_host} is not a loopback address: anyone who "
                "reaches that address could run jobs. Set API_TOKEN, bind API_HOST to 127.0.0.1, or set "
                "API_ALLOW_ANONYMOUS=true to accept an anonymous API on the network")
        return self

    @property
    def config_path(self) -> Path | None:
        """The app.properties file these settings were read from, if any."""
        return self._source

    def worker_name(self, index: int) -> str:
        """``<NODE>-<index>``: the identity of one worker instance (registry key and log prefix)."""
        return f"{self.node_name}-{index}"

    def warnings(self) -> list[str]:
        """Legal but questionable choices, worth a line in the log."""
        found = []
        if self.worker_concurrency > self.total_cpus:
            found.append(
                f"WORKER_CONCURRENCY={self.worker_concurrency} exceeds TOTAL_CPUS={self.total_cpus}: "
                "some workers can only ever wait"
            )
        host = _redis_host(self.redis_url)
        if host is not None and not is_loopback(host) and not has_password(self.redis_url):
            found.append(
                f"REDIS_URL {redacted(self.redis_url)} names a Redis on the network without a password: anyone "
                "who reaches it can change the ledger or queue code for the workers; give Redis a password "
                "(requirepass or an ACL user) and put it into REDIS_URL"
            )
        return found

    def describe(self) -> dict[str, str]:
        """The effective configuration as app.properties would spell it, secrets masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********" if value.get_secret_value() else ""
            elif name == "redis_url":
                text = redacted(value)
            elif name == "total_memory":
                text = format_memory(value)
            elif isinstance(value, bool):
                text = str(value).lower()
            elif value is None:
                text = ""
            else:
                text = str(value)
            shown[name.upper()] = text
        return shown


def _is_system_dir(path: Path) -> bool:
    return Path(os.path.normpath(path)) in SYSTEM_DIRS or Path(os.path.normpath(path)).is_relative_to("/usr")
def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost), unreachable from the network."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _redis_host(url: str) -> str | None:
    """The TCP host of a REDIS_URL, None for a Unix socket (local by nature)."""
    if url.startswith("unix://"):
        return None
    try:
        return urlsplit(url).hostname or "127.0.0.1"
    except ValueError:
        return None


UNCARRIABLE = re.compile(r"[\x00-\x1f\x7f]|\s[;#]")


def carriable(value: str) -> str:
    """Refuse what a rendered file cannot carry: control characters (a line break ends a unit's or an
    ini file's line) and whitespace before ``;`` or ``#`` (supervisord and app.properties read the rest
    of the line as a comment, so ``/opt/my ;venv`` would become ``/opt/my``). Quoting cannot help there."""
    found = UNCARRIABLE.search(value)
    if found:
        raise ValueError(f"{value!r} cannot be written into supervisord, systemd or app.properties files: "
                         f"{found.group()!r} at character {found.start() + 1} (a control character, or "
                         "whitespace before ';' or '#', which starts a comment)")
    return value


def find_config(explicit: Path | None = None) -> Path | None:
    """The file to read: ``--config``, else $CONDUCTOR_CONFIG, else ./app.properties, else /etc."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: configuration file not found")
        return explicit.resolve()
    from_env = os.environ.get(ENV_CONFIG)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"{path} (from ${ENV_CONFIG}): configuration file not found")
        return path.resolve()
    for candidate in DEFAULT_LOCATIONS:
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_settings(explicit: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the chosen file and the environment, or a :class:`ConfigError` saying why not."""
    path = find_config(explicit)
    if path is not None:
        try:
            carriable(str(path))
        except ValueError as error:
            raise ConfigError(f"{path}: the configuration file's path: {error}") from None
    token = _config_path.set(path)
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_explain(error, path)) from None
    finally:
        _config_path.reset(token)
    settings._source = path
    return settings


def _explain(error: ValidationError, path: Path | None) -> str:
    values = parse_properties(path) if path else {}
    lines = []
    for item in error.errors():
        key = str(item["loc"][0]).upper() if item["loc"] else ""
        reason = item["msg"].removeprefix("Value error, ")
        if key and key in os.environ:
            where = Origin(None, None).describe(key)
        elif key in values:
            where = Origin(path, values[key][1]).describe(key)
        elif key:
            where = f"{path or 'defaults'}: {key}"
        else:
            where = str(path or "configuration")
        got = item.get("input")
        if key == "REDIS_URL" and isinstance(got, str):
            got = redacted(got)
        shown = f" (got {got!r})" if key and isinstance(got, str) and repr(got) not in reason else ""
        lines.append(f"{where}: {reason}{shown}")
    return "\n".join(lines)
