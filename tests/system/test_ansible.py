"""The Ansible deployment, for real: ansible-playbook against two booted systemd hosts sharing one Redis.

Two hosts (systemd-nspawn, each with its own overlay, host name and sshd port on the machine's
127.0.0.1, reached with the test key) and a redis-server on the machine's 127.0.0.1 that both
reach over the shared network. The tests run ansible/deploy.yml as an operator would, with an
inventory written here, and check the hosts with the testinfra suite in tests/infra (run as
its own pytest, with the same inventory), with the workers' records in Redis and with jobs.

They share one deployment and run in order: check mode on fresh hosts, the first deployment,
a second run that changes nothing, jobs spread over both nodes, scaling (keeping running
workers), a rolling upgrade that lets running jobs finish, and supervisord mode on one host.
Every host is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

import hosts
from conductor import jobs
from support import RedisServer, free_port, require, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOK = ROOT / "ansible" / "deploy.yml"
JOB_ROOT = "/var/lib/conductor/jobs"
# Jobs of these tests run until the test creates this file on their host. Not in JOB_ROOT: jobs run
# as JOB_USER (conductor-job, the role's default), whom JOB_ROOT keeps out.
RELEASE = "/var/lib/conductor-test-release"
PLAYBOOK_TIMEOUT = 600
APPLY_TASK = "TASK [conductor : Converge the node with `conductor apply --mode systemd`]"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


@dataclass
class Run:
    """One ansible-playbook run: its exit status, output and per-host recap."""

    returncode: int
    output: str
    log: Path

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
                for m in RECAP.finditer(self.output)}

    def tail(self, lines: int = 250) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def check(self) -> Run:
        assert self.returncode == 0 and self.recap, (
            f"ansible-playbook exited {self.returncode} (full log {self.log}):\n{self.tail()}")
        return self

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]


@dataclass
class Cluster:
    """The two hosts, the Redis they share, the inventory and the checkout snapshot the playbook deploys."""

    hosts: list[hosts.Host]
    redis: RedisServer
    workdir: Path
    source: Path
    wheelhouse: Path
    api_port: int
    api_token: str
    ansible_playbook: Path | None = None  # an operator's own; None: this environment's (BIN)
    vars: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: int = 0

    @property
    def names(self) -> list[str]:
        return [host.name for host in self.hosts]

    @property
    def inventory(self) -> Path:
        return self.workdir / "inventory.ini"

    @property
    def client(self) -> Redis:
        return self.redis.client()

    def host(self, name: str) -> hosts.Host:
        return next(host for host in self.hosts if host.name == name)

    def set(self, name: str, **values: Any) -> None:
        """Change host variables of the inventory (what an operator edits)."""
        self.vars[name].update(values)
        self.write_inventory()

    def write_inventory(self) -> None:
        def text(value: Any) -> str:
            return str(value).lower() if isinstance(value, bool) else str(value)

        lines = ["# written by tests/system/test_ansible.py", "[compute]"]
        for host in self.hosts:
            values = {"ansible_port": host.ssh_port, **self.vars[host.name]}
            lines.append(" ".join([host.name, *(f"{k}={text(v)}" for k, v in values.items())]))
        common = {
            "ansible_host": "127.0.0.1",
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": hosts.test_key(),
            "ansible_ssh_common_args": "'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'",
            "conductor_redis_url": self.redis.url,
            "conductor_heartbeat_interval": 1,
            "conductor_heartbeat_ttl": 5,
            "conductor_worker_stop_timeout": 300,
            "conductor_total_memory": "4G",
            "conductor_source_dir": self.source,
            "conductor_wheelhouse": self.wheelhouse,
            # The nodes' Python minor version is this machine's: any Python of it with pip builds the wheels.
            "conductor_wheelhouse_python": sys.executable,
        }
        lines += ["", "[compute:vars]", *(f"{k}={text(v)}" for k, v in common.items())]
        self.inventory.write_text("\n".join(lines) + "\n")

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "CONDUCTOR_", "PYTEST_"))}
        env.pop("RELIABILITY_REPORT", None)
        env.update({
            # An operator's own ansible-playbook runs without this environment on PATH.
            "PATH": f"{self.ansible_playbook.parent if self.ansible_playbook else BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.workdir / "ansible-home"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start_playbook(self, *args: str) -> tuple[subprocess.Popen[str], Path]:
        self.runs += 1
        log = self.workdir / f"playbook-{self.runs:02d}.log"
        command = [str(self.ansible_playbook or BIN / "ansible-playbook"), "-i", str(self.inventory), str(PLAYBOOK), *args]
        handle = open(log, "w")
        handle.write(f"# {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=ROOT, env=self.environment(), stdout=handle,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return process, log

    def finish(self, process: subprocess.Popen[str], log: Path, timeout: float = PLAYBOOK_TIMEOUT) -> Run:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            raise AssertionError(f"ansible-playbook did not finish within {timeout} s; log {log}:\n"
                                 + "\n".join(log.read_text().splitlines()[-60:])) from None
        except BaseException:  # interrupted: the playbook runs in its own session, stop it too
            os.killpg(process.pid, 9)
            process.wait()
            raise
        if process.returncode != 0:
            with open(log, "a") as handle:
                handle.write(self.diagnostics())
        return Run(process.returncode, log.read_text(), log)

    def diagnostics(self) -> str:
        """What the hosts say about conductor's services, for a failed playbook run's message."""
        parts = []
        for host in self.hosts:
            for argv in (["systemctl", "--no-pager", "--all", "list-units", "conductor*"],
                         ["journalctl", "--no-pager", "-o", "short-precise", "-n", "60", "-u", "conductor-worker@*"],
                         ["supervisorctl", "status"]):
                try:
                    result = host.run(*argv, check=False, timeout=30)
                    parts.append(f"\n### {host.name}: {' '.join(argv)}\n{result.stdout}{result.stderr}")
                except Exception as error:  # diagnostics must not hide the failure itself
                    parts.append(f"\n### {host.name}: {' '.join(argv)}: {error}")
        return "".join(parts)

    def playbook(self, *args: str) -> Run:
        """Run ansible/deploy.yml with the current inventory (and ``args``) to the end."""
        return self.finish(*self.start_playbook(*args))

    def infra(self, *limit: str) -> subprocess.CompletedProcess[str]:
        """The testinfra suite (tests/infra) against the hosts, with the same inventory, as an operator runs it."""
        pattern = ",".join(limit) if limit else "compute"
        command = [sys.executable, "-m", "pytest", "tests/infra", f"--hosts=ansible://{pattern}",
                   f"--ansible-inventory={self.inventory}", "-p", "no:cacheprovider", "-q", "-rfE"]
        return subprocess.run(command, cwd=ROOT, env=self.environment(), capture_output=True, text=True, timeout=300)

    def assert_infra(self, *limit: str) -> str:
        result = self.infra(*limit)
        assert result.returncode == 0, f"tests/infra failed:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
        return result.stdout

    def worker_pids(self, node: str) -> dict[int, int]:
        """index -> pid of the node's registered workers (worker:<NODE>-<i> records in Redis)."""
        client = self.client
        found = {}
        for key in client.scan_iter(match=f"worker:{node}-*"):
            record = client.hgetall(key)
            if record.get("node") == node:
                found[int(record["index"])] = int(record["pid"])
        return found

    # --- jobs, through the HTTP API of the first host ------------------------------------------
    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/v1{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.api_token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def submit(self, name: str, cpus: int) -> int:
        """The seed's request: a job that runs until RELEASE exists on its host (or 5 minutes pass)."""
        script = (f"#!/bin/bash\necho \"{name} on $(hostname)\"\n"
                  f"for i in $(seq 1500); do [ -e {RELEASE} ] && exit 0; sleep 0.2; done\nexit 3\n")
        body = {"job": {"account": "test", "name": name, "partition": "compute", "ntasks_per_node": 1,
                        "cpus_per_task": cpus, "memory_per_node": "64M"}, "script": script}
        return int(self.api("POST", "/jobs/submit", body)["job_id"])

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as `conductor show --json` shows it, read from Redis (the API restarts during upgrades)."""
        view = jobs.get(self.client, job_id)
        assert view is not None, f"job {job_id} is not in Redis"
        return view

    @staticmethod
    def started(view: dict[str, Any]) -> bool:
        """RUNNING and taken by a worker (placement marks a job RUNNING before its worker starts it)."""
        return view["state"] == "RUNNING" and bool(view["worker"]) and bool(view["started_at"])

    def release_jobs(self) -> None:
        for host in self.hosts:
            host.run("install", "-m", "0644", "/dev/null", RELEASE)

    def hold_jobs(self) -> None:
        for host in self.hosts:
            host.run("rm", "-f", RELEASE)


def snapshot(destination: Path) -> Path:
    """A copy of the checkout's code, so that edits made in the checkout while the tests run change nothing."""
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("conductor", "templates"):
        shutil.copytree(ROOT / name, destination / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "deploy/wheelhouse.sh"):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    return destination


def operator_ansible_playbook(config: pytest.Config) -> Path | None:
    """The --ansible-playbook given, checked: a path that runs, or None for this environment's own."""
    given = config.getoption("--ansible-playbook")
    if not given:
        return None
    found = shutil.which(given)
    if found is None:
        raise pytest.UsageError(f"--ansible-playbook {given}: no such executable")
    return Path(found)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    require("redis-server")
    if shutil.which("ssh") is None:
        pytest.skip("the Ansible system tests need an ssh client (Debian: openssh-client)")
    workdir = tmp_path_factory.mktemp("ansible")
    redis = RedisServer(workdir / "redis").start()
    suffix = uuid.uuid4().hex[:4]
    names = [f"cnd-ans{suffix}-1", f"cnd-ans{suffix}-2"]
    try:
        started = time.monotonic()
        with hosts.booted(names, workdir / "hosts") as booted:
            print(f"\nansible tier: {len(booted)} hosts booted in {time.monotonic() - started:.1f} s")
            cluster = Cluster(hosts=booted, redis=redis, workdir=workdir, source=snapshot(workdir / "source"),
                              wheelhouse=workdir / "wheelhouse", api_port=free_port(), api_token=uuid.uuid4().hex,
                              ansible_playbook=operator_ansible_playbook(request.config))
            first, second = names
            cluster.vars = {
                first: {"conductor_total_cpus": 4, "conductor_worker_concurrency": 2, "conductor_api_enabled": True,
                        "conductor_api_port": cluster.api_port, "conductor_api_token": cluster.api_token},
                second: {"conductor_total_cpus": 4, "conductor_worker_concurrency": 2},
            }
            cluster.write_inventory()
            yield cluster
    finally:
        redis.stop()


def test_check_mode_on_fresh_hosts_changes_nothing(cluster: Cluster) -> None:
    """--check --diff on hosts that have nothing yet: no error, a report, nothing installed."""
    run = cluster.playbook("--check", "--diff").check()
    assert all(run.changed(name) > 0 for name in cluster.names), run.tail()
    assert "+WORKER_CONCURRENCY=2" in run.output  # the diff of app.properties
    assert cluster.api_token not in run.output  # a secret never shows in the diff
    # The wheelhouse is built on the controller (missing), nothing is changed on the hosts.
    assert list(cluster.wheelhouse.glob("conductor-*.whl")), "the playbook did not build the wheelhouse"
    for host in cluster.hosts:
        assert host.run("test", "-e", "/etc/conductor", check=False).returncode != 0
        assert host.run("id", "conductor", check=False).returncode != 0
    assert not cluster.worker_pids(cluster.names[0])


def test_deploy_two_nodes(cluster: Cluster) -> None:
    run = cluster.playbook().check()
    assert all(run.changed(name) > 0 for name in cluster.names)
    # No worker is registered twice or missing, on either node (the play waited for it too).
    for name in cluster.names:
        assert sorted(cluster.worker_pids(name)) == [1, 2]
    cluster.assert_infra()
    first = cluster.host(cluster.names[0])
    mode = first.run("stat", "-c", "%a %U %G", "/etc/conductor/app.properties").stdout.split()
    assert mode == ["640", "root", "conductor"]


def test_second_run_changes_nothing(cluster: Cluster) -> None:
    before = {name: cluster.worker_pids(name) for name in cluster.names}
    run = cluster.playbook().check()
    assert {name: run.changed(name) for name in cluster.names} == {name: 0 for name in cluster.names}, run.tail(120)
    check = cluster.playbook("--check", "--diff").check()
    assert {name: check.changed(name) for name in cluster.names} == {name: 0 for name in cluster.names}, check.tail(120)
    assert {name: cluster.worker_pids(name) for name in cluster.names} == before


def test_jobs_run_on_both_nodes_at_once(cluster: Cluster) -> None:
    """The seed's check, across the cluster: four 2-CPU jobs run at the same time, two on each node."""
    cluster.hold_jobs()
    ids = [cluster.submit(f"spread-{i}", cpus=2) for i in range(1, 5)]
    try:
        views = wait_until(lambda: (v := [cluster.job(i) for i in ids]) and all(map(cluster.started, v)) and v,
                           timeout=60, interval=0.2, what="all four jobs RUNNING on a worker at once")
        placed = sorted(view["node"] for view in views)
        assert placed == sorted(cluster.names * 2), placed
        assert len({view["worker"] for view in views}) == 4
    finally:
        cluster.release_jobs()
    ended = wait_until(lambda: (v := [cluster.job(i) for i in ids]) and all(j["state"] != "RUNNING" for j in v) and v,
                       timeout=60, interval=0.2, what="the jobs to end")
    assert [view["state"] for view in ended] == ["COMPLETED"] * 4, ended


def test_drain_lets_running_jobs_finish_and_sends_new_ones_to_the_other_node(cluster: Cluster) -> None:
    """Drain across the cluster, as an operator takes a node out of service: the drained node's
    running job finishes, the node shows DRAINING then DRAINED, new jobs go to the other node
    although the drained one has a free worker, and resume puts it back in service."""
    cluster.hold_jobs()
    running = cluster.submit("before-drain", cpus=2)
    drained = wait_until(lambda: (v := cluster.job(running)) and cluster.started(v) and v["node"],
                         timeout=60, interval=0.2, what="the first job to start")
    other = next(name for name in cluster.names if name != drained)
    later: list[int] = []
    try:
        node = cluster.api("POST", f"/nodes/{drained}/drain", {"reason": "disk swap"})
        assert (node["state"], node["reason"]) == ("DRAINING", "disk swap"), node
        later = [cluster.submit(f"after-drain-{i}", cpus=1) for i in (1, 2)]
        views = wait_until(lambda: (v := [cluster.job(i) for i in later]) and all(map(cluster.started, v)) and v,
                           timeout=60, interval=0.2, what="the jobs submitted after the drain to start")
        assert [view["node"] for view in views] == [other, other], views
        assert cluster.job(running)["state"] == "RUNNING"
    finally:
        cluster.release_jobs()
    ended = wait_until(lambda: (v := [cluster.job(i) for i in [running, *later]])
                       and all(j["state"] != "RUNNING" for j in v) and v, timeout=60, interval=0.2,
                       what="the jobs to end")
    assert [view["state"] for view in ended] == ["COMPLETED"] * 3, ended

    def node_view(name: str) -> dict[str, Any]:
        return next(node for node in cluster.api("GET", "/nodes") if node["name"] == name)

    wait_until(lambda: node_view(drained)["state"] == "DRAINED", timeout=60, interval=0.2,
               what=f"{drained} to show DRAINED once idle")
    resumed = cluster.api("POST", f"/nodes/{drained}/resume")
    assert resumed["state"] not in ("DRAINING", "DRAINED") and not resumed["reason"], resumed
    cluster.hold_jobs()
    again = [cluster.submit(f"after-resume-{i}", cpus=2) for i in range(1, 5)]  # one per worker of the cluster
    try:
        views = wait_until(lambda: (v := [cluster.job(i) for i in again]) and all(map(cluster.started, v)) and v,
                           timeout=60, interval=0.2, what="four jobs running at once after the resume")
        assert sorted(view["node"] for view in views) == sorted(cluster.names * 2), views
    finally:
        cluster.release_jobs()
    wait_until(lambda: all(cluster.job(i)["state"] == "COMPLETED" for i in again), timeout=60, interval=0.2,
               what="the jobs submitted after the resume to complete")


def test_scaling_keeps_the_running_workers(cluster: Cluster) -> None:
    """4 -> 2 -> 3 on one node, 2 -> 1 on the other: only added instances start, only surplus ones stop."""
    first, second = cluster.names
    kept = cluster.worker_pids(first)
    assert sorted(kept) == [1, 2]

    cluster.set(first, conductor_worker_concurrency=4)
    cluster.set(second, conductor_worker_concurrency=1)
    cluster.playbook().check()
    grown = cluster.worker_pids(first)
    assert sorted(grown) == [1, 2, 3, 4]
    assert {i: grown[i] for i in (1, 2)} == kept, "raising WORKER_CONCURRENCY restarted running workers"
    assert sorted(cluster.worker_pids(second)) == [1]

    cluster.set(first, conductor_worker_concurrency=2)
    cluster.playbook().check()
    assert cluster.worker_pids(first) == kept, "lowering WORKER_CONCURRENCY touched the workers it keeps"
    host = cluster.host(first)
    for index in (3, 4):
        unit = f"conductor-worker@{index}.service"
        assert host.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active"
        assert host.run("systemctl", "is-enabled", unit, check=False).stdout.strip() != "enabled"

    cluster.set(first, conductor_worker_concurrency=3)
    cluster.playbook().check()
    grown = cluster.worker_pids(first)
    assert sorted(grown) == [1, 2, 3] and {i: grown[i] for i in (1, 2)} == kept
    cluster.assert_infra()


def test_rolling_upgrade_lets_running_jobs_finish(cluster: Cluster) -> None:
    """New code: the wheelhouse is rebuilt, installed, and the workers restart node after node,
    each after its current job; no job is lost or killed."""
    first, second = cluster.names
    old = {name: cluster.worker_pids(name) for name in cluster.names}
    assert sorted(old[first]) == [1, 2, 3] and sorted(old[second]) == [1]
    marker = f"# upgrade {uuid.uuid4().hex}\n"
    with open(cluster.source / "conductor" / "__init__.py", "a") as handle:
        handle.write(marker)

    cluster.hold_jobs()
    ids = [cluster.submit(f"upgrade-{i}", cpus=1) for i in range(1, 5)]  # one on every worker of the cluster
    wait_until(lambda: all(cluster.started(cluster.job(i)) for i in ids), timeout=60, interval=0.2,
               what="a job running on every worker")
    process, log = cluster.start_playbook()
    released = threading.Event()
    try:
        # The first batch (the first host: serial) waits for its workers to drain: conductor apply
        # restarts them, and each stays deactivating until its job ends.
        draining = lambda: cluster.host(first).run(  # noqa: E731
            "systemctl", "show", "--property=ActiveState", "--value", "conductor-worker@1.service",
            check=False).stdout.strip() == "deactivating"
        wait_until(lambda: process.poll() is not None or (APPLY_TASK in log.read_text() and draining()),
                   timeout=PLAYBOOK_TIMEOUT, interval=0.5, what="the first batch to restart its workers")
        assert process.poll() is None, log.read_text()[-4000:]
        states = [cluster.job(i) for i in ids]
        assert all(map(cluster.started, states)), states
        assert cluster.worker_pids(second) == old[second], "the second batch restarted before the first finished"
        cluster.release_jobs()
        released.set()
        run = cluster.finish(process, log).check()
    finally:
        if not released.is_set():
            cluster.release_jobs()
        if process.poll() is None:
            cluster.finish(process, log)
    ended = [cluster.job(i) for i in ids]
    assert [view["state"] for view in ended] == ["COMPLETED"] * 4, ended
    assert "Build the wheelhouse" in run.output and run.changed(first) > 0 and run.changed(second) > 0
    new = {name: cluster.worker_pids(name) for name in cluster.names}
    assert sorted(new[first]) == [1, 2, 3] and sorted(new[second]) == [1]
    for name in cluster.names:
        assert not set(new[name].values()) & set(old[name].values()), f"{name} kept old workers: {old[name]} {new[name]}"
    installed = cluster.host(first).run("/opt/conductor/bin/python", "-c",
                                        "import conductor, pathlib; print(pathlib.Path(conductor.__file__).read_text())")
    assert marker in installed.stdout
    # The new code went into a release of its own (the draining workers kept the old one's files);
    # once every worker runs the new one, the old release is gone.
    for host in cluster.hosts:
        current = host.run("readlink", "-f", "/opt/conductor").stdout.strip()
        releases = host.run("ls", "/opt/conductor-releases").stdout.split()
        assert [f"/opt/conductor-releases/{name}" for name in releases] == [current], (host.name, current, releases)
    # Batches in inventory order (serial): the first host's workers restarted, then the second host's.
    blocks = run.output.split(APPLY_TASK)[1:]
    assert len(blocks) == 2, run.tail(200)
    assert f"changed: [{first}]" in blocks[0].split("TASK [")[0]
    assert f"changed: [{second}]" in blocks[1].split("TASK [")[0]


def test_supervisord_mode_on_one_host(cluster: Cluster) -> None:
    """The second host switches to supervisord: same checks, idempotent, and it scales down."""
    first, second = cluster.names
    kept = cluster.worker_pids(first)
    cluster.set(second, conductor_mode="supervisord", conductor_worker_concurrency=2)
    cluster.playbook("--limit", second).check()
    host = cluster.host(second)
    status = host.run("supervisorctl", "status", check=False).stdout
    assert re.search(r"^conductor-worker-1\s+RUNNING", status, re.M) and re.search(r"^conductor-worker-2\s+RUNNING",
                                                                                   status, re.M), status
    assert host.run("test", "-e", "/etc/systemd/system/conductor-workers.target", check=False).returncode != 0
    cluster.assert_infra(second)

    again = cluster.playbook("--limit", second).check()
    assert again.changed(second) == 0, again.tail(120)

    before = cluster.worker_pids(second)
    cluster.set(second, conductor_worker_concurrency=1)
    cluster.playbook("--limit", second).check()
    assert cluster.worker_pids(second) == {1: before[1]}
    status = host.run("supervisorctl", "status", check=False).stdout
    assert [line.split()[0] for line in status.splitlines() if line.startswith("conductor-worker-")] == ["conductor-worker-1"]
    cluster.assert_infra()
    assert cluster.worker_pids(first) == kept
