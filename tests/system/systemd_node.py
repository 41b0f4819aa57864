"""A conductor node installed with deploy/install.sh on a booted systemd host, watched from the machine.

The host shares the machine's network, so its workers use the test's redis-server on the
machine's 127.0.0.1, and the test reads jobs and worker records straight from that Redis.
"""

from __future__ import annotations

import subprocess
from typing import Any

from hosts import Host
from redis import Redis
from support import RedisServer, wait_until

from conductor import jobs, keys, resources

SOURCE = "/srv/conductor"  # the checkout, bound read-only into the host
WHEELHOUSE = "/srv/wheelhouse"  # the session's wheelhouse, bound read-only
STAGED_CONFIG = "/root/app.properties"  # what install.sh is given; it installs it in /etc/conductor
CONFIG = "/etc/conductor/app.properties"
PREFIX = "/opt/conductor"
JOB_ROOT = "/var/lib/conductor/jobs"
USER = "conductor"


class SystemdNode:
    """One node: its host, its configuration, and looks at it through systemd and Redis."""

    def __init__(self, host: Host, redis: RedisServer, cpus: int) -> None:
        self.host = host
        self.redis = redis
        self.name = host.name
        self.cpus = cpus
        self.concurrency = 0
        self.mode = ""
        self.client: Redis = redis.client()

    # --- installing ---------------------------------------------------------------------------
    def config_text(self, concurrency: int, **overrides: Any) -> str:
        values: dict[str, Any] = {
            "NODE_NAME": self.name,
            "TOTAL_CPUS": self.cpus,
            "TOTAL_MEMORY": "4G",
            "WORKER_CONCURRENCY": concurrency,
            "REDIS_URL": self.redis.url,
            "HEARTBEAT_INTERVAL": 1,
            "HEARTBEAT_TTL": 5,
            "WORKER_STOP_TIMEOUT": 300,
            "JOB_ROOT": JOB_ROOT,
            "SERVICE_USER": USER,
        }
        values.update(overrides)
        return "".join(f"{key}={value}\n" for key, value in values.items())

    def install(self, concurrency: int, mode: str = "systemd", **overrides: Any) -> str:
        """Run deploy/install.sh in the host with WORKER_CONCURRENCY=concurrency; returns its output."""
        self.host.run("tee", STAGED_CONFIG, input=self.config_text(concurrency, **overrides))
        result = self.host.run(f"{SOURCE}/deploy/install.sh", "--mode", mode, "--config", STAGED_CONFIG,
                               "--wheelhouse", WHEELHOUSE, check=False, timeout=600)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise AssertionError(f"install.sh --mode {mode} (N={concurrency}) exited {result.returncode}:\n"
                                 f"{output}\n{self.journal()}")
        self.concurrency, self.mode = concurrency, mode
        return output

    def ensure(self, concurrency: int = 4) -> None:
        """The node as most tests start from it: systemd, N workers running and registered."""
        if (self.mode, self.concurrency) != ("systemd", concurrency):
            self.install(concurrency)
        self.systemctl("start", "conductor-workers.target")
        self.wait_registered(range(1, concurrency + 1))

    # --- systemd ------------------------------------------------------------------------------
    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run("systemctl", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, index: int) -> int:
        return int(self.show(f"conductor-worker@{index}.service", "MainPID")["MainPID"])

    def active(self, unit: str) -> str:
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def journal(self, lines: int = 30) -> str:
        return self.host.run("journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines),
                             "-u", "conductor-*", check=False).stdout

    # --- Redis --------------------------------------------------------------------------------
    def record(self, index: int) -> dict[str, str]:
        return self.client.hgetall(keys.worker(f"{self.name}-{index}"))

    def registered_pid(self, index: int) -> int | None:
        pid = self.record(index).get("pid")
        return int(pid) if pid else None

    def wait_registered(self, indices: range | list[int], timeout: float = 60) -> dict[int, int]:
        """Wait until each worker in ``indices`` is registered by the process systemd runs for it."""
        def check() -> dict[int, int] | None:
            pids = {i: self.main_pid(i) for i in indices}
            if all(pid and self.registered_pid(i) == pid for i, pid in pids.items()):
                return pids
            return None
        return self.eventually(check, f"workers {list(indices)} to register with their MainPID", timeout)

    def eventually(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        """wait_until, with the host's conductor journal in the failure message."""
        try:
            return wait_until(predicate, timeout=timeout, interval=0.1, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- journal of the host's conductor units:\n{self.journal()}") from None

    def ledger(self) -> dict[str, Any]:
        return next(n for n in resources.nodes(self.client) if n["name"] == self.name)

    # --- jobs ---------------------------------------------------------------------------------
    def submit(self, script: str, *options: str) -> int:
        """Submit with the host's own `conductor submit`, as an operator on the node would."""
        result = self.host.run(f"{PREFIX}/bin/conductor", "submit", "--config", CONFIG, *options, "-", input=script)
        return int(result.stdout.strip())

    def job(self, job_id: int) -> dict[str, Any]:
        found = jobs.get(self.client, job_id)
        assert found is not None, f"job {job_id} does not exist"
        return found

    def wait_state(self, job_id: int, *states: str, timeout: float = 60) -> dict[str, Any]:
        return self.eventually(lambda: (j := self.job(job_id))["state"] in states and j,
                               f"job {job_id} to reach {states}", timeout)

    def job_field(self, job_id: int, field: str) -> str | None:
        return self.client.hget(keys.job(job_id), field)

    def output(self, job_id: int) -> str:
        return self.host.run("cat", f"{JOB_ROOT}/{job_id}/slurm-{job_id}.out").stdout

    def release(self, job_id: int) -> None:
        """Let a job written with :data:`HOLD` finish (the file appears in its job directory)."""
        self.host.run("runuser", "-u", USER, "--", "touch", f"{JOB_ROOT}/{job_id}/release")

    def group_processes(self, pgid: int) -> list[str]:
        """Processes of process group ``pgid`` in the host (a job's session)."""
        out = self.host.run("ps", "-o", "pid=,args=", "-g", str(pgid), check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def uid(self, pid: int) -> int:
        status = self.host.run("cat", f"/proc/{pid}/status").stdout
        return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


# A job that runs until released; it leaves a background child too, to show that nothing of a job
# outlives it. The worker runs it in the job directory, where release() creates the file.
HOLD = "#!/bin/bash\nsleep 600 &\necho started\nwhile [ ! -e release ]; do sleep 0.1; done\necho released\n"
