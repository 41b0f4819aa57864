"""The real parts every measurement stands on: a private redis-server and a private supervisord.

Free ports, waiting and the clean environment are tests/support.py's (one copy for tests and
benchmarks); Redis and supervisord here are tuned for benchmarking: no persistence in Redis,
quiet logs, and process-level CPU and memory readings.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from xmlrpc.client import ServerProxy

from redis import ConnectionPool, Redis
from redis.connection import Connection
from redis.exceptions import RedisError

T = TypeVar("T")
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import support  # noqa: E402  (tests/ is a directory of modules, not a package)
from support import clean_env, free_port  # noqa: E402,F401  (re-exported for the benchmarks)


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which and why."""


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.005) -> T:
    """tests/support.py's wait_until; a benchmark that hangs fails with a BenchError instead."""
    try:
        return support.wait_until(predicate, timeout=timeout, interval=interval, what=what)
    except AssertionError as error:
        raise BenchError(str(error)) from None


def counting_client(port: int, decode: bool = True) -> Redis:
    """A client that counts, by name, every command it sends (``client.sent``, a Counter).

    The benchmark's own commands (submitting is the system's cost, waiting for the jobs is not)
    must be told apart from the system's in Redis's ``INFO commandstats``; counting them at the
    source is exact, pipelines and transactions included.
    """
    sent: Counter[str] = Counter()

    class Counting(Connection):
        def send_command(self, *args: object, **kwargs: object) -> None:
            sent[_name(args)] += 1
            super().send_command(*args, **kwargs)

        def pack_commands(self, commands: Iterable[tuple[object, ...]]) -> list[bytes]:
            commands = list(commands)
            sent.update(_name(args) for args in commands)
            return super().pack_commands(commands)  # type: ignore[no-any-return]

    pool = ConnectionPool(connection_class=Counting, host="127.0.0.1", port=port, decode_responses=decode)
    client = Redis(connection_pool=pool)
    client.sent = sent  # type: ignore[attr-defined]
    return client


def _name(args: tuple[object, ...]) -> str:
    """commandstats' name of a command: lower case, ``config|get`` for a subcommand where Redis splits them."""
    first = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    return first.split()[0].lower()


class RedisServer:
    """A private redis-server on a free port, without persistence (``--save '' --appendonly no``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> RedisServer:
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 20, f"redis-server on port {self.port}", interval=0.02)
        return self

    def _answers(self) -> bool:
        try:
            return bool(Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except (RedisError, OSError):
            return False

    def client(self, decode: bool = True) -> Redis:
        """A client of this server; it counts the commands it sends (see :func:`counting_client`)."""
        return counting_client(self.port, decode)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


class Supervisord:
    """A private supervisord running whatever program sections a system gives it.

    Every system under test runs under one, as it would in production (conductor's rendered
    programs, RQ's documented ``numprocs`` recipe, or one program for a pool or a forking
    parent), so start-up, restarts and process discovery are the same for all of them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.conf_d = directory / "conf.d"
        self.conf_d.mkdir(parents=True, exist_ok=True)
        self.config = directory / "supervisord.conf"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            f"[inet_http_server]\nport=127.0.0.1:{self.port}\n\n"
            f"[supervisord]\nlogfile={directory}/supervisord.log\npidfile={directory}/supervisord.pid\n"
            f"childlogdir={directory}\nnodaemon=true\nloglevel=warn\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=http://127.0.0.1:{self.port}\n\n"
            f"[include]\nfiles = {self.conf_d}/*.conf\n"
        )

    def start(self) -> Supervisord:
        self.process = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.config)], env=clean_env(),
                                        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.ctl("pid").returncode == 0, 30, "supervisord to answer", interval=0.05)
        return self

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.config), *args],
                              check=False, capture_output=True, text=True, timeout=120)

    def processes(self) -> list[dict[str, Any]]:
        """supervisord's view of its programs (name, statename, pid, ...), over its XML-RPC API."""
        with ServerProxy(f"http://127.0.0.1:{self.port}/RPC2") as proxy:
            return list(proxy.supervisor.getAllProcessInfo())  # type: ignore[arg-type]

    def program_pids(self) -> dict[str, int]:
        """Program name -> PID of the programs running now."""
        return {info["name"]: int(info["pid"]) for info in self.processes() if info["pid"]}

    def all_running(self) -> bool:
        """Whether every program has passed its startsecs (a worker killed now would be restarted)."""
        found = self.processes()
        return bool(found) and all(info["statename"] == "RUNNING" for info in found)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def compile_conductor() -> None:
    """Write conductor's bytecode (``__pycache__``) before anything is measured.

    An installed node has it: pip compiles a package when it installs it. A checkout installed in
    editable mode gets it only when a process may write it, and with PYTHONDONTWRITEBYTECODE set
    (as on some shared machines) every conductor process (each worker, each command) would compile
    its modules from source at every start, which RQ's processes, installed by pip, never do. The
    figures are of an installed node, so the benchmark compiles first, as pip would.
    """
    import compileall

    if not compileall.compile_dir(str(REPO / "conductor"), quiet=1):
        raise BenchError(f"could not compile {REPO / 'conductor'}")
