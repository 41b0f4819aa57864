"""The cost of job containment: ``python -m bench.containment`` (as root; `make bench` runs it too).

Throughput of trivial jobs through conductor's real path with containment off and on, in one
run on one machine (runs interleaved, best of each, since load from elsewhere only ever slows a
run down), and the start latency (submit to the script's first instruction) with it on. Each
contained job costs a cgroup per hierarchy created, limited, joined, read and removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conductor import cgroups, resources

from . import scenarios
from .conductor_system import ConductorSystem
from .infra import BIN, BenchError, clean_env


class ContainmentSystem(ConductorSystem):
    """conductor with JOB_CONTAINMENT off, or on below a subtree prepared as `make run` prepares it."""

    def __init__(self, root: Path, workers: int, contained: bool) -> None:
        super().__init__(root, workers)
        self.contained = contained
        self.parent = f"conductor-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.key = "contained" if contained else "uncontained"
        self.label = f"conductor, containment {'on' if contained else 'off'}"

    def properties(self) -> dict[str, object]:
        values = super().properties()
        values.update({"JOB_CONTAINMENT": "required" if self.contained else "off", "CGROUP_PARENT": self.parent})
        return values

    def configure(self) -> None:
        super().configure()
        if self.contained:
            subprocess.run([str(BIN / "conductor"), "prepare-cgroups", "--config", str(self.config)],
                           check=True, capture_output=True, env=clean_env(), timeout=60)

    def start(self) -> None:
        super().start()
        shown = {node["name"]: node["containment"] for node in resources.nodes(self.connection)}
        if (shown.get("bench-node") != "none") != self.contained:
            raise BenchError(f"{self.label}: the node reports containment {shown}")

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            cgroups.remove_tree(self.parent)


@dataclass(frozen=True)
class ContainmentCost:
    """Throughput of the same trivial jobs with containment off and on (best of each), start latency with it on."""

    jobs: int
    workers: int
    runs: int
    off: scenarios.Throughput
    on: scenarios.Throughput
    latencies: list[float]

    @property
    def slowdown(self) -> float:
        """How much slower a contained node drains trivial jobs: 0.1 is 10 % slower."""
        return 1 - self.on.rate / self.off.rate

    def table(self) -> str:
        p50, p99 = scenarios.percentile(self.latencies, 0.5), scenarios.percentile(self.latencies, 0.99)
        return "\n".join([
            f"| containment | {self.jobs} trivial jobs, N={self.workers}, best of {self.runs} | start latency p50 / p99 |",
            "|---|---|---|",
            f"| off | {self.off.rate:.1f} jobs/s | |",
            f"| on | {self.on.rate:.1f} jobs/s ({-100 * self.slowdown:+.1f} %) | "
            f"{1000 * p50:.1f} ms / {1000 * p99:.1f} ms |",
        ])


def unavailable() -> str:
    """Why containment cannot be measured here, or "" when it can (root, writable v1/v2 cgroups)."""
    if os.geteuid() != 0:
        return "containment creates cgroups: run as root"
    if cgroups.detect_mode() is cgroups.Mode.NONE:
        return "no cgroup hierarchy with the controllers jobs need on this machine"
    return ""


def measure(workdir: Path, jobs: int, workers: int, runs: int, latency_samples: int,
            say: Callable[[str], None]) -> ContainmentCost:
    """Off and on interleaved, ``runs`` times each: load from elsewhere only slows a run, so the
    best of each is the fairest pair."""
    scripts = scenarios.Scripts.write(workdir / "scripts", 0.1)
    best: dict[bool, scenarios.Throughput] = {}
    latencies: list[float] = []
    for run in range(runs):
        for contained in (False, True):
            with ContainmentSystem(workdir / f"{run}-{contained}", workers, contained) as system:
                scenarios.warm_up(system, scripts.trivial, 20)
                found = scenarios.throughput(system, scripts.trivial, jobs)
                say(f"{system.label}: {found.rate:.1f} jobs/s ({found.failures} failed)")
                if contained not in best or found.rate > best[contained].rate:
                    best[contained] = found
                if contained and run == 0:
                    latencies = scenarios.latency(system, lambda s=system: s.submit(scripts.stamper), scripts.stamp,
                                                  latency_samples, 0.05)
    return ContainmentCost(jobs, workers, runs, best[False], best[True], latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.containment", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="runs of each mode, interleaved")
    parser.add_argument("--latency-samples", type=int, default=50)
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"bench.containment: {why}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="conductor-bench-containment-"))
    try:
        cost = measure(workdir, args.jobs, args.workers, args.runs, args.latency_samples,
                       lambda line: print(line, file=sys.stderr))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(cost.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
