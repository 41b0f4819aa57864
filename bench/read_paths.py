"""Read paths at cluster size: what an operator's listing and a Prometheus scrape cost.

Two clusters live side by side for the whole measurement, each in its own redis-server and
served by its own ``conductor api`` process: the large one of the target (1,000 workers over 100
nodes, 100,000 stored jobs) and a small anchor (a node or two), both written by
tests/cluster_fixture.py with conductor's own functions and scripts. The five reads are timed
end to end as a user meets them, alternating between the clusters sample by sample so that load
from other processes falls on both alike:

- ``conductor workers`` and ``conductor nodes``: the whole command, interpreter start-up
  included (that part is the same for both clusters and shows in the small column), and the
  same command run by click inside this process (its own part: reading, formatting, printing);
- ``GET /api/v1/nodes``, ``GET /metrics``, ``GET /api/v1/jobs?limit=100``: one request on a
  kept-alive connection to the running API.

For each read, Redis's own ledger (``INFO commandstats``, before and after one read alone) gives
the commands it sent and the server's time spent on them, so that growth with the cluster shows
up as commands even on a machine too noisy to time it.

``python -m bench.read_paths [--quick]`` runs this part alone and prints its table.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner
from redis import Redis

from conductor import cli
from conductor.store import connect

from .infra import BIN, BenchError, RedisServer, clean_env, free_port, wait_until
from .scenarios import percentile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import cluster_fixture  # noqa: E402  (tests/ is a directory of modules, shared with the benchmarks)
from cluster_fixture import Shape  # noqa: E402

TARGET = 0.100  # seconds, p50 of each read on the large cluster
CLI_READS = ("workers", "nodes")
HTTP_READS = ("/api/v1/nodes", "/metrics", "/api/v1/jobs?limit=100")
READS = (*(f"conductor {name}" for name in CLI_READS), *(f"GET {path}" for path in HTTP_READS))
IN_PROCESS = " (in-process)"  # the same command run by click in this process: no interpreter start-up
MEASURED = (*READS, *(f"conductor {name}{IN_PROCESS}" for name in CLI_READS))
QUICK_LARGE = Shape(nodes=10, workers_per_node=10, jobs=5_000, pending=500)


@dataclass
class ReadCost:
    """One read on one cluster: end-to-end seconds per sample, and Redis's side of one read."""

    samples: list[float] = field(default_factory=list)
    commands: int = 0
    redis_us: int = 0
    size: int = 0  # bytes of the answer

    @property
    def p50(self) -> float:
        return percentile(self.samples, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)


@dataclass
class ReadPaths:
    large: Shape
    small: Shape
    costs: dict[tuple[str, str], ReadCost]  # (read, "large" | "small")
    build_seconds: float  # writing the large cluster into Redis


class Cluster:
    """A populated Redis and a ``conductor api`` serving it, on free ports under ``root``."""

    def __init__(self, root: Path, shape: Shape) -> None:
        self.root = root
        self.shape = shape
        self.redis = RedisServer(root / "redis")
        self.config = root / "app.properties"
        self.port = free_port()
        self.api: subprocess.Popen[bytes] | None = None
        self.http: http.client.HTTPConnection | None = None

    def __enter__(self) -> Cluster:
        self.redis.start()
        self.config.write_text(f"NODE_NAME={cluster_fixture.node_name(1)}\nREDIS_URL={self.redis.url}\n"
                               f"LOG_LEVEL=WARNING\nAPI_ENABLED=true\nAPI_HOST=127.0.0.1\nAPI_PORT={self.port}\n"
                               f"JOB_ROOT={self.root / 'jobs'}\n")
        return self

    def populate(self) -> float:
        start = time.perf_counter()
        cluster_fixture.populate(connect(self.redis.url), connect(self.redis.url, decode=False), self.shape)
        return time.perf_counter() - start

    def serve(self) -> None:
        with open(self.root / "api.log", "ab") as log:
            self.api = subprocess.Popen([str(BIN / "conductor"), "api", "--config", str(self.config)],
                                        env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 60, f"conductor api on port {self.port}", interval=0.05)
        self.connect()

    def _answers(self) -> bool:
        if self.api is not None and self.api.poll() is not None:
            raise BenchError(f"conductor api exited with {self.api.returncode}: "
                             f"{(self.root / 'api.log').read_text(errors='replace')[-500:]}")
        probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            probe.request("GET", "/healthz")
            return probe.getresponse().status == 200
        except OSError:
            return False
        finally:
            probe.close()

    def read(self, name: str) -> int:
        """Perform one read as its user would; returns the size of the answer."""
        kind, what = name.split(" ", 1)
        if name.endswith(IN_PROCESS):
            result = CliRunner().invoke(cli.main, [what.removesuffix(IN_PROCESS), "--config", str(self.config)])
            if result.exit_code:
                raise BenchError(f"{name} exited with {result.exit_code}: {result.output[-500:]}")
            return len(result.output)
        if kind == "conductor":
            done = subprocess.run([str(BIN / "conductor"), what, "--config", str(self.config)],
                                  capture_output=True, env=clean_env(), timeout=120, check=False)
            if done.returncode:
                raise BenchError(f"{name} exited with {done.returncode}: {done.stderr[-500:]!r}")
            return len(done.stdout)
        try:
            body, status = self._get(what)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # uvicorn closes a connection idle for 5 s (while the command-line reads ran): open another
            self.connect()
            body, status = self._get(what)
        if status != 200:
            raise BenchError(f"{name} answered {status}: {body[:300]!r}")
        return len(body)

    def _get(self, path: str) -> tuple[bytes, int]:
        assert self.http is not None
        self.http.request("GET", path)
        response = self.http.getresponse()
        return response.read(), response.status

    def connect(self) -> None:
        if self.http is not None:
            self.http.close()
        self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)


    def __exit__(self, *_: object) -> None:
        if self.http is not None:
            self.http.close()
        if self.api is not None and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        self.redis.stop()


