"""The single-worker entrypoint and the runner, as real processes against a real Redis."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from support import IS_ROOT, RedisServer, WorkerProcess, conductor, free_port, node_config, wait_until

BLOCK = '#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\n'


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] != "Z"


def allocated(node) -> tuple[int, int]:
    ledger = node.redis.client().hmget(f"conductor:node:{node.name}", "allocated_cpus", "allocated_memory")
    return int(ledger[0]), int(ledger[1])


def test_job_larger_than_free_cpus_waits_then_runs(make_node, tmp_path):
    node = make_node(TOTAL_CPUS=8, WORKER_CONCURRENCY=2)
    node.start_workers(2)
    big = node.submit(BLOCK.format(release=tmp_path / "go"), "--cpus-per-task", "6")
    node.wait_state(big, "RUNNING")
    waiting = node.submit("#!/bin/bash\ntrue\n", "--cpus-per-task", "4")
    # A worker is free but only 2 CPUs are: the job must wait, whatever happens meanwhile.
    assert node.job(waiting)["state"] == "PENDING"
    assert conductor("show", str(waiting), "--json", config=node.config).stdout.count('"PENDING"') == 1
    (tmp_path / "go").touch()
    assert node.wait_state(big, "COMPLETED")["exit_code"] == 0
    assert node.wait_state(waiting, "COMPLETED")["exit_code"] == 0
    wait_until(lambda: allocated(node) == (0, 0), what="all CPUs released")


def test_job_sees_its_environment_and_output_is_captured(make_node):
    host_cpus = len(os.sched_getaffinity(0))
    node = make_node(TOTAL_CPUS=host_cpus, WORKER_CONCURRENCY=1)
    node.start_workers(1)
    script = ("#!/bin/bash\necho job=$SLURM_JOB_ID cpus=$SLURM_CPUS_PER_TASK node=$SLURMD_NODENAME "
              "worker=$CONDUCTOR_WORKER mine=$MINE redis=${REDIS_URL:-unset}\n"
              "grep Cpus_allowed_list /proc/self/status\necho oops >&2\n")
    job_id = node.submit(script, "--cpus-per-task", "1", "--env", "MINE=yes")
    job = node.wait_state(job_id, "COMPLETED")
    output = (node.directory / "jobs" / str(job_id) / f"slurm-{job_id}.out").read_text()
    assert f"job={job_id} cpus=1 node=node-a worker=node-a-1 mine=yes redis=unset" in output
    assert "oops" in output
    assert output.split("Cpus_allowed_list:")[1].split()[0] == str(job["cpu_ids"][0])


def test_nonzero_exit_is_failed_with_its_code(make_node):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_workers(1)
    job = node.wait_state(node.submit("#!/bin/bash\nexit 7\n"), "FAILED")
    assert job["exit_code"] == 7 and job["reason"] == "exit status 7"


@pytest.mark.reliability("fault: job over its time limit")
def test_rq_shows_the_workers_and_their_counts_and_keeps_no_per_job_records(make_node):
    """RQ only carries jobs to the node: `rq info` still lists each worker, its state and how many
    jobs it finished, while nothing of RQ's per-job bookkeeping (job hashes, executions,
    registries, the intermediate queue) is left behind once the jobs have ended."""
    node = make_node(WORKER_CONCURRENCY=2)
    node.start_workers(2)
    ids = [node.submit("#!/bin/bash\ntrue\n") for _ in range(6)]
    for job_id in ids:
        node.wait_state(job_id, "COMPLETED")
    client = node.redis.client()
    counts = lambda: [int(client.hget(f"rq:worker:worker-node-a-{i}", "successful_job_count") or 0)  # noqa: E731
                      for i in (1, 2)]
    wait_until(lambda: sum(counts()) == 6, what="RQ's worker records to count every job")
    wait_until(lambda: {client.hget(f"rq:worker:worker-node-a-{i}", "state") for i in (1, 2)} == {"idle"},
               what="both RQ workers idle")
    left = sorted(key for key in client.scan_iter("rq:*") if not key.startswith(("rq:worker", "rq:queues",
                                                                                 "rq:clean")))
    assert left == [], left
    info = conductor_rq_info(node.redis.url)
    assert "worker-node-a-1" in info and "worker-node-a-2" in info and "2 workers" in info
    assert "conductor-node-a" in info  # the node's queue is listed (placement adds it to RQ's queues)


def test_a_redis_outage_right_after_a_job_does_not_end_the_worker_loop(tmp_path):
    """Guards against a worker quitting in a failover: RQ's loop ends on any error outside its
    dequeue's retries, and the suspension check is its first command after a job's end."""
    from redis import Redis

    from conductor.worker import ConductorRQWorker

    server = RedisServer(tmp_path / "redis").start()
    worker = ConductorRQWorker(["conductor-node-a"], name="worker-node-a-1", connection=Redis(port=server.port))
    server.stop()
    worker.check_for_suspension(burst=False)  # raised ConnectionError, which ended RQ's work loop
    worker.run_maintenance_tasks()


def conductor_rq_info(url: str) -> str:
    """`rq info` as an operator runs it (RQ's own command line, from this virtual environment)."""
    import subprocess
    import sys

    rq = Path(sys.executable).parent / "rq"
    return subprocess.run([str(rq), "info", "--url", url], check=True, capture_output=True, text=True,
                          timeout=60).stdout


def test_time_limit_ends_job_as_timeout_with_every_process_gone(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_workers(1)
    pids = tmp_path / "pids"
    job_id = node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\nsleep 300\n", "--time-limit", "0:01")
    job = node.wait_state(job_id, "TIMEOUT")
    assert "time limit" in job["reason"]
    assert not alive(int(pids.read_text()))


@pytest.mark.reliability("fault: cancel of a running job with children")
def test_cancel_running_job_stops_every_child(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_workers(1)
    pids = tmp_path / "pids"
    job_id = node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\nsleep 300 & wait\n")
    wait_until(pids.exists, what="the job to start its children")
    assert "cancel requested" in conductor("cancel", str(job_id), config=node.config).stdout
    assert node.wait_state(job_id, "CANCELLED")["reason"] == "cancelled by user"
    assert not alive(int(pids.read_text()))
    again = conductor("cancel", str(job_id), config=node.config, check=False)
    assert again.returncode == 1 and "already ended (CANCELLED)" in again.stderr


def test_leftover_background_processes_are_killed_when_the_job_ends(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_workers(1)
    pids = tmp_path / "pids"
    node.wait_state(node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\n"), "COMPLETED")
    assert not alive(int(pids.read_text()))


@pytest.mark.reliability("fault: SIGKILL of a busy worker, restarted at once")
def test_sigkilled_worker_restarts_at_first_try_and_its_job_ends_node_fail(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    first = node.start_worker(1)
    pids = tmp_path / "pids"
    job_id = node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\nwait\n", "--cpus-per-task", "3")
    wait_until(pids.exists, what="the job to start")
    first.signal(signal.SIGKILL)
    first.wait()
    # Plain RQ would refuse the fixed name "worker-node-a-1" here for minutes.
    second = node.start_worker(1)
    job = node.wait_state(job_id, "NODE_FAIL")
    assert "died" in job["reason"]
    assert not alive(int(pids.read_text()))
    assert allocated(node) == (0, 0)
    assert second.process.poll() is None
    assert "There exists an active worker" not in second.output()


@pytest.mark.reliability("fault: second instance of a live worker index")
def test_a_live_worker_index_is_not_taken_twice(make_node):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_worker(1)
    duplicate = WorkerProcess(node.config, 1, node.directory / "duplicate.log")
    assert duplicate.wait() == 3
    assert "already running" in duplicate.output()


@pytest.mark.reliability("fault: Redis not answering at start")
def test_worker_exits_with_a_clear_message_when_redis_does_not_answer(tmp_path, redis_server):
    config = node_config(tmp_path, redis_server, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    worker = WorkerProcess(config, 1, tmp_path / "worker.log")
    assert worker.wait() == 4
    assert "does not answer" in worker.output()


@pytest.mark.skipif(not IS_ROOT, reason="only a worker started by root can refuse to be root")
@pytest.mark.reliability("security: worker started as root")
def test_worker_started_as_root_refuses_jobs_unless_allowed(tmp_path, redis_server):
    # Started by hand as root although SERVICE_USER is another user (SERVICE_USER=root itself
    # needs ALLOW_ROOT_JOBS=true: a configuration error, refused by `conductor check`).
    config = node_config(tmp_path, redis_server, SERVICE_USER="conductor", ALLOW_ROOT_JOBS=False)
    worker = WorkerProcess(config, 1, tmp_path / "worker.log")
    assert worker.wait() == 5
    assert "refusing to run jobs as root" in worker.output()


@pytest.mark.reliability("fault: SIGTERM to a busy worker")
def test_sigterm_lets_the_running_job_finish_then_exits_cleanly(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    worker = node.start_worker(1)
    job_id = node.submit(BLOCK.format(release=tmp_path / "go"))
    node.wait_state(job_id, "RUNNING")
    wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
    worker.signal(signal.SIGTERM)
    (tmp_path / "go").touch()
    assert worker.wait() == 0
    assert node.job(job_id)["state"] == "COMPLETED"
    assert not node.redis.client().exists("worker:node-a-1")


@pytest.mark.reliability("fault: second SIGTERM to a busy worker")
def test_second_sigterm_stops_at_once_and_the_job_is_not_lost(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    worker = node.start_worker(1)
    pids = tmp_path / "pids"
    job_id = node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\nwait\n")
    wait_until(pids.exists, what="the job to start")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "stop requested" in worker.output(), what="the first signal to be handled")
    worker.signal(signal.SIGTERM)
    worker.wait()  # without the job finishing: it would run for 300 s
    job = node.job(job_id)
    assert job["state"] == "NODE_FAIL" and job["reason"] == "worker stopped before the job ended"
    assert not alive(int(pids.read_text()))
    assert allocated(node) == (0, 0)


@pytest.mark.reliability("fault: worker killed and not restarted")
def test_a_peer_reaps_a_dead_worker_and_frees_its_cpus(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=2)
    node.start_workers(2)
    pids = tmp_path / "pids"
    job_id = node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\nwait\n", "--cpus-per-task", "4")
    wait_until(pids.exists, what="the job to start")
    owner = node.workers[int(node.job(job_id)["worker"].rsplit("-", 1)[1])]
    owner.signal(signal.SIGKILL)
    owner.wait()
    job = node.wait_state(job_id, "NODE_FAIL")
    assert owner.index == int(job["worker"].rsplit("-", 1)[1])
    assert not alive(int(pids.read_text()))
    assert allocated(node) == (0, 0)


@pytest.mark.reliability("fault: worker frozen (SIGSTOP) beyond HEARTBEAT_TTL")
def test_a_frozen_worker_is_not_reaped_while_its_process_lives_and_its_job_ends_normally(make_node, tmp_path):
    """Guards liveness by process identity: a worker whose record expired but whose process is
    alive on its own host (PID + start time + boot id) is never reaped, so its job is not failed."""
    node = make_node(WORKER_CONCURRENCY=2)
    node.start_workers(2)
    job_id = node.submit(BLOCK.format(release=tmp_path / "go"), "--cpus-per-task", "2")
    wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
    frozen = node.workers[int(node.job(job_id)["worker"].rsplit("-", 1)[1])]
    peer = node.workers[3 - frozen.index]
    client = node.redis.client()
    frozen.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not client.exists(f"worker:node-a-{frozen.index}"), what="the frozen record to expire")
        # the peer reaps on its beats: give it several chances to (wrongly) reap the frozen worker
        for _ in range(4):
            last = client.hget("conductor:liveness", "last_beat")
            wait_until(lambda: client.hget("conductor:liveness", "last_beat") != last, what="another beat")
        assert node.job(job_id)["state"] == "RUNNING"
    finally:
        frozen.signal(signal.SIGCONT)
    wait_until(lambda: client.exists(f"worker:node-a-{frozen.index}"), what="the thawed worker to register again")
    (tmp_path / "go").touch()
    job = node.wait_state(job_id, "COMPLETED")
    assert job["exit_code"] == 0
    assert "missed its heartbeats" not in peer.output()
    assert allocated(node) == (0, 0)


@pytest.mark.reliability("fault: SIGKILL of a busy worker, job submitted with --requeue")
def test_a_job_submitted_with_requeue_runs_again_once_after_its_worker_dies(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    first = node.start_worker(1)
    runs = tmp_path / "runs"
    release = tmp_path / "go"
    job_id = node.submit(f"#!/bin/bash\necho run >> {runs}\nwhile [ ! -e {release} ]; do sleep 0.05; done\n",
                         "--requeue")
    wait_until(lambda: runs.exists(), what="the first run")
    first.signal(signal.SIGKILL)
    first.wait()
    node.start_worker(1)
    wait_until(lambda: runs.read_text().count("run") == 2, what="the second run")
    assert node.job(job_id)["requeued"] == 1
    release.touch()
    job = node.wait_state(job_id, "COMPLETED")
    assert job["exit_code"] == 0 and job["requeue"] is True
    assert allocated(node) == (0, 0)


def test_a_small_job_behind_hundreds_of_large_ones_runs_on_the_idle_worker(make_node, tmp_path):
    """Guards against head-of-line starvation: placement looked only at the 256 oldest pending
    jobs, so 300 waiting 4-CPU jobs on a node with 3 free CPUs kept a later 1-CPU job PENDING
    next to an idle worker."""
    from conductor import jobs
    from conductor.jobs import JobSubmission

    node = make_node(TOTAL_CPUS=8, WORKER_CONCURRENCY=2)
    node.start_workers(2)
    big = node.submit(BLOCK.format(release=tmp_path / "go"), "--cpus-per-task", "5")
    node.wait_state(big, "RUNNING")
    connection = node.redis.client()
    large = [jobs.submit(connection, JobSubmission.model_validate(
        {"job": {"cpus_per_task": 4, "name": f"large-{i}"}, "script": "true\n"})) for i in range(300)]
    small = node.submit("#!/bin/bash\ntrue\n", "--cpus-per-task", "1")
    assert node.wait_state(small, "COMPLETED")["exit_code"] == 0
    assert node.job(big)["state"] == "RUNNING"
    assert all(node.job(job_id)["state"] == "PENDING" for job_id in large)
    for job_id in large:
        jobs.cancel(connection, job_id)
    (tmp_path / "go").touch()
    assert node.wait_state(big, "COMPLETED")["exit_code"] == 0
