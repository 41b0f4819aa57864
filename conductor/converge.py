"""``conductor apply``: bring this host to what app.properties says, idempotently.

The one place that knows how a node is laid out (service user, directories, configuration,
rendered units or programs) and which instances to start, stop or restart. install.sh, the
Ansible role and ``make run`` call it instead of each re-deriving the same facts in shell or
YAML. A second run with the same input changes nothing; ``check`` computes the same report and
changes nothing at all. Running workers are only ever stopped warmly (each finishes its current
job first, up to WORKER_STOP_TIMEOUT), and restarted only when the code they run or a setting
other than WORKER_CONCURRENCY changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from . import hostops, render
from .config import Settings, load_settings

SYSTEM_CONFIG = Path("/etc/conductor/app.properties")
UNIT_DIR = Path("/etc/systemd/system")
SUPERVISOR_DIR = Path("/etc/supervisor/conf.d")
WORKER_UNIT = "conductor-worker@.service"
TARGET = "conductor-workers.target"
API_UNIT = "conductor-api.service"
PROGRAMS = "conductor.conf"
_INSTANCE = re.compile(r"^conductor-worker@(\d+)\.service$")
_PROGRAM = re.compile(r"^conductor-worker-(\d+)$")


@dataclass
class Report:
    """What apply changed (or, with ``check``, would change): the JSON contract of ``--json``."""

    changed: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"changed": self.changed, "started": self.started, "stopped": self.stopped, "restarted": self.restarted}

    @property
    def anything(self) -> bool:
        return any(self.as_dict().values())


@dataclass(frozen=True)
class Layout:
    """Where one kind of node keeps its files: the system's places, or a private directory (``make run``)."""

    config: Path
    state: Path
    programs: Path
    supervisord_conf: Path | None = None  # a private supervisord (``--local``); None: the system's

    @classmethod
    def system(cls) -> Layout:
        return cls(SYSTEM_CONFIG, SYSTEM_CONFIG.parent / ".applied.json", SUPERVISOR_DIR)

    @classmethod
    def local(cls, directory: Path, config: Path) -> Layout:
        directory = directory.resolve()
        return cls(config, directory / "applied.json", directory / "conf.d", directory / "supervisord.conf")


