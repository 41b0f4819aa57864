"""Real parts for tests: redis-server, worker processes and supervisord on free ports in temp dirs."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis

T = TypeVar("T")
BIN = Path(sys.executable).parent
CONDUCTOR = str(BIN / "conductor")
IS_ROOT = os.geteuid() == 0
ROOT = Path(__file__).resolve().parents[1]  # the checkout
# Whether other users may pass through to the checkout: services started from it as another user
# need that, and a clone in a 0700 home (root's, the commonest first run) does not give it.
CHECKOUT_SHARED = all(directory.stat().st_mode & 0o001 for directory in (ROOT, *ROOT.parents))
PRIVATE_CHECKOUT = ("the checkout is in a directory other users cannot enter (a clone in a 0700 home), so services "
                    "running as another user cannot start from it (test_apply covers make run's refusal there)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class RedisServer:
    """A private redis-server; ``appendonly`` makes restarts keep their data, as deployments do."""

    def __init__(self, directory: Path, appendonly: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no", *self.extra],
            stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except Exception:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def client(self) -> Redis:
        return Redis(port=self.port, decode_responses=True)


def write_config(path: Path, **values: Any) -> Path:
    """An app.properties with ``values`` (keys in any case)."""
    lines = [f"{key.upper()}={str(value).lower() if isinstance(value, bool) else value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def node_config(directory: Path, redis: RedisServer, **overrides: Any) -> Path:
    """A node's app.properties for tests: private paths, quick heartbeats, root allowed when root."""
    values: dict[str, Any] = {
        "NODE_NAME": "node-a",
        "TOTAL_CPUS": 8,
        "TOTAL_MEMORY": "16G",
        "WORKER_CONCURRENCY": 2,
        "REDIS_URL": redis.url,
        "HEARTBEAT_INTERVAL": 0.5,
        "HEARTBEAT_TTL": 2,
        "JOB_ROOT": directory / "jobs",
        "SERVICE_USER": "root" if IS_ROOT else os.environ.get("USER", "nobody"),
        "ALLOW_ROOT_JOBS": IS_ROOT,
        "INSTALL_PREFIX": BIN.parent,
        # Job cgroups are named after the worker (node-a-1 in most tests): a parent of its own per
        # test keeps one test's end-of-job kill away from another's processes of the same name.
        "CGROUP_PARENT": f"conductor-test-{hashlib.sha1(str(directory).encode()).hexdigest()[:12]}",
    }
    values.update({key.upper(): value for key, value in overrides.items()})
    return write_config(directory / "app.properties", **values)


def clear_settings_env(monkeypatch: Any) -> None:
    """Remove every conductor setting and $CONDUCTOR_CONFIG from this process's environment
    (``monkeypatch``: pytest's), so that only the app.properties a test writes counts."""
    from conductor.config import ENV_CONFIG, Settings

    names = {name.upper() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.upper() in names or key == ENV_CONFIG:
            monkeypatch.delenv(key)


def kill_processes_under(directory: Path) -> list[int]:
    """SIGKILL every process whose command line names ``directory`` (or a path below it); returns their PIDs."""
    marker = str(directory).encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "cmdline").read_bytes():
                continue
            os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):  # gone meanwhile, or not ours to read
            continue
        killed.append(int(entry.name))
    return killed


