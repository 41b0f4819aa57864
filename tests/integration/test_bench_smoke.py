"""The benchmark harness at its tiniest size, so `make bench` cannot rot between real runs.

It checks that a run produces its report and plot with every system in them; it never checks
a number: on a shared test machine the figures say nothing, and targets are judged by `make bench`.
The one count it does check is correctness, not speed: the failover lost no job and ran none twice.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conductor import cgroups
from support import IS_ROOT, require

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("conductor", "seed parent (multiprocessing)", "rq worker-pool", "N x rq worker")


def test_quick_bench_writes_its_report(tmp_path: Path) -> None:
    require("redis-server")
    out = tmp_path / "docs"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                             "--workdir", str(tmp_path / "work")],
                            check=False, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "BENCHMARKS.md").read_text()
    for section in ("## Results", "## Targets", "## Redis cost per job", "## Placement cost as the backlog grows",
                    "## Read paths at cluster size",
                    "## Command line, start to exit", "## Redis failover", "## Job containment", "## Machine", "## Method"):
        assert section in report
    for label in SYSTEMS:
        assert label in report
    assert "throughput" in report and "latency" in report and "redis-server" in report
    assert "commands per job" in report and "Cluster-shaped runs" in report and "| evalsha |" in report
    for read in ("`conductor workers`", "`conductor nodes`", "`GET /api/v1/nodes`", "`GET /metrics`",
                 "`GET /api/v1/jobs?limit=100`"):
        assert read in report
    for command in ("conductor submit", "rq enqueue", "conductor jobs", "conductor show", "conductor nodes"):
        assert f"| `{command}` |" in report
    for moment in ("sentinels promote the replica", "every worker beats on the new primary",
                   "a job submitted after the kill starts"):
        assert f"| {moment} |" in report
    assert "jobs lost: 0, run twice: 0" in report and "| with WAIT 1 (sentinels) |" in report
    if IS_ROOT and cgroups.detect_mode() is not cgroups.Mode.NONE:
        assert "| off |" in report and "| on |" in report and "Job containment at most 10% slower" in report
    else:  # not root, or no cgroups: the report says why instead
        assert "job containment's cost not measured" in report
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
