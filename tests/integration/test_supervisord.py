"""Workers under a real supervisord, configured only through `conductor render supervisord`."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conductor import keys
from support import BIN, conductor, node_config, wait_until


def render(config, supervisord) -> None:
    conductor("render", "supervisord", "--out", str(supervisord.conf_d), config=config)


def registered_pid(client, name: str) -> int | None:
    pid = client.hget(f"worker:{name}", "pid")
    return int(pid) if pid else None


def all_running(supervisord, count: int) -> dict:
    status = supervisord.status()
    return status if all(status.get(f"conductor-worker-{i}", ("",))[0] == "RUNNING"
                         for i in range(1, count + 1)) else {}


def test_scaling_up_and_down_touches_only_the_changed_instances(tmp_path, redis_server, supervisord):
    config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=2)
    render(config, supervisord)
    supervisord.start()
    client = redis_server.client()
    wait_until(lambda: all(registered_pid(client, f"node-a-{i}") for i in (1, 2)), what="two workers")
    before = wait_until(lambda: all_running(supervisord, 2), what="both programs RUNNING")

    node_config(tmp_path, redis_server, WORKER_CONCURRENCY=3)
    render(config, supervisord)
    supervisord.ctl("reread")
    supervisord.ctl("update")
    wait_until(lambda: registered_pid(client, "node-a-3"), what="worker 3 to register")
    after = wait_until(lambda: all_running(supervisord, 3), what="three programs RUNNING")
    assert after["conductor-worker-1"] == before["conductor-worker-1"]
    assert after["conductor-worker-2"] == before["conductor-worker-2"]

    node_config(tmp_path, redis_server, WORKER_CONCURRENCY=2)
    render(config, supervisord)
    supervisord.ctl("reread")
    supervisord.ctl("update")
    assert "conductor-worker-3" not in supervisord.status()
    wait_until(lambda: not client.exists("worker:node-a-3"), what="worker 3 to unregister")
    assert supervisord.status()["conductor-worker-1"] == before["conductor-worker-1"]


def test_a_killed_worker_comes_back_by_itself(tmp_path, redis_server, supervisord):
    config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=1)
    render(config, supervisord)
    supervisord.start()
    client = redis_server.client()
    first = wait_until(lambda: registered_pid(client, "node-a-1"), what="worker 1")
    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: (pid := registered_pid(client, "node-a-1")) != first and pid,
                        what="the restarted worker to register")
    assert wait_until(lambda: all_running(supervisord, 1))["conductor-worker-1"] == ("RUNNING", second)


@pytest.mark.reliability("fault: supervisorctl stop of the last worker of a node with a job waiting")
def test_stopping_a_busy_worker_lets_its_job_finish(tmp_path, redis_server, supervisord):
    """`supervisorctl stop` of a node's only worker while it runs a job and another waits: the job
    finishes COMPLETED; the waiting one is not placed on the leaving slot (it would stay RUNNING with
    no worker) but waits PENDING, and runs when the program starts again."""
    config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=1)
    render(config, supervisord)
    supervisord.start()
    client = redis_server.client()
    wait_until(lambda: registered_pid(client, "node-a-1"), what="worker 1")
    release = tmp_path / "go"
    job_id = int(conductor("submit", "-", config=config,
                           input=f"#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\n").stdout)
    wait_until(lambda: client.hget(f"conductor:job:{job_id}", "worker"), what="the job to be claimed")
    waiting = int(conductor("submit", "-", config=config, input="#!/bin/bash\ntrue\n").stdout)
    stop = subprocess.Popen([str(BIN / "supervisorctl"), "-c", str(supervisord.config), "stop", "conductor-worker-1"],
                            stdout=subprocess.PIPE, text=True)
    wait_until(lambda: supervisord.status()["conductor-worker-1"][0] == "STOPPING", what="the worker to be stopping")
    assert client.hget(f"conductor:job:{job_id}", "state") == "RUNNING"
    release.touch()
    stop.wait(timeout=60)
    assert client.hget(f"conductor:job:{job_id}", "state") == "COMPLETED"
    assert supervisord.status()["conductor-worker-1"][0] == "STOPPED"
    assert client.hmget(keys.job(waiting), "state", "node") == ["PENDING", ""]
    assert client.hmget(keys.node("node-a"), "allocated_cpus", "allocated_memory") == ["0", "0"]
    supervisord.ctl("start", "conductor-worker-1")
    wait_until(lambda: client.hget(keys.job(waiting), "state") == "COMPLETED", what=f"job {waiting} to run")


@pytest.mark.reliability("fault: Redis paused longer than HEARTBEAT_TTL under running jobs, workers under supervisord")
def test_a_redis_pause_longer_than_the_ttl_restarts_no_worker_and_kills_no_job(tmp_path, redis_server, supervisord):
    """Redis frozen (SIGSTOP) for well over HEARTBEAT_TTL while both workers of a supervisord node
    run jobs. Every worker record expires meanwhile; when Redis thaws, no worker may reap another
    or kill its job as an orphan, and none may exit (supervisord would restart it, hiding the fault
    behind a new PID): both keep their PIDs, each job ends with its own exit status, the --requeue
    job is not requeued, and the node's books return to zero."""
    config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=2, HEARTBEAT_INTERVAL=1, HEARTBEAT_TTL=3)
    render(config, supervisord)
    supervisord.start()
    client = redis_server.client()
    wait_until(lambda: all(registered_pid(client, f"node-a-{i}") for i in (1, 2)), what="two workers")
    before = wait_until(lambda: all_running(supervisord, 2), what="both programs RUNNING")
    releases = [tmp_path / "go-1", tmp_path / "go-2"]
    block = "#!/bin/bash\nwhile [ ! -e {} ]; do sleep 0.05; done\nexit {}\n"
    plain = int(conductor("submit", "-", config=config, input=block.format(releases[0], 7)).stdout)
    requeue = int(conductor("submit", "--requeue", "-", config=config, input=block.format(releases[1], 0)).stdout)
    for job_id in (plain, requeue):
        wait_until(lambda j=job_id: client.hget(keys.job(j), "worker"), what=f"job {job_id} to be claimed")
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        time.sleep(8)  # the fault itself: Redis frozen well beyond HEARTBEAT_TTL
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    wait_until(lambda: all(client.exists(f"worker:node-a-{i}") for i in (1, 2)), timeout=30,
               what="both workers to register again")
    for _ in range(4):  # heartbeats from anyone, each of which may reap or kill orphans
        last = client.hget(keys.LIVENESS, "last_beat")
        wait_until(lambda: client.hget(keys.LIVENESS, "last_beat") != last, what="another heartbeat")
    assert client.hget(keys.job(requeue), "state") == "RUNNING"
    assert client.hget(keys.job(requeue), "requeued") == "0"
    for release in releases:
        release.touch()
    for job_id, code in ((plain, "7"), (requeue, "0")):
        wait_until(lambda j=job_id: client.hget(keys.job(j), "state") not in ("PENDING", "RUNNING"),
                   what=f"job {job_id} to end")
    assert client.hmget(keys.job(plain), "state", "exit_code") == ["FAILED", "7"]
    assert client.hmget(keys.job(requeue), "state", "exit_code", "requeued") == ["COMPLETED", "0", "0"]
    assert supervisord.status() == before  # no worker exited and came back with a new PID
    assert client.hmget(keys.node("node-a"), "allocated_cpus", "allocated_memory") == ["0", "0"]


