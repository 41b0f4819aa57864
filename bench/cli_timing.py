"""Command-line start-up: each command timed from its start to its exit, as a user at a shell sees it.

`conductor submit` is compared with `rq enqueue` (both store one job and exit; the job id is
the last thing either prints), and `conductor jobs`, `show` and `nodes` are timed on a cluster
of 16 nodes holding 10,000 stored jobs. Both programs start a fresh interpreter per call, so
almost all of the time is Python importing modules: the figure says what a command imports.

The cluster is built with conductor's own scripts, as bench/placement_cost.py builds its own:
nodes declared with ``node_up`` and given worker slots as registration gives them, jobs stored
with ``submit``, placed with the real ``placement.place`` and ended with ``finish``. Every timed
``conductor submit`` is placed at once (free slots exist) and so pays for what placing costs
(RQ's enqueue), as on a real node; its job is ended again before the next sample.

The commands are run in turns (submit, enqueue, jobs, show, nodes, then again) so that load
from other processes falls on all of them alike; each figure is the median of its samples,
wall-clock and CPU (user + system of the child process). A bare ``python -c 'import redis'`` is
timed in the same turns: the floor under any Python client of Redis.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conductor import jobs, keys, placement, scripts
from conductor.jobs import JobSpec, JobState, JobSubmission
from conductor.store import connect

from .infra import BIN, BenchError, RedisServer, clean_env, compile_conductor

NODES = 16
SLOTS = 4
NODE_CPUS = 32
NODE_MEMORY = 64 << 30
STORED = 10_000
BATCH = 2000
RQ_QUEUE = "bench-cli"


@dataclass(frozen=True)
class CliTiming:
    """One command's samples, in seconds."""

    command: str
    wall: list[float]
    cpu: list[float]

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


class CliCluster:
    """16 nodes with 4 worker slots each and ``stored`` ended jobs, on a private Redis."""

    def __init__(self, redis: RedisServer, root: Path, stored: int = STORED) -> None:
        self.redis = redis
        self.connection = connect(redis.url)
        self.raw = connect(redis.url, decode=False)
        self.config = root / "app.properties"
        self.config.write_text(
            f"NODE_NAME=cli-01\nTOTAL_CPUS={NODE_CPUS}\nTOTAL_MEMORY=64G\nREDIS_URL={redis.url}\n"
            f"JOB_ROOT={root / 'jobs'}\nLOG_LEVEL=WARNING\n")
        for n in range(1, NODES + 1):
            name = f"cli-{n:02d}"
            scripts.run(self.connection, "node_up", name, NODE_CPUS, NODE_MEMORY)
            self.connection.sadd(keys.node_workers(name), *[f"{name}-{i}" for i in range(1, SLOTS + 1)])
        self.script = root / "job.sh"
        self.script.write_text("#!/bin/bash\ntrue\n")
        self._store(stored)

    def _store(self, count: int) -> None:
        """``count`` jobs submitted, placed and ended COMPLETED, as a busy cluster keeps them."""
        first = jobs.submit(self.connection, JobSubmission(job=JobSpec(name="stored"), script="true\n"))
        record: dict[str, str] = self.connection.hgetall(keys.job(first))  # type: ignore[assignment]
        template = [item for name, value in record.items() if name not in ("id", "state", "submitted_at")
                    for item in (name, value)]
        submit = scripts.script(self.connection, "submit")
        for start in range(0, count - 1, BATCH):
            with self.connection.pipeline(transaction=False) as pipe:
                for _ in range(min(BATCH, count - 1 - start)):
                    submit(args=template, client=pipe)
                pipe.execute()
        while self.connection.zcard(keys.state(JobState.PENDING.value)):
            placed = placement.place(self.connection, self.raw)
            if not placed:
                raise BenchError("stored jobs stay PENDING on 16 nodes with free slots")
            self.finish([job_id for job_id, _ in placed])

    def finish(self, job_ids: list[int]) -> None:
        """End jobs as their workers would and drop their RQ entries (no worker consumes them here)."""
        finish = scripts.script(self.connection, "finish")
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                finish(args=[job_id, "COMPLETED", 0, "", ""], client=pipe)
                pipe.delete(f"rq:job:conductor-{job_id}")
            for n in range(1, NODES + 1):
                pipe.delete(f"rq:queue:{keys.queue_name(f'cli-{n:02d}')}")
            pipe.execute()

    def commands(self) -> dict[str, list[str]]:
        conductor = str(BIN / "conductor")
        config = ["--config", str(self.config)]
        shown = self.connection.zrange(keys.state(JobState.COMPLETED.value), -1, -1)[0]
        return {
            "conductor submit": [conductor, "submit", *config, str(self.script)],
            "rq enqueue": [str(BIN / "rq"), "enqueue", "--url", self.redis.url, "--queue", RQ_QUEUE, "--quiet",
                           "bench.baselines.work.run_script", str(self.script)],
            "conductor jobs": [conductor, "jobs", *config],
            "conductor show": [conductor, "show", *config, str(shown)],
            "conductor nodes": [conductor, "nodes", *config],
            # What any Python client of Redis pays before its first command (redis-py imports its
            # asyncio client too, whatever the caller uses): the floor under both programs.
            "floor: python -c 'import redis'": [str(BIN / "python"), "-c", "import redis"],
        }

    def after(self, name: str, output: bytes) -> None:
        """End the job a timed submit placed, so every sample finds a free slot."""
        if name == "conductor submit":
            self.finish([int(output.decode().strip())])


def timed(command: list[str], cwd: Path) -> tuple[float, float, bytes]:
    """(wall seconds, CPU seconds of the child, its stdout); a failing command fails the benchmark."""
    env = clean_env()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, cwd=cwd, timeout=120, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command[:2])} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, done.stdout


def cli_timings(root: Path, samples: int, stored: int = STORED) -> dict[str, CliTiming]:
    """Every command ``samples`` times, in turns, after one untimed warm-up call each."""
    root.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(root / "redis").start()
    try:
        cluster = CliCluster(redis, root, stored)
        commands = cluster.commands()
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(samples + 1):  # the first round fills the page cache and is not counted
            for name, command in commands.items():
                wall, cpu, output = timed(command, root)
                cluster.after(name, output)
                if round_:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        return {name: CliTiming(name, walls[name], cpus[name]) for name in commands}
    finally:
        redis.stop()


def table(timings: dict[str, CliTiming]) -> str:
    """Median wall and CPU per command, and each against `rq enqueue` measured in the same turns."""
    anchor = timings.get("rq enqueue")
    lines = ["| command | wall, median | wall, min | CPU, median | vs `rq enqueue` (wall, median) |",
             "|---|---|---|---|---|"]
    for name, timing in timings.items():
        ratio = f"{timing.wall_median / anchor.wall_median:.2f}x" if anchor else "—"
        lines.append(f"| `{name}` | {1000 * timing.wall_median:.0f} ms | {1000 * min(timing.wall):.0f} ms "
                     f"| {1000 * timing.cpu_median:.0f} ms | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    """``python -m bench.cli_timing``: this measurement alone, printed as the report's table."""
    import argparse
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.cli_timing", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    compile_conductor()
    root = Path(tempfile.mkdtemp(prefix="conductor-cli-bench-"))
    try:
        print(table(cli_timings(root, args.samples)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
