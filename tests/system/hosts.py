"""Real systemd hosts for tests: Debian booted with systemd-nspawn from a cached root file system.

The machines that run the tests are VMs whose PID 1 is not systemd, so ``systemctl`` does not work
on them directly; a container booted with ``systemd-nspawn --boot`` runs a real systemd as its
PID 1. This module builds the root file system once (debootstrap, cached under
``/var/cache/conductor-test`` and keyed by everything that goes into it), boots any number of
hosts from it, each with its own writable overlay, host name, machine id and sshd port, runs
commands in them through ``nsenter`` (or ``ssh``), and always stops them again.

Hosts share the machine's network (no ``--private-network``): a redis-server on the machine's
127.0.0.1 is reachable from inside, and each host's sshd listens on 127.0.0.1:<its port>, which is
what an Ansible inventory or testinfra's ``ssh://`` backend needs.

Used by tests/system (and meant for the Ansible and testinfra tiers): root only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support import free_port

CACHE = Path(os.environ.get("CONDUCTOR_TEST_CACHE", "/var/cache/conductor-test"))
# What every test host has: systemd as init, sshd and Python for Ansible, procps for the tests'
# own looks at processes, supervisor for install.sh's supervisord mode (disabled until used).
PACKAGES = (
    "dbus", "openssh-server", "procps", "python3", "python3-venv", "sudo", "supervisor",
    "systemd", "systemd-sysv",
)
# Bump when prepare() changes what it does to a fresh root file system.
LAYOUT = 1
READY_MARK = ".conductor-test-rootfs.json"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HostError(RuntimeError):
    """A test host could not be built, booted or reached; the message says what to look at."""


def missing_tools() -> list[str]:
    """The programs this module needs that the machine lacks (Debian: systemd-container, debootstrap)."""
    return [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(tool) is None]


def unavailable() -> str | None:
    """Why real systemd hosts cannot be booted here, or None when they can."""
    if os.geteuid() != 0:
        return "booting systemd hosts with systemd-nspawn needs root"
    missing = missing_tools()
    if missing:
        return (f"{', '.join(missing)} not installed "
                "(Debian: apt-get install systemd-container debootstrap util-linux)")
    return None


def machine_suite() -> str:
    """This machine's Debian/Ubuntu code name: hosts run the same release, so wheels built here fit."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise HostError("/etc/os-release names no VERSION_CODENAME; cannot tell which release to bootstrap")


