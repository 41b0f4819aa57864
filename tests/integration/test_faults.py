"""Faults injected into a running node: whatever dies in between, every job ends once and the books balance."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import IS_ROOT, RedisServer, conductor, wait_until


def books_balance(client, node: str) -> bool:
    """allocated CPUs and memory equal the sum over the node's RUNNING jobs."""
    running = [j for j in client.smembers(f"conductor:node:{node}:running")]
    cpus = sum(int(client.hget(f"conductor:job:{j}", "cpus")) for j in running)
    memory = sum(int(client.hget(f"conductor:job:{j}", "memory")) for j in running)
    states = {client.hget(f"conductor:job:{j}", "state") for j in running}
    ledger = client.hmget(f"conductor:node:{node}", "allocated_cpus", "allocated_memory")
    return states <= {"RUNNING"} and (int(ledger[0]), int(ledger[1])) == (cpus, memory)


@pytest.fixture
def aof_redis(tmp_path):
    server = RedisServer(tmp_path / "aof-redis", appendonly=True).start()
    yield server
    server.stop()


@pytest.mark.reliability("fault: Redis restarted or unreachable while a job ends")
@pytest.mark.parametrize("outage", [0, 30], ids=["restart", "30s-outage"])
def test_a_job_ending_while_redis_is_away_is_recorded_with_its_exit_code(tmp_path, aof_redis, outage):
    from support import Node

    node = Node(tmp_path, aof_redis, WORKER_CONCURRENCY=2)
    try:
        workers = node.start_workers(2)
        release = tmp_path / "go"
        job_id = node.submit(f"#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\nexit 3\n")
        wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
        aof_redis.stop()
        release.touch()  # the job ends while Redis is down
        time.sleep(outage)  # the fault itself: Redis stays away this long
        assert all(w.process.poll() is None for w in workers), "a worker gave up during the outage"
        aof_redis.start()
        job = node.wait_state(job_id, "FAILED", timeout=60)
        assert job["exit_code"] == 3
        client = aof_redis.client()
        wait_until(lambda: all(client.exists(f"worker:node-a-{i}") for i in (1, 2)), what="workers back")
        assert all(w.process.poll() is None for w in workers)
        assert books_balance(client, "node-a")
        later = node.submit("#!/bin/bash\ntrue\n")
        assert node.wait_state(later, "COMPLETED")["exit_code"] == 0
    finally:
        node.stop()


@pytest.mark.reliability("fault: disk full in JOB_ROOT")
@pytest.mark.skipif(not IS_ROOT, reason="mounting a small file system needs root")
def test_a_full_job_root_fails_the_job_with_a_clear_reason_and_nothing_half_written(make_node, tmp_path):
    node = make_node(WORKER_CONCURRENCY=1)
    job_root = node.directory / "jobs"
    job_root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(job_root)], check=True)
    try:
        (job_root / "filler").write_bytes(b"\0" * (60 << 10))  # tmpfs counts whole pages
        node.start_workers(1)
        job_id = node.submit("#!/bin/bash\n" + "# padding\n" * 2000 + "true\n")
        job = node.wait_state(job_id, "FAILED")
        assert "No space left on device" in job["reason"]
        directory = job_root / str(job_id)
        assert not (directory / "script.sh").exists() and not (directory / ".script.sh.partial").exists()
        assert books_balance(node.redis.client(), "node-a")
    finally:
        node.stop()
        subprocess.run(["umount", "-l", str(job_root)], check=True)


@pytest.mark.reliability("fault: SIGTERM to a busy worker while Redis is down")
def test_a_stop_requested_during_a_redis_outage_is_not_lost(tmp_path, aof_redis):
    from support import Node

    node = Node(tmp_path, aof_redis, WORKER_CONCURRENCY=1)
    try:
        worker = node.start_worker(1)
        release = tmp_path / "go"
        job_id = node.submit(f"#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\n")
        wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
        aof_redis.stop()
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "stop requested" in worker.output(), what="the stop to be noted")
        release.touch()
        aof_redis.start()
        assert worker.wait(timeout=60) == 0
        assert node.job(job_id)["state"] == "COMPLETED"
    finally:
        node.stop()