@pytest.mark.reliability("fault: SIGKILL of a busy worker under supervisord, then cancel")
def test_a_cancel_sent_after_a_killed_worker_is_honoured_by_its_restarted_instance(tmp_path, redis_server, supervisord):
    """A busy worker SIGKILLed under supervisord, its --requeue job cancelled at once: the instance
    supervisord starts in its place (which reaps its predecessor itself, not the cluster's reaper
    after HEARTBEAT_TTL) ends the job CANCELLED, not requeued, so it never runs again; the killed
    worker's job processes are gone and the new instance runs the next job."""
    from conductor import jobs, procs

    config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=1)
    render(config, supervisord)
    supervisord.start()
    client = redis_server.client()
    first = wait_until(lambda: registered_pid(client, "node-a-1"), what="worker 1")
    runs = tmp_path / "runs"
    job_id = int(conductor("submit", "--requeue", "-", config=config,
                           input=f"#!/bin/bash\necho $$ >> {runs}\nsleep 300\n").stdout)
    wait_until(lambda: runs.exists() and runs.read_text().strip(), what="the job to start")
    script_pid = int(runs.read_text().split()[0])
    os.kill(first, signal.SIGKILL)
    assert jobs.cancel(client, job_id) == "signalled"  # its worker is gone; the ledger does not know yet
    second = wait_until(lambda: (pid := registered_pid(client, "node-a-1")) != first and pid,
                        what="the restarted worker to register")
    wait_until(lambda: client.hget(keys.job(job_id), "state") not in ("RUNNING", "PENDING"),
               what=f"job {job_id} to end: {client.hgetall(keys.job(job_id))}")
    assert client.hmget(keys.job(job_id), "state", "requeued") == ["CANCELLED", "0"]
    wait_until(lambda: procs.start_ticks(script_pid) is None, what="the killed worker's job script to be killed")
    assert len(runs.read_text().split()) == 1
    assert client.hmget(keys.node("node-a"), "allocated_cpus", "allocated_memory") == ["0", "0"]
    after = int(conductor("submit", "-", config=config, input="#!/bin/bash\ntrue\n").stdout)
    wait_until(lambda: client.hget(keys.job(after), "state") == "COMPLETED", what=f"job {after} to complete")
    assert client.hget(keys.job(after), "worker") == "node-a-1" and registered_pid(client, "node-a-1") == second
