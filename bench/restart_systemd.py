"""``python -m bench.restart_systemd`` (root, opt-in): SIGKILL of a worker to its replacement registered,
under a real systemd.

The machines `make bench` runs on have no systemd as PID 1, so this boots one Debian host with
systemd-nspawn (tests/system/hosts.py, the system test tier's hosts), installs a node in it
with deploy/install.sh from a wheelhouse of this checkout (WORKER_CONCURRENCY=2, the host's
workers on a redis-server of this machine), and then kills workers with SIGKILL, one at a time,
timing each from just before the kill to the replacement's registration: the ``started_at``
that the new process writes into ``worker:<NODE>-<i>`` (the host shares this machine's clock).

The anchor is measured in the same run, alternating kill by kill: the same unit with a drop-in
restoring the former restart delay (``RestartSec=1``); a third variant without any delay shows
what is left, the worker's own start-up. The variants kill the two workers in turns, so no
instance comes near the unit's start limit. Not part of `make bench`: it needs root,
systemd-nspawn and debootstrap, and its first run builds the hosts' root file system.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import procstat
from .infra import REPO, RedisServer, wait_until

sys.path.insert(0, str(REPO / "tests" / "system"))
import hosts  # noqa: E402  (tests/system is a directory of modules, not a package)
from systemd_node import SOURCE, WHEELHOUSE, SystemdNode  # noqa: E402

DROP_IN = Path("/etc/systemd/system/conductor-worker@.service.d/bench-restart-delay.conf")
VARIANTS = {
    "rendered unit (RestartSec=0.1)": None,
    "anchor: RestartSec=1 (the former delay)": "[Service]\nRestartSec=1\n",
    "for comparison: RestartSec=0 (no delay)": "[Service]\nRestartSec=0\n",
}
WORKERS = 2


@dataclass(frozen=True)
class Kill:
    variant: str
    index: int
    registered: float  # seconds from just before the SIGKILL to the replacement's registration
    spawned: float  # ... to the replacement process's start: systemd's reaction and restart delay
    cpu: float  # CPU seconds the replacement had used just after it registered (its start-up work)


def set_variant(node: SystemdNode, drop_in: str | None) -> None:
    """Install or remove the drop-in, and make systemd read it (outside the timed part)."""
    if drop_in is None:
        node.host.run("rm", "-f", str(DROP_IN))
    else:
        node.host.run("mkdir", "-p", str(DROP_IN.parent))
        node.host.run("tee", str(DROP_IN), input=drop_in)
    node.systemctl("daemon-reload")


def kill_once(node: SystemdNode, index: int) -> tuple[float, float, float]:
    """SIGKILL worker ``index``: (seconds until the process systemd started instead registered,
    seconds until that process started, its CPU seconds by then). The host shares this machine's
    kernel, so its /proc times and this machine's clocks are the same."""
    old = node.main_pid(index)
    boot_clock = procstat.uptime()
    before = time.time()
    node.host.run("kill", "-KILL", str(old))

    def registered() -> float | None:
        record = node.record(index)
        pid = int(record.get("pid") or 0)
        if pid and pid != old and pid == node.main_pid(index):
            return float(record["started_at"])
        return None

    started = node.eventually(registered, f"worker {index} to be restarted and registered again", 60)
    fields = node.host.run("cat", f"/proc/{node.main_pid(index)}/stat").stdout
    fields = fields[fields.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / procstat.CLOCK_TICK
    spawned = int(fields[19]) / procstat.CLOCK_TICK - boot_clock
    return started - before, spawned, cpu


def measure(kills: int, workdir: Path) -> list[Kill]:
    redis = RedisServer(workdir / "redis").start()
    wheelhouse = workdir / "wheelhouse"
    try:
        built = subprocess.run([str(REPO / "deploy" / "wheelhouse.sh"), str(wheelhouse)], check=False,
                               capture_output=True, text=True, timeout=900)
        if built.returncode != 0:
            raise RuntimeError(f"deploy/wheelhouse.sh failed:\n{built.stdout}{built.stderr}")
        binds = [hosts.Bind(REPO, SOURCE), hosts.Bind(wheelhouse, WHEELHOUSE)]
        with hosts.booted([f"bench-{uuid.uuid4().hex[:6]}"], workdir / "hosts", binds) as (host,):
            node = SystemdNode(host, redis, cpus=len(os.sched_getaffinity(0)))  # type: ignore[arg-type]
            node.install(WORKERS, HEARTBEAT_INTERVAL=5, HEARTBEAT_TTL=15)
            node.ensure(WORKERS)
            found = []
            count = 0
            for round_ in range(kills + 1):  # the first round warms the page cache and is not counted
                for variant, drop_in in VARIANTS.items():
                    set_variant(node, drop_in)
                    index = 1 + count % WORKERS
                    count += 1
                    seconds, spawned, cpu = kill_once(node, index)
                    if round_:
                        found.append(Kill(variant, index, seconds, spawned, cpu))
                    wait_until(lambda: node.active(f"conductor-worker@{index}.service") == "active", 30,
                               f"worker {index} active again")
                    time.sleep(1.0)  # let the new worker settle (its first heartbeat, placement pass)
            return found
    finally:
        redis.stop()


def report(found: list[Kill]) -> str:
    lines = ["| unit | kills | SIGKILL -> registered, median | min | max | ... -> process started, median "
             "| its CPU until registered, median |", "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        kills = [k for k in found if k.variant == variant]
        if kills:
            values = [k.registered for k in kills]
            lines.append(f"| {variant} | {len(values)} | {1000 * statistics.median(values):.0f} ms "
                         f"| {1000 * min(values):.0f} ms | {1000 * max(values):.0f} ms "
                         f"| {1000 * statistics.median(k.spawned for k in kills):.0f} ms "
                         f"| {1000 * statistics.median(k.cpu for k in kills):.0f} ms |")
    load = Path("/proc/loadavg").read_text().split()[:3]
    return "\n".join(lines) + f"\n\nload average at the end: {' '.join(load)} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.restart_systemd", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per variant (default 10)")
    args = parser.parse_args(argv)
    reason = hosts.unavailable()
    if reason:
        print(f"bench.restart_systemd: cannot boot a systemd host here: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="conductor-restart-bench-"))
    try:
        found = measure(args.kills, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