def commandstats(client: Redis) -> dict[str, tuple[int, int]]:
    """Command -> (calls, microseconds) from ``INFO commandstats``, without INFO itself."""
    stats = client.info("commandstats")
    return {name: (int(v["calls"]), int(v["usec"])) for name, v in stats.items() if name != "cmdstat_info"}


def redis_side(cluster: Cluster, read: Callable[[], int]) -> tuple[int, int, int]:
    """(commands, server microseconds, answer bytes) of one read, from Redis's own counters."""
    client = cluster.redis.client()
    before = commandstats(client)
    size = read()
    after = commandstats(client)
    calls = sum(c - before.get(name, (0, 0))[0] for name, (c, _) in after.items())
    usec = sum(u - before.get(name, (0, 0))[1] for name, (_, u) in after.items())
    return calls, usec, size


def measure(root: Path, large: Shape, samples_cli: int, samples_http: int,
            say: Callable[[str], None] = lambda _: None) -> ReadPaths:
    """Build both clusters, then time every read on both, alternating."""
    costs = {(read, which): ReadCost() for read in MEASURED for which in ("large", "small")}
    small = cluster_fixture.SMALL
    with Cluster(root / "large", large) as big, Cluster(root / "small", small) as anchor:
        say(f"read paths: writing {large} into Redis")
        build = big.populate()
        anchor.populate()
        say(f"read paths: written in {build:.1f} s; starting the APIs")
        big.serve()
        anchor.serve()
        clusters = {"large": big, "small": anchor}
        for read in MEASURED:  # one untimed read each: the first one pays for imports and script loads
            for which, cluster in clusters.items():
                cluster.read(read)
                cost = costs[read, which]
                cost.commands, cost.redis_us, cost.size = redis_side(cluster, lambda: cluster.read(read))
        for read in MEASURED:
            count = samples_cli if read in READS and read.startswith("conductor") else samples_http
            for cluster in clusters.values():
                cluster.read(read)  # untimed: a fresh connection if the API closed the idle one
            for _ in range(count):
                for which, cluster in clusters.items():
                    start = time.perf_counter()
                    cluster.read(read)
                    costs[read, which].samples.append(time.perf_counter() - start)
            say(f"read paths: {read}: p50 {1000 * costs[read, 'large'].p50:.1f} ms on the large cluster, "
                f"{1000 * costs[read, 'small'].p50:.1f} ms on the small one")
    return ReadPaths(large, small, costs, build)


def table(found: ReadPaths) -> str:
    header = ("| read | target (large, p50) | large: p50 | large: p99 | small: p50 | small: p99 "
              "| Redis commands, large / small | Redis server time, large / small | answer, large |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for read in MEASURED:
        big, small = found.costs[read, "large"], found.costs[read, "small"]
        target = f"≤ {1000 * TARGET:.0f} ms" if read in READS else "(the command's own part)"
        name = f"`{read.removesuffix(IN_PROCESS)}`{IN_PROCESS}" if read.endswith(IN_PROCESS) else f"`{read}`"
        lines.append(
            f"| {name} | {target} | {_ms(big.p50)} | {_ms(big.p99)} | {_ms(small.p50)} "
            f"| {_ms(small.p99)} | {big.commands:,} / {small.commands:,} "
            f"| {big.redis_us / 1000:.1f} / {small.redis_us / 1000:.1f} ms | {_size(big.size)} |")
    return "\n".join(lines)


def targets(found: ReadPaths) -> list[str]:
    lines = []
    for read in READS:
        big, small = found.costs[read, "large"], found.costs[read, "small"]
        detail = (f"p50 {_ms(big.p50)} with {found.large} (small anchor: {_ms(small.p50)}, "
                  f"{len(big.samples)} samples each)")
        lines.append(f"Read path `{read}` p50 ≤ {1000 * TARGET:.0f} ms at cluster size: "
                     f"**{'met' if big.p50 <= TARGET else 'missed'}**: {detail}")
    return lines


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _size(count: int) -> str:
    return f"{count / 1024:.0f} KiB" if count >= 1024 else f"{count} B"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.read_paths", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 100-worker cluster and few samples")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="conductor-reads-") as workdir:
        if args.quick:
            found = measure(Path(workdir), QUICK_LARGE, 2, 5, say)
        else:
            found = measure(Path(workdir), cluster_fixture.LARGE, 20, 100, say)
    print(table(found))
    print()
    print("\n".join(targets(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