def machine_mirror(suite: str) -> str:
    """The mirror this machine's own apt sources use for ``suite``, read now (never written into the project)."""
    stanzas: list[dict[str, str]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if line.strip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            stanzas.append(fields)
    for fields in stanzas:
        if (suite in fields.get("suites", "").split() and "deb" in fields.get("types", "deb").split()
                and fields.get("enabled", "yes").lower() != "no" and fields.get("uris")):
            return fields["uris"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                return parts[1]
    raise HostError(f"no apt source of this machine names the suite {suite!r} "
                    "(looked in /etc/apt/sources.list.d/*.sources and /etc/apt/sources.list)")


@dataclass(frozen=True)
class RootfsSpec:
    """Everything that goes into a test root file system; its hash names the cached copy."""

    suite: str
    mirror: str
    packages: tuple[str, ...] = PACKAGES
    variant: str = "minbase"
    layout: int = LAYOUT

    @classmethod
    def for_machine(cls, packages: Iterable[str] = PACKAGES) -> RootfsSpec:
        suite = machine_suite()
        return cls(suite=suite, mirror=machine_mirror(suite), packages=tuple(sorted(set(packages))))

    def as_json(self) -> str:
        return json.dumps({"suite": self.suite, "mirror": self.mirror, "packages": list(self.packages),
                           "variant": self.variant, "layout": self.layout}, sort_keys=True)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (two test sessions must not build the same tree at once)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rootfs(spec: RootfsSpec | None = None) -> Path:
    """The cached root file system for ``spec`` (the machine's release), built when missing.

    A cold build runs debootstrap (about a minute or two, 350 MB); afterwards this returns at once.
    A half-built tree never counts: the build happens in a scratch directory renamed into place.
    """
    spec = spec or RootfsSpec.for_machine()
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = CACHE / f"rootfs-{spec.suite}-{spec.key}"
    if (target / READY_MARK).exists():
        return target
    with _locked(CACHE / ".lock"):
        if (target / READY_MARK).exists():
            return target
        for stale in CACHE.glob(f".partial-{spec.key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = CACHE / f".partial-{spec.key}-{os.getpid()}"
        log = CACHE / f"debootstrap-{spec.key}.log"
        command = ["debootstrap", f"--variant={spec.variant}", f"--include={','.join(spec.packages)}",
                   spec.suite, str(partial), spec.mirror]
        with open(log, "w") as output:
            output.write(f"# {shlex.join(command)}\n")
            output.flush()
            result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    check=False)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise HostError(f"debootstrap failed (exit {result.returncode}); full log in {log}:\n{tail}")
        prepare(partial)
        (partial / READY_MARK).write_text(spec.as_json() + "\n")
        partial.rename(target)
    return target


def prepare(root: Path) -> None:
    """Make a fresh debootstrap tree a good test host; part of the cached tree (bump LAYOUT on change)."""
    # Each host gets its own machine id in its overlay; the tree itself carries none.
    (root / "etc/machine-id").write_text("")
    # supervisord is there for install.sh's supervisord mode; it runs only where a test starts it.
    _systemctl_offline(root, "disable", "supervisor.service")
    # Nothing in a test host should wait for a console login or for the network to be "online".
    _systemctl_offline(root, "mask", "systemd-firstboot.service", "console-getty.service",
                       "getty@tty1.service", "systemd-networkd-wait-online.service")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def _systemctl_offline(root: Path, verb: str, *units: str) -> None:
    subprocess.run(["systemctl", f"--root={root}", "--quiet", verb, *units], check=True,
                   capture_output=True, text=True)


def test_key() -> Path:
    """The private key (created once, root only) whose public half every host's root accepts."""
    directory = CACHE / "ssh"
    key = directory / "id_ed25519"
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(CACHE / ".lock"):
        if not key.exists():
            directory.mkdir(mode=0o700, exist_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "conductor-test",
                            "-f", str(key)], check=True, capture_output=True)
    return key


@dataclass(frozen=True)
class Bind:
    """A directory of the machine made visible in the host."""

    source: Path
    target: str
    read_only: bool = True

    def option(self) -> str:
        return f"--bind{'-ro' if self.read_only else ''}={self.source}:{self.target}"


@dataclass
class Host:
    """One booted systemd host (an nspawn container sharing the machine's network)."""

    name: str
    root: Path
    workdir: Path
    binds: Sequence[Bind] = ()
    ssh_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _init_pid: int | None = None

    @property
    def upper(self) -> Path:
        return self.workdir / "upper"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def start(self) -> Host:
        """Boot the host (returns at once; see :meth:`wait_booted`)."""
        if shutil.which("ssh-keygen") is None:
            raise HostError("ssh-keygen is missing (Debian: apt-get install openssh-client)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        etc = self.upper / "etc"
        (etc / "ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (etc / "hostname").write_text(self.name + "\n")
        (etc / "ssh/sshd_config.d/conductor-test.conf").write_text(
            f"# test host {self.name}: its own port, on the machine's loopback only\n"
            f"Port {self.ssh_port}\nListenAddress 127.0.0.1\nPasswordAuthentication no\n")
        ssh = self.upper / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        authorized = ssh / "authorized_keys"
        authorized.write_text(Path(f"{test_key()}.pub").read_text())
        authorized.chmod(0o600)
        for bind in self.binds:
            (self.upper / bind.target.lstrip("/")).mkdir(parents=True, exist_ok=True)
        command = [
            "systemd-nspawn", "--quiet", f"--directory={self.root}", f"--overlay={self.root}:{self.upper}:/",
            f"--machine={self.name}", "--register=no", "--keep-unit", "--boot", "--console=read-only",
            *(bind.option() for bind in self.binds),
        ]
        with open(self.console_log, "ab") as console:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def _find_init(self) -> int | None:
        """The container's systemd: the child of the systemd-nspawn process."""
        assert self.process is not None
        children: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in task.read_text().split()]
        for pid in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
        return None

    @property
    def init_pid(self) -> int:
        if self._init_pid is None:
            raise HostError(f"host {self.name} has not booted")
        return self._init_pid

    def wait_booted(self, timeout: float = 180) -> Host:
        """Wait until systemd in the host reports ``running``; raise with the failed units otherwise."""
        deadline = time.monotonic() + timeout
        state = "not started"
        retried: set[str] = set()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise HostError(f"host {self.name}: systemd-nspawn exited with {self.process.returncode}; "
                                f"console:\n{self._console_tail()}")
            if self._init_pid is None:
                self._init_pid = self._find_init()
            if self._init_pid is not None:
                result = self.run("systemctl", "is-system-running", check=False, timeout=30)
                state = result.stdout.strip()
                if state == "running":
                    return self
                if state == "degraded":
                    failed = self.run("systemctl", "--failed", "--no-legend", "--plain", check=False).stdout
                    units = {line.split()[0] for line in failed.splitlines() if line.strip()}
                    if not units or units & retried:
                        raise HostError(f"host {self.name} booted degraded; failed units:\n{failed}")
                    # An operating-system unit failed while the machine was busy booting other hosts
                    # (seen once: systemd-user-sessions); start it once more before giving up.
                    log = self.run("journalctl", "--no-pager", "-n", "20", *(f"--unit={u}" for u in units),
                                   check=False).stdout
                    print(f"host {self.name}: starting again what failed at boot: {sorted(units)}\n{log}")
                    retried |= units
                    self.run("systemctl", "reset-failed", *units, check=False)
                    self.run("systemctl", "start", *units, check=False, timeout=60)
                    continue
            time.sleep(0.2)
        raise HostError(f"host {self.name} did not finish booting within {timeout:g} s (state: {state}); "
                        f"console:\n{self._console_tail()}")

    def _console_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no console output)"

    def run(self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as root inside the host (all of its namespaces), with a clean environment."""
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb", **(env or {})}
        command = ["nsenter", "-t", str(self.init_pid), "-a", "--", "env", "-i",
                   *(f"{k}={v}" for k, v in environment.items()), *argv]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise HostError(f"host {self.name}: {shlex.join(argv)} exited {result.returncode}:\n"
                            f"{result.stdout}{result.stderr}")
        return result

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a bash script inside the host."""
        return self.run("bash", "-euo", "pipefail", "-c", script, **kwargs)

    def ssh_command(self) -> list[str]:
        """``ssh`` to this host's root (for Ansible inventories, testinfra's ssh backend, debugging)."""
        return ["ssh", "-i", str(test_key()), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                "root@127.0.0.1"]

    def journal(self, unit: str, lines: int = 40) -> str:
        return self.run("journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines), "-u", unit,
                        check=False).stdout

    def stop(self, timeout: float = 120) -> None:
        """Power the host off (its services stop as on a real shutdown); kill it if that hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self.process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        # Killing a PID namespace's init kills every process in it.
        if self._init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(timeout=30)


@contextlib.contextmanager
def booted(names: Sequence[str], workdir: Path, binds: Sequence[Bind] = (),
           spec: RootfsSpec | None = None) -> Iterator[list[Host]]:
    """Boot hosts ``names`` (in parallel) and always stop every one of them afterwards."""
    reason = unavailable()
    if reason:
        raise HostError(reason)
    root = rootfs(spec)
    hosts = [Host(name, root, workdir / name, binds) for name in names]
    try:
        for host in hosts:
            host.start()
        for host in hosts:
            host.wait_booted()
        yield hosts
    finally:
        errors = []
        for host in hosts:
            try:
                host.stop()
            except Exception as error:  # noqa: BLE001 - stop the others whatever happens to one
                errors.append(f"{host.name}: {error}")
        if errors:
            raise HostError("could not stop every host: " + "; ".join(errors))