def settings_fingerprint(settings: Settings) -> str:
    """What the running services were started with, minus WORKER_CONCURRENCY (no restart needed for it).

    A hash only: the state file never holds a secret, but a changed password still restarts.
    """
    values = {}
    for name in sorted(type(settings).model_fields):
        if name == "worker_concurrency":
            continue
        value = getattr(settings, name)
        values[name] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def code_fingerprint(prefix: Path) -> str:
    """A hash of the conductor package that ``prefix/bin/python`` imports ('' if none is installed)."""
    python = prefix / "bin" / "python"
    if not python.exists():
        return ""
    found = subprocess.run([str(python), "-c", "import conductor, os; print(os.path.dirname(conductor.__file__))"],
                           capture_output=True, text=True, env={"PATH": os.defpath, "LANG": "C.UTF-8"})
    if found.returncode != 0:
        return ""
    package = Path(found.stdout.strip())
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Converger:
    """One apply run: compares, reports, and (unless ``check``) changes."""

    def __init__(self, settings: Settings, mode: str, layout: Layout, check: bool = False,
                 say: Callable[[str], None] = lambda line: None) -> None:
        self.settings = settings
        self.mode = mode
        self.layout = layout
        self.check = check
        self.say = say
        self.report = Report()
        self.as_root = os.geteuid() == 0
        self.previous = self._read_state()

    # --- the whole run ---------------------------------------------------------------------------
    def run(self) -> Report:
        self.preflight()
        self.prepare()
        self.settings = self.install_config()
        self.fingerprints = {"mode": self.mode, "settings": settings_fingerprint(self.settings),
                             "code": code_fingerprint(self.settings.install_prefix)}
        if self.mode == "systemd":
            self.systemd()
        else:
            self.supervisord()
        self._write_state()
        return self.report

    def preflight(self) -> None:
        """Refuse, before changing anything, what could only fail later."""
        settings = self.settings
        if self.mode == "systemd" and not Path("/run/systemd/system").is_dir():
            raise hostops.HostError(f"systemd is not running on this machine (PID 1 is "
                                    f"{Path('/proc/1/comm').read_text().strip()}): use --mode supervisord")
        if not self.as_root:
            if self.layout.supervisord_conf is None:
                raise hostops.HostError("run as root: apply creates a system user, writes /etc and manages services "
                                        "(or use --local DIR for a node of your own)")
            me = hostops.Account.lookup(_current_user())
            if settings.service_user != me.name:
                raise hostops.HostError(f"SERVICE_USER={settings.service_user}: as {me.name}, services can only run "
                                        f"as {me.name}; set SERVICE_USER={me.name} or run as root")
        account = hostops.Account.lookup(settings.service_user)
        needed = [("INSTALL_PREFIX", settings.install_prefix / "bin" / "conductor"),
                  ("the configuration", self.layout.config if self.layout.supervisord_conf else SYSTEM_CONFIG.parent),
                  ("JOB_ROOT", settings.job_root.parent)]
        if settings.log_file:
            needed.append(("LOG_FILE's directory", settings.log_file.parent.parent))
        for what, path in needed:
            wall = hostops.blocked(path, account)
            if wall is not None:
                raise hostops.HostError(hostops.unreachable_message(what, path, wall, settings.service_user))

    def prepare(self) -> None:
        """The service user and the directories it owns."""
        settings, user = self.settings, self.settings.service_user
        changed = self.report.changed
        if self.as_root:
            changed += hostops.ensure_user(user, self.check)
            if settings.job_user:  # jobs run as their own user, away from the services' files
                changed += hostops.ensure_user(settings.job_user, self.check, comment="conductor jobs")
        changed += hostops.ensure_dir(settings.job_root, user, user, 0o750, self.check)
        if settings.log_file:
            changed += hostops.ensure_dir(settings.log_file.parent, user, user, 0o750, self.check)
        accounting = getattr(settings, "accounting_file", None)
        if accounting:
            changed += hostops.ensure_dir(accounting.parent, user, user, 0o750, self.check)
        if self.layout.supervisord_conf is None:
            changed += hostops.ensure_dir(self.layout.config.parent, "root", user, 0o750, self.check)

    def install_config(self) -> Settings:
        """System nodes read /etc/conductor/app.properties (0640 root:SERVICE_USER): install the given file there."""
        source = self.settings.config_path
        if self.layout.supervisord_conf is not None or source is None:
            return self.settings
        self.report.changed += hostops.install_file(source, self.layout.config, self.settings.service_user, 0o640,
                                                    self.check)
        if self.check or source == self.layout.config:
            if self.check and source != self.layout.config:
                self.settings._source = self.layout.config  # render as if installed
            return self.settings
        return load_settings(self.layout.config)

    # --- files -----------------------------------------------------------------------------------
    def render(self, target: str, out: Path) -> dict[str, bool]:
        """Render through the generator into ``out``; name -> changed."""
        files = dict(render.EXPORTERS[target](self.settings).files())
        changed = {}
        for name, content in files.items():
            path = out / name
            changed[name] = not path.is_file() or path.read_text() != content
            self.say(f"{('would write' if self.check else 'wrote') if changed[name] else 'unchanged'} {path}")
            if changed[name]:
                self.report.changed.append(str(path))
        if not self.check:
            render.write(iter(files.items()), out)
        return changed

    def remove(self, path: Path) -> bool:
        if not path.exists():
            return False
        self.report.changed.append(f"removed {path}")
        if not self.check:
            path.unlink()
        return True

    def must_restart(self, unit_changed: bool) -> bool:
        """Running services restart when their unit, the code or a setting (but N) changed."""
        before = self.previous
        return (unit_changed or before.get("mode") != self.mode or before.get("settings") != self.fingerprints["settings"]
                or before.get("code") != self.fingerprints["code"])

    # --- systemd ---------------------------------------------------------------------------------
    def systemd(self) -> None:
        settings, n = self.settings, self.settings.worker_concurrency
        self.drop_supervisord_programs()
        changed = self.render("systemd", UNIT_DIR)
        api_unit = UNIT_DIR / API_UNIT
        if not settings.api_enabled and api_unit.exists():
            if self.active(API_UNIT):
                self.report.stopped.append(API_UNIT)
            self.act("systemctl", "disable", "--now", "--quiet", API_UNIT)
            self.remove(api_unit)
            changed[API_UNIT] = True
        if any(changed.values()):
            self.act("systemctl", "daemon-reload")

        surplus = sorted({u for u in self.instances() if int(_INSTANCE.match(u)[1]) > n}, key=_index)  # type: ignore[index]
        if surplus:
            self.say(f"WORKER_CONCURRENCY={n}: stopping and disabling {' '.join(surplus)} "
                     "(each finishes its current job first)")
            self.report.stopped += [u for u in surplus if self.active(u)]
            self.act("systemctl", "disable", "--quiet", *surplus)
            self.act("systemctl", "stop", *surplus)

        wanted = [f"conductor-worker@{i}.service" for i in range(1, n + 1)]
        running = [u for u in wanted if self.active(u)]
        if running and self.must_restart(changed.get(WORKER_UNIT, False)):
            self.say(f"unit, configuration or code changed: restarting {' '.join(running)} "
                     "(each finishes its current job first)")
            self.act("systemctl", "restart", *running)
            self.report.restarted += running
        missing = [u for u in wanted if u not in running]
        if not self.check:
            subprocess.run(["systemctl", "reset-failed", "conductor-worker@*.service"], capture_output=True)
        if self.query("systemctl", "is-enabled", TARGET).strip() != "enabled":
            self.report.changed.append(f"enabled {TARGET}")
            self.act("systemctl", "enable", "--quiet", TARGET)
        self.act("systemctl", "start", TARGET, *missing)
        self.report.started += missing
        if not self.check:
            self.settle(missing + self.report.restarted)

        if settings.api_enabled:
            if self.query("systemctl", "is-enabled", API_UNIT).strip() != "enabled":
                self.report.changed.append(f"enabled {API_UNIT}")
                self.act("systemctl", "enable", "--quiet", API_UNIT)
            if not self.active(API_UNIT):
                self.act("systemctl", "start", API_UNIT)
                self.report.started.append(API_UNIT)
            elif self.must_restart(changed.get(API_UNIT, False)):
                self.act("systemctl", "restart", API_UNIT)
                self.report.restarted.append(API_UNIT)

    def instances(self) -> set[str]:
        """Worker instances systemd has loaded or that are enabled (an operator may enable one by hand)."""
        listed = self.query("systemctl", "list-units", "--all", "--plain", "--no-legend", "conductor-worker@*.service")
        found = {line.split()[0] for line in listed.splitlines() if line.split()}
        found |= {p.name for p in UNIT_DIR.glob("*.wants/conductor-worker@*.service")}
        return {u for u in found if _INSTANCE.match(u)}

    def settle(self, units: list[str]) -> None:
        """Started or restarted instances run: the start half of a restart can fail once in a while
        (status 219/CGROUP while the kernel still removes the old control group); start it again."""
        for unit in units:
            for _ in range(10):
                if self.query("systemctl", "is-failed", unit).strip() != "failed":
                    break
                subprocess.run(["systemctl", "reset-failed", unit], capture_output=True)
                subprocess.run(["systemctl", "start", unit], capture_output=True)
                time.sleep(1)

    def active(self, unit: str) -> bool:
        return self.query("systemctl", "is-active", unit).strip() in ("active", "activating", "reloading")

    def drop_supervisord_programs(self) -> None:
        """Switching to systemd: the programs of an earlier supervisord install go (warmly)."""
        if not self.remove(SUPERVISOR_DIR / PROGRAMS):
            return
        self.say("removing the supervisord programs of an earlier --mode supervisord install")
        if not self.check and subprocess.run(["supervisorctl", "pid"], capture_output=True).returncode == 0:
            self.act("supervisorctl", "reread")
            self.act("supervisorctl", "update")

    # --- supervisord -----------------------------------------------------------------------------
    def supervisord(self) -> None:
        settings, n = self.settings, self.settings.worker_concurrency
        if self.layout.supervisord_conf is None:
            self.drop_systemd_units()
        self.start_supervisord()
        self.prepare_cgroups()
        changed = self.render("supervisord", self.layout.programs)[PROGRAMS]
        wanted = [f"conductor-worker-{i}" for i in range(1, n + 1)] + (["conductor-api"] if settings.api_enabled else [])
        before = self.programs()
        fresh: set[str] = set()
        if changed and not self.check:
            reread = self.ctl("reread").stdout
            fresh = set(re.findall(r"^(conductor-[a-z0-9-]+): (?:available|changed)$", reread, re.MULTILINE))
            self.ctl("update")  # starts added programs, stops removed ones (warm), restarts changed ones
        for name, state in sorted(before.items(), key=lambda item: _index(item[0])):
            if name not in wanted and state in ("RUNNING", "STARTING"):
                self.report.stopped.append(name)
        running = [p for p in wanted if before.get(p) in ("RUNNING", "STARTING")]
        self.report.restarted += [p for p in running if p in fresh]
        restart = [p for p in running if p not in fresh]
        if restart and self.must_restart(False):
            self.say(f"configuration or code changed: restarting {' '.join(restart)} (each finishes its current job first)")
            if not self.check:
                self.ctl("restart", *restart)
            self.report.restarted += restart
        after = self.programs() if not self.check else before
        missing = [p for p in wanted if p not in running and after.get(p) not in ("RUNNING", "STARTING")]
        if missing and not self.check:
            self.ctl("start", *missing)
        self.report.started += [p for p in wanted if p not in running]

    def prepare_cgroups(self) -> None:
        """Job containment under supervisord: a cgroup subtree per worker owned by SERVICE_USER
        (systemd delegates one instead). Without it jobs run uncontained: a warning, not an error."""
        from . import cgroups

        if self.check or not self.as_root:
            return
        settings = self.settings
        try:
            cgroups.prepare(settings.cgroup_parent,
                            [settings.worker_name(i) for i in range(1, settings.worker_concurrency + 1)],
                            settings.service_user)
        except (OSError, KeyError, cgroups.ContainmentError) as error:
            self.say(f"jobs will run without containment ({error}); JOB_CONTAINMENT=required workers will not start")

    def start_supervisord(self) -> None:
        if self.check or self.ctl("pid", check=False).returncode == 0:
            return
        if self.layout.supervisord_conf is not None:
            self.say(f"starting supervisord ({self.layout.supervisord_conf})")
            self.act(str(Path(sys.executable).parent / "supervisord"), "-c", str(self.layout.supervisord_conf))
        elif Path("/run/systemd/system").is_dir():
            self.say("starting supervisord (supervisor.service)")
            self.act("systemctl", "enable", "--now", "--quiet", "supervisor.service")
        else:
            raise hostops.HostError("supervisord is not running: start it first (e.g. service supervisor start)")
        deadline = time.monotonic() + 30
        while self.ctl("pid", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise hostops.HostError("supervisord did not answer after 30 s: see its log")
            time.sleep(0.2)
        self.report.started.append("supervisord")

    def programs(self) -> dict[str, str]:
        """conductor's supervisord programs and their states."""
        result = self.ctl("status", check=False)
        found = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("conductor-"):
                found[parts[0]] = parts[1]
        return found

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.layout.supervisord_conf is not None:
            argv = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(self.layout.supervisord_conf), *args]
        else:
            argv = ["supervisorctl", *args]
        result = subprocess.run(argv, capture_output=True, text=True)
        if check and result.returncode not in (0, 3):  # 3: some program is not RUNNING
            raise hostops.HostError(f"supervisorctl {' '.join(args)} exited {result.returncode}: "
                                    f"{(result.stdout + result.stderr).strip()}")
        return result

    def drop_systemd_units(self) -> None:
        """Switching to supervisord: the units of an earlier systemd install go (workers drain first)."""
        units = [UNIT_DIR / name for name in (WORKER_UNIT, TARGET, API_UNIT)]
        if not any(p.exists() for p in units):
            return
        self.say("removing the systemd units of an earlier --mode systemd install (workers finish their jobs first)")
        if Path("/run/systemd/system").is_dir():
            running = [u for u in sorted(self.instances(), key=_index) if self.active(u)]
            self.report.stopped += running
            if not self.check:
                subprocess.run(["systemctl", "disable", "--quiet", TARGET, API_UNIT], capture_output=True)
                for link in UNIT_DIR.glob("*.wants/conductor-worker@*.service"):
                    link.unlink()
                wants = UNIT_DIR / f"{TARGET}.wants"
                if wants.is_dir() and not any(wants.iterdir()):
                    wants.rmdir()
                subprocess.run(["systemctl", "stop", TARGET, "conductor-worker@*.service", API_UNIT], capture_output=True)
        for path in units:
            self.remove(path)
        if Path("/run/systemd/system").is_dir():
            self.act("systemctl", "daemon-reload")

    # --- running commands --------------------------------------------------------------------------
    def act(self, *argv: str) -> None:
        """A command that changes the host: skipped in check mode, its failure is an error."""
        if self.check:
            return
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise hostops.HostError(f"{' '.join(argv)} exited {result.returncode}: {(result.stdout + result.stderr).strip()}")

    @staticmethod
    def query(*argv: str) -> str:
        """A command that only looks (fine in check mode); its output, whatever its exit status."""
        return subprocess.run(argv, capture_output=True, text=True).stdout

    # --- what the running services were started with ----------------------------------------------
    def _read_state(self) -> dict[str, str]:
        try:
            return json.loads(self.layout.state.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        if self.check or self.previous == self.fingerprints:
            return
        self.layout.state.parent.mkdir(parents=True, exist_ok=True)
        partial = self.layout.state.with_name(f".{self.layout.state.name}.new")
        partial.write_text(json.dumps(self.fingerprints, sort_keys=True) + "\n")
        os.chmod(partial, 0o600)
        os.replace(partial, self.layout.state)


def _index(name: str) -> int:
    match = re.search(r"(\d+)(?:\.service)?$", name)
    return int(match[1]) if match else 0


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
