"""The cost of job containment: ``python -m bench.containment`` (run as root; part of ``make bench``).

Throughput of trivial jobs through conductor's real path with containment off and on, in one
run on one machine (runs interleaved, best of each, since load from elsewhere only ever slows a
run down), and the start latency (submit to the script's first instruction) with it on. Each
contained job costs a cgroup per hierarchy created, limited, joined, read and removed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conductor import cgroups, resources

from . import scenarios
from .conductor_system import ConductorSystem
from .infra import BIN, BenchError, clean_env
from .run import Scripts


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.containment", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="runs of each mode, interleaved")
    parser.add_argument("--latency-samples", type=int, default=50)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.containment creates cgroups: run it as root", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="conductor-bench-containment-"))
    scripts = Scripts.write(workdir / "scripts", 0.1)
    best: dict[bool, scenarios.Throughput] = {}
    latencies: list[float] = []
    for run in range(args.runs):
        for contained in (False, True):
            with ContainmentSystem(workdir / f"{run}-{contained}", args.workers, contained) as system:
                scenarios.warm_up(system, scripts.trivial, 20)
                found = scenarios.throughput(system, scripts.trivial, args.jobs)
                print(f"{system.label}: {found.rate:.1f} jobs/s ({found.failures} failed)", file=sys.stderr)
                if contained not in best or found.rate > best[contained].rate:
                    best[contained] = found
                if contained and run == 0:
                    latencies = scenarios.latency(system, lambda s=system: s.submit(scripts.stamper), scripts.stamp,
                                                  args.latency_samples, 0.05)
    off, on = best[False].rate, best[True].rate
    print(f"| containment | {args.jobs} trivial jobs, N={args.workers}, best of {args.runs} | start latency p50 / p99 |")
    print("|---|---|---|")
    print(f"| off | {off:.1f} jobs/s | |")
    print(f"| on | {on:.1f} jobs/s ({100 * (on - off) / off:+.1f} %) | "
          f"{1000 * scenarios.percentile(latencies, 0.5):.1f} ms / {1000 * scenarios.percentile(latencies, 0.99):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