def clean_env() -> dict[str, str]:
    """The test process's environment without conductor keys that would override app.properties."""
    from conductor.config import Settings

    env = {k: v for k, v in os.environ.items() if k.upper() not in {f.upper() for f in Settings.model_fields}}
    env.pop("CONDUCTOR_CONFIG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def conductor(*args: str, config: Path | None = None, input: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``conductor`` command."""
    command = [CONDUCTOR, *args] + (["--config", str(config)] if config else [])
    result = subprocess.run(command, input=input, capture_output=True, text=True, env=clean_env(), timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}: {result.stderr}")
    return result


class WorkerProcess:
    """One ``conductor worker --index N`` process."""

    def __init__(self, config: Path, index: int, log: Path) -> None:
        self.config = config
        self.index = index
        self.log = log
        self.process = subprocess.Popen(
            [CONDUCTOR, "worker", "--index", str(index), "--config", str(config)],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=clean_env(),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Node:
    """A test node: its config, its Redis and its worker processes."""

    def __init__(self, directory: Path, redis: RedisServer, **overrides: Any) -> None:
        self.directory = directory
        self.redis = redis
        self.config = node_config(directory, redis, **overrides)
        self.workers: dict[int, WorkerProcess] = {}
        self.name = str(overrides.get("NODE_NAME", overrides.get("node_name", "node-a")))

    def start_worker(self, index: int, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(self.config, index, self.directory / f"worker-{index}.log")
        self.workers[index] = worker
        if wait:
            client = self.redis.client()
            wait_until(lambda: client.hget(f"worker:{self.name}-{index}", "pid") == str(worker.pid),
                       what=f"worker {index} to register:\n{worker.output()}")
        return worker

    def start_workers(self, count: int) -> list[WorkerProcess]:
        started = [self.start_worker(i, wait=False) for i in range(1, count + 1)]
        client = self.redis.client()
        for worker in started:
            wait_until(lambda w=worker: client.hget(f"worker:{self.name}-{w.index}", "pid") == str(w.pid),
                       what=f"worker {worker.index} to register:\n{worker.output()}")
        return started

    def submit(self, script: str, *options: str) -> int:
        return int(conductor("submit", *options, "-", config=self.config, input=script).stdout)

    def job(self, job_id: int) -> dict[str, Any]:
        from conductor import jobs

        found = jobs.get(self.redis.client(), job_id)
        assert found is not None
        return found

    def wait_state(self, job_id: int, *states: str, timeout: float = 30) -> dict[str, Any]:
        return wait_until(lambda: (j := self.job(job_id))["state"] in states and j,
                          timeout=timeout, what=f"job {job_id} to reach {states}")

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if IS_ROOT:  # workers running as root made their own cgroup subtree: leave the machine clean
            from conductor import cgroups
            from conductor.config import load_settings

            cgroups.remove_tree(load_settings(self.config).cgroup_parent)


class Supervisord:
    """A private supervisord whose programs come from ``conductor render supervisord``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.conf_d = directory / "conf.d"
        self.conf_d.mkdir(parents=True, exist_ok=True)
        self.config = directory / "supervisord.conf"
        self.port = free_port()
        self.config.write_text(
            f"[inet_http_server]\nport=127.0.0.1:{self.port}\n\n"
            f"[supervisord]\nlogfile={directory}/supervisord.log\npidfile={directory}/supervisord.pid\n"
            f"childlogdir={directory}\nnodaemon=true\n\n"
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=http://127.0.0.1:{self.port}\n\n"
            f"[include]\nfiles = {self.conf_d}/*.conf\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Supervisord:
        self.process = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.config)], env=clean_env(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.ctl("pid", check=False).returncode == 0, what="supervisord to answer")
        return self

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.config), *args],
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode not in (0, 3):  # 3: some program is not RUNNING (status)
            raise AssertionError(f"supervisorctl {args}: {result.stdout}{result.stderr}")
        return result

    def status(self) -> dict[str, tuple[str, int | None]]:
        """program -> (state, pid)."""
        found = {}
        for line in self.ctl("status", check=False).stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
                found[parts[0]] = (parts[1], pid)
        return found

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running(thing: Any) -> Iterator[Any]:
    try:
        yield thing
    finally:
        thing.stop()


def require(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise AssertionError(f"{command} is not installed; run `make test`, which installs it")
    return path


@contextmanager
def job_cgroups(config: Path) -> Iterator[str]:
    """A cgroup subtree for ``config``'s workers, prepared as launchers do, removed afterwards.

    Each use gets its own CGROUP_PARENT (written into the config), so parallel runs never share
    groups. Skips the test, saying why, where this machine's cgroups cannot be written (not root,
    read-only controllers in containers).
    """
    import pytest

    from conductor import cgroups

    parent = f"conductor-test-{os.getpid()}-{time.monotonic_ns()}"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("CGROUP_PARENT=")]
    config.write_text("\n".join([*lines, f"CGROUP_PARENT={parent}"]) + "\n")
    if not IS_ROOT:
        pytest.skip("job containment tests create cgroups: run them as root")
    prepared = conductor("prepare-cgroups", config=config, check=False)  # as the launchers do
    if prepared.returncode != 0:
        cgroups.remove_tree(parent)
        pytest.skip(f"this machine's cgroups cannot be written: {prepared.stderr.strip()}")
    try:
        yield parent
    finally:
        cgroups.remove_tree(parent)
class SentinelCluster:
    """A Redis primary, two replicas and three sentinels (``redis-server --sentinel``) on free ports.

    Two replicas, so that after the primary dies the new primary still has one: with sentinels
    configured a submission is acknowledged only once a replica holds it.
    """

    MASTER = "conductor"

    def __init__(self, directory: Path, down_after_ms: int = 2000) -> None:
        self.directory = directory
        self.primary = RedisServer(directory / "primary")
        self.replicas: list[RedisServer] = []
        self.down_after_ms = down_after_ms
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelCluster:
        self.primary.start()
        for i in (1, 2):
            replica = RedisServer(self.directory / f"replica-{i}", extra=("--replicaof", "127.0.0.1", str(self.primary.port)))
            self.replicas.append(replica.start())
        for i, port in enumerate(self.sentinel_ports):
            directory = self.directory / f"sentinel-{i}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} 2\n"
            )
            self.sentinels.append(subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=open(directory / "sentinel.log", "ab"), stderr=subprocess.STDOUT))
        wait_until(self._ready, timeout=60, what="three sentinels that see both replicas and each other")
        return self

    def sentinel(self, i: int = 0) -> Redis:
        return Redis(port=self.sentinel_ports[i], decode_responses=True, socket_timeout=2)

    def _ready(self) -> bool:
        try:
            for i in range(3):
                master = self.sentinel(i).sentinel_master(self.MASTER)
                if master["num-slaves"] < 2 or master["num-other-sentinels"] < 2:
                    return False
            return all(r.client().info("replication")["master_link_status"] == "up" for r in self.replicas)
        except Exception:
            return False

    def primary_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(self.MASTER)[1])

    def current(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        port = self.primary_port()
        return next(s for s in [self.primary, *self.replicas] if s.port == port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns the server killed."""
        victim = self.current()
        assert victim.process is not None
        victim.process.kill()
        victim.process.wait()
        return victim

    @contextmanager
    def replicas_stopped(self, cut_links: bool = False) -> Iterator[None]:
        """Every replica stopped (SIGSTOP) inside the block and resumed (SIGCONT) after it: replicas
        that acknowledge nothing for as long as the test needs, as on a hung host.

        ``cut_links``: the primary also drops its links to them (they cannot reconnect while
        stopped), so what it writes meanwhile exists only on the primary, as when a replica's link
        breaks. Without it a replica resumed after the primary's death would still read what the
        primary had sent into its socket before dying."""
        primary = self.current()
        for replica in self.replicas:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGSTOP)
        try:
            if cut_links:
                primary.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
            yield
        finally:
            self._resume_replicas()

    def _resume_replicas(self) -> None:
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self._resume_replicas()  # a stopped process would not act on SIGTERM
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
        for server in [*self.replicas, self.primary]:
            server.stop()
