"""Running a cluster for months: drain and resume, partitions, retention, history, squeue formats.

Everything against a real redis-server and real worker processes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from conductor import keys, placement
from conductor.config import Settings, load_settings
from support import RedisServer, conductor, free_port, wait_until

# The conductor CLI reads app.properties only; keys from the test's environment would override it.


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {name.upper() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.upper() in names or key == "CONDUCTOR_CONFIG":
            monkeypatch.delenv(key)


def blocking(release: Path) -> str:
    return f"#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\necho done\n"


def nodes(config: Path) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in json.loads(conductor("nodes", "--json", config=config).stdout)}


def node_state(config: Path, name: str) -> str:
    return str(nodes(config)[name]["state"])


def test_drain_lets_running_jobs_finish_and_sends_new_ones_elsewhere(make_node, tmp_path: Path) -> None:
    """A draining node takes no new job, its running job ends COMPLETED, it turns DRAINED; resume
    brings it back. The drain, its reason and who/when show in `conductor nodes`."""
    a = make_node("node-a", WORKER_CONCURRENCY=1)
    b = make_node("node-b", WORKER_CONCURRENCY=1)
    a.start_workers(1)
    release = tmp_path / "release"
    first = a.submit(blocking(release))
    assert a.wait_state(first, "RUNNING")["node"] == "node-a"
    assert node_state(a.config, "node-a") == "ALLOCATED"

    out = conductor("drain", "node-a", "--reason", "disk replacement", config=a.config).stdout
    assert "DRAINING" in out
    view = nodes(a.config)["node-a"]
    assert (view["state"], view["reason"]) == ("DRAINING", "disk replacement")
    assert view["drained_by"] and "@" in view["drained_by"] and view["drained_at"]
    assert "disk replacement" in conductor("nodes", config=a.config).stdout

    b.start_workers(1)
    second = a.submit("#!/bin/bash\necho elsewhere\n")
    assert a.wait_state(second, "COMPLETED")["node"] == "node-b"
    release.touch()
    assert a.wait_state(first, "COMPLETED")["exit_code"] == 0
    wait_until(lambda: node_state(a.config, "node-a") == "DRAINED", what="node-a to be DRAINED")

    out = conductor("resume", "node-a", config=a.config).stdout
    assert "IDLE" in out
    assert nodes(a.config)["node-a"]["reason"] is None
    b.stop()
    third = a.submit("#!/bin/bash\necho back\n")
    assert a.wait_state(third, "COMPLETED")["node"] == "node-a"


def test_two_nodes_a_drained_node_keeps_what_only_it_can_run_pending_and_resume_brings_it_back(
        make_node, tmp_path: Path) -> None:
    """Two nodes on one Redis: node-a (8 CPUs) is drained while it runs a job. Its job finishes
    COMPLETED; a job only node-a is big enough for stays PENDING with reason ReqNodeNotAvail (not
    Resources: waiting for node-b would never help) and never starts on node-b; small jobs go to
    node-b; resume runs the big job on node-a."""
    a = make_node("node-a", TOTAL_CPUS=8, WORKER_CONCURRENCY=1)
    b = make_node("node-b", TOTAL_CPUS=2, WORKER_CONCURRENCY=1)
    a.start_workers(1)
    b.start_workers(1)
    release = tmp_path / "release"
    running = a.submit(blocking(release), "-c", "4")
    assert a.wait_state(running, "RUNNING")["node"] == "node-a"
    conductor("drain", "node-a", "--reason", "kernel update", config=b.config)
    assert node_state(b.config, "node-a") == "DRAINING"

    big = a.submit("#!/bin/bash\necho big\n", "-c", "4")
    small = a.submit("#!/bin/bash\necho small\n", "-c", "1")
    assert a.wait_state(small, "COMPLETED")["node"] == "node-b"
    listed = {j["id"]: j for j in json.loads(conductor("jobs", "--json", config=a.config).stdout)}
    assert (listed[big]["state"], listed[big]["pending_reason"]) == ("PENDING", "ReqNodeNotAvail")
    assert "ReqNodeNotAvail" in conductor("jobs", "--format", "%i %R", config=a.config).stdout

    release.touch()
    assert a.wait_state(running, "COMPLETED")["exit_code"] == 0
    wait_until(lambda: node_state(a.config, "node-a") == "DRAINED", what="node-a to be DRAINED")
    placement.place(a.redis.client(), a.redis.client())  # a sweep, as a heartbeat would run it
    assert a.job(big)["state"] == "PENDING"

    conductor("resume", "node-a", config=b.config)
    done = a.wait_state(big, "COMPLETED")
    assert done["node"] == "node-a" and (a.directory / "jobs" / str(big) / f"slurm-{big}.out").read_text() == "big\n"
    assert node_state(a.config, "node-a") == "IDLE"


def test_a_node_whose_workers_left_still_counts_at_submit_and_its_jobs_block_nobody(
        make_node, tmp_path: Path) -> None:
    """A big node whose workers have all stopped (it left: DOWN) still counts when a submission is
    checked, as a DOWN node does in Slurm: a restart, reboot or upgrade of the big node must not turn
    its jobs into errors. What only it can run waits PENDING with reason ReqNodeNotAvail, and hundreds
    of such jobs hold back no job that a live node can run: a later small job starts at once on the
    small node's idle worker. A job larger than every node that ever registered is still refused, and
    the big node's return runs the oldest waiting job."""
    from conductor import jobs
    from conductor.jobs import JobSubmission

    a = make_node("node-a", TOTAL_CPUS=8, WORKER_CONCURRENCY=1)
    b = make_node("node-b", TOTAL_CPUS=2, WORKER_CONCURRENCY=1)
    (big_worker,) = a.start_workers(1)
    b.start_workers(1)
    big_worker.signal(signal.SIGTERM)  # node-a's last worker leaves
    assert big_worker.wait() == 0
    assert node_state(b.config, "node-a") == "DOWN" and node_state(b.config, "node-b") == "IDLE"

    first = b.submit("#!/bin/bash\necho big\n", "-c", "4")  # the CLI accepts it: exit 0, an id
    connection = b.redis.client()
    backlog = [jobs.submit(connection, JobSubmission.model_validate(
        {"job": {"cpus_per_task": 4, "name": f"big-{i}"}, "script": "true\n"})) for i in range(300)]
    small = b.submit("#!/bin/bash\necho small\n", "-c", "1")
    assert b.wait_state(small, "COMPLETED")["node"] == "node-b"
    listed = {j["id"]: j for j in json.loads(conductor("jobs", "--json", "--limit", "1000", config=b.config).stdout)}
    assert (listed[first]["state"], listed[first]["pending_reason"]) == ("PENDING", "ReqNodeNotAvail")
    assert all(listed[job_id]["state"] == "PENDING" for job_id in backlog)

    refused = conductor("submit", "-c", "9", "-", config=b.config, input="#!/bin/bash\ntrue\n", check=False)
    assert refused.returncode == 2 and "the largest node offers 8" in refused.stderr

    for job_id in backlog:
        jobs.cancel(connection, job_id)
    a.start_worker(1)  # node-a is back
    done = a.wait_state(first, "COMPLETED")
    assert done["node"] == "node-a" and (a.directory / "jobs" / str(first) / f"slurm-{first}.out").read_text() == "big\n"


def test_pending_reason_says_partition_nodes_drained_and_drain_survives_restarts(tmp_path: Path, make_node) -> None:
    """A job whose only node is drained waits PENDING with reason PartitionNodesDrained (squeue's
    REASON column); the drain holds when every worker restarts and when Redis restarts."""
    redis = RedisServer(tmp_path / "aof", appendonly=True).start()
    try:
        from support import Node

        (tmp_path / "n").mkdir()
        node = Node(tmp_path / "n", redis, NODE_NAME="node-a", WORKER_CONCURRENCY=1)
        try:
            node.start_workers(1)
            conductor("drain", "node-a", "--reason", "maintenance", config=node.config)
            job = node.submit("#!/bin/bash\necho hi\n")
            listed = json.loads(conductor("jobs", "--json", config=node.config).stdout)
            assert listed[0]["state"] == "PENDING" and listed[0]["pending_reason"] == "PartitionNodesDrained"
            table = conductor("jobs", config=node.config).stdout
            assert "PartitionNodesDrained" in table
            squeue = conductor("jobs", "--format", "%.6i %.2t %R", config=node.config).stdout.splitlines()
            assert squeue == [" JOBID ST NODELIST(REASON)", f"{job:>6} PD (PartitionNodesDrained)"]

            node.stop()
            node.start_workers(1)
            placement.place(redis.client(), redis.client())  # a sweep, as a heartbeat would run it
            assert node.job(job)["state"] == "PENDING"
            assert node_state(node.config, "node-a") == "DRAINED"

            node.stop()
            redis.stop()
            redis.start()
            node.start_workers(1)
            assert nodes(node.config)["node-a"]["reason"] == "maintenance"
            assert node.job(job)["state"] == "PENDING"
            conductor("resume", "node-a", config=node.config)
            assert node.wait_state(job, "COMPLETED")["node"] == "node-a"
        finally:
            node.stop()
    finally:
        redis.stop()


def test_drain_of_an_unknown_node_is_refused(make_node) -> None:
    """A typo in a node name must not create a drain record that nothing shows."""
    a = make_node("node-a")
    a.start_workers(1)
    result = conductor("drain", "node-x", "--reason", "r", config=a.config, check=False)
    assert result.returncode == 2 and "node-x" in result.stderr and "unknown" in result.stderr
    assert not a.redis.client().exists(keys.node_drain("node-x"))
    result = conductor("drain", "node-a", "--reason", " ", config=a.config, check=False)
    assert result.returncode == 2 and "--reason" in result.stderr


def test_partitions_steer_jobs_and_unknown_partitions_are_refused(make_node) -> None:
    """Jobs go only to nodes of their partition; a partition no node serves is refused at submit
    (exit 2, naming job.partition, nothing stored) unless ALLOW_UNKNOWN_PARTITIONS is set."""
    gpu = make_node("node-gpu", NODE_PARTITIONS="gpu")
    cpu = make_node("node-cpu", NODE_PARTITIONS="cpu,debug")
    gpu.start_workers(2)
    cpu.start_workers(2)
    for _ in range(3):
        assert gpu.wait_state(gpu.submit("#!/bin/bash\ntrue\n", "-p", "gpu"), "COMPLETED")["node"] == "node-gpu"
        assert gpu.wait_state(gpu.submit("#!/bin/bash\ntrue\n", "-p", "debug"), "COMPLETED")["node"] == "node-cpu"

    client = gpu.redis.client()
    before = (client.dbsize(), client.get(keys.NEXT_JOB_ID))
    result = conductor("submit", "-p", "compute-high-mem", "-", config=gpu.config, input="echo hi\n", check=False)
    assert result.returncode == 2, result.stderr
    assert "job.partition" in result.stderr and "compute-high-mem" in result.stderr and "cpu, debug, gpu" in result.stderr
    assert (client.dbsize(), client.get(keys.NEXT_JOB_ID)) == before

    summary = {p["name"]: p for p in json.loads(conductor("partitions", "--json", config=gpu.config).stdout)}
    assert set(summary) == {"cpu", "debug", "gpu"}
    assert summary["gpu"]["node_names"] == ["node-gpu"] and summary["gpu"]["total_cpus"] == 8
    assert summary["debug"]["states"] == {"IDLE": 1}
    assert "gpu" in conductor("partitions", config=gpu.config).stdout

    (gpu.directory / "allow.properties").write_text(
        gpu.config.read_text() + "ALLOW_UNKNOWN_PARTITIONS=true\n")
    allowed = gpu.directory / "allow.properties"
    job = int(conductor("submit", "-p", "later", "-", config=allowed, input="echo hi\n").stdout)
    shown = json.loads(conductor("show", str(job), "--json", config=gpu.config).stdout)
    assert (shown["state"], shown["pending_reason"]) == ("PENDING", "PartitionDown")


def test_default_node_serves_every_partition(make_node) -> None:
    """An empty NODE_PARTITIONS keeps the demonstration's compute-high-mem request working."""
    a = make_node("node-a")
    a.start_workers(1)
    job = a.submit("#!/bin/bash\necho hi\n", "-p", "compute-high-mem")
    assert a.wait_state(job, "COMPLETED")["partition"] == "compute-high-mem"
    listed = conductor("history", "--json", config=a.config)  # ended, still in Redis: listed too
    assert [(r["JobID"], r["State"], r["Partition"]) for r in json.loads(listed.stdout)] == [
        (job, "COMPLETED", "compute-high-mem")]
    assert "ACCOUNTING_FILE is not set" in listed.stderr
    assert [p["name"] for p in json.loads(conductor("partitions", "--json", config=a.config).stdout)] == ["*"]


def _conductor_keys(client) -> int:
    return sum(1 for _ in client.scan_iter(match="conductor:job:*", count=1000))


SOAK_JOBS = int(os.environ.get("RETENTION_SOAK_JOBS", "400"))


@pytest.mark.timeout(300 + SOAK_JOBS // 10)  # about 100 trivial jobs a second on a loaded 2-core machine
def test_retention_soak_keeps_redis_and_job_root_bounded_and_history_complete(make_node, tmp_path: Path) -> None:
    """Many trivial jobs with a short JOB_RETENTION and MAX_JOB_RECORDS: job records, their index
    entries, control keys and directories go away, Redis memory stops growing, `conductor jobs`
    stays consistent and `conductor history` lists every ended job exactly once.

    `make soak-retention` runs 20,000 (RETENTION_SOAK_JOBS); `make test` the same assertions on 400.
    """
    history = tmp_path / "acct" / "jobs.jsonl"
    node = make_node("node-a", WORKER_CONCURRENCY=4, JOB_RETENTION="1s", MAX_JOB_RECORDS=30,
                     ACCOUNTING_FILE=history)
    node.start_workers(4)
    client = node.redis.client()
    settings = load_settings(node.config)
    from conductor import jobs as jobs_module
    from conductor.jobs import JobSubmission

    def batch(count: int) -> list[int]:
        submission = JobSubmission.model_validate({"job": {"name": "t", "account": "soak"}, "script": "true\n"})
        ids = [jobs_module.submit(client, submission) for _ in range(count)]
        placement.place(client, node.redis.client())
        return ids

    def settled(ids: list[int]) -> bool:
        return client.zcard(keys.state("PENDING")) + client.zcard(keys.state("RUNNING")) == 0

    total = max(SOAK_JOBS // 100, 2) * 100
    submitted = batch(100)
    wait_until(lambda: settled(submitted), timeout=120, what="the first batch to end")
    wait_until(lambda: client.zcard(keys.JOBS) <= settings.max_job_records, timeout=60, what="records capped")
    memory_start = int(client.info("memory")["used_memory"])
    keys_start = client.dbsize()
    for _ in range(total // 100 - 1):
        submitted += batch(100)
        wait_until(lambda: settled(submitted), timeout=120, what="a batch to end")
    wait_until(lambda: client.zcard(keys.JOBS) == 0, timeout=60, what="every record to expire")
    # (the worker's own .spool of unacknowledged job ends lives there too, and stays)
    wait_until(lambda: not [p for p in (tmp_path / "node-a" / "jobs").iterdir() if not p.name.startswith(".")],
               timeout=60,
               what="every job directory to be removed")
    memory_end = int(client.info("memory")["used_memory"])
    print(f"retention soak: {total} jobs; used_memory {memory_start} -> {memory_end} bytes; "
          f"keys {keys_start} -> {client.dbsize()}; job directories left: 0")

    assert _conductor_keys(client) == 0, sorted(client.scan_iter(match="conductor:job:*", count=1000))[:5]
    for state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
        assert client.zcard(keys.state(state)) == 0
    assert json.loads(conductor("jobs", "--json", config=node.config).stdout) == []
    # total - 100 more jobs than at the first measurement, none of them kept: memory and the number
    # of keys did not grow with them.
    per_record = 600  # bytes a record of this job takes at least (hash of ~20 fields, index entries)
    assert memory_end - memory_start < (total - 100) * per_record / 2, (memory_start, memory_end)
    assert client.dbsize() <= keys_start, (keys_start, client.dbsize())

    rows = json.loads(conductor("history", "--json", config=node.config).stdout)
    assert [r["JobID"] for r in rows] == submitted
    assert {r["State"] for r in rows} == {"COMPLETED"}
    assert set(rows[0]) >= {"JobID", "JobName", "Account", "Partition", "AllocCPUS", "ReqMem", "State",
                            "ExitCode", "Submit", "Start", "End", "Elapsed", "NodeList", "MaxRSS", "Worker"}
    assert rows[0]["NodeList"] == "node-a" and rows[0]["ExitCode"] == "0:0" and rows[0]["Worker"].startswith("node-a-")
    assert len(submitted) == total


def test_retention_never_touches_pending_or_running_jobs(make_node, tmp_path: Path) -> None:
    """Retention looks only at final states: a RUNNING and a PENDING job outlive any retention."""
    from conductor import retention

    node = make_node("node-a", WORKER_CONCURRENCY=1, JOB_RETENTION="1s", MAX_JOB_RECORDS=1)
    node.start_workers(1)
    release = tmp_path / "release"
    running = node.submit(blocking(release))
    pending = node.submit("#!/bin/bash\necho later\n")
    node.wait_state(running, "RUNNING")
    done = int(conductor("submit", "-", config=node.config, input="true\n").stdout)
    client = node.redis.client()
    conductor("cancel", str(done), config=node.config)
    wait_until(lambda: not client.exists(keys.job(done)), timeout=30, what="the cancelled job to expire")
    assert retention.expire(client, load_settings(node.config)) == []
    assert node.job(running)["state"] == "RUNNING" and node.job(pending)["state"] == "PENDING"
    release.touch()
    node.wait_state(pending, "COMPLETED")


def test_history_filters(tmp_path: Path) -> None:
    """`conductor history --state/--account/--since` filter the accounting file; a bad --since is exit 2."""
    history = tmp_path / "jobs.jsonl"
    rows = [
        {"JobID": 1, "JobName": "a", "Account": "physics", "Partition": "p", "AllocCPUS": 1, "ReqMem": "0",
         "State": "COMPLETED", "ExitCode": "0:0", "Submit": "2026-01-01T00:00:00.000000Z",
         "Start": "2026-01-01T00:00:01.000000Z", "End": "2026-01-01T00:00:02.000000Z", "Elapsed": "00:00:01",
         "NodeList": "n", "Worker": "n-1"},
        {"JobID": 2, "JobName": "b", "Account": "chem", "Partition": "p", "AllocCPUS": 2, "ReqMem": "1G",
         "State": "FAILED", "ExitCode": "1:0", "Submit": "2026-02-01T00:00:00.000000Z",
         "Start": "2026-02-01T00:00:01.000000Z", "End": "2026-02-01T00:00:02.000000Z", "Elapsed": "00:00:01",
         "NodeList": "n", "Worker": "n-2"},
    ]
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "app.properties"
    config.write_text(f"NODE_NAME=n\nACCOUNTING_FILE={history}\nREDIS_URL=redis://127.0.0.1:{free_port()}/0\n")

    def ids(*args: str) -> list[int]:
        return [r["JobID"] for r in json.loads(conductor("history", "--json", *args, config=config).stdout)]

    assert ids() == [1, 2]
    assert ids("--state", "failed") == [2]
    assert ids("--account", "physics") == [1]
    assert ids("--since", "2026-01-15") == [2]
    assert "physics" in conductor("history", config=config).stdout
    assert "unreachable" in conductor("history", config=config).stderr  # the file alone still answers
    bad = conductor("history", "--since", "yesterday-ish", config=config, check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_directory_cleanup_removes_only_expired_jobs(redis_server: RedisServer, tmp_path: Path) -> None:
    """A node removes JOB_ROOT/<id> only when job <id> left Redis through retention: a directory of
    a job still recorded, above retention's watermark, or with an id above the job counter (a Redis
    that was replaced or emptied), stays."""
    from conductor import retention

    client = redis_server.client()
    client.set(keys.NEXT_JOB_ID, 9)
    client.hset(keys.job(2), mapping={"id": 2, "state": "COMPLETED"})
    root = tmp_path / "jobs"
    for job_id in (1, 2, 5, 11):
        (root / str(job_id)).mkdir(parents=True)
        (root / str(job_id) / f"slurm-{job_id}.out").write_text("x")
    (root / "notes").mkdir()
    assert retention.remove_directories(client, root) == []  # retention has removed nothing yet
    client.zadd(keys.EXPIRED_THROUGH, {"id": 3})  # as retention leaves it after removing 1 and 3
    client.config_resetstat()
    assert retention.remove_directories(client, root) == [1]
    assert sorted(p.name for p in root.iterdir()) == ["11", "2", "5", "notes"]
    # Only the directories up to the watermark were asked about (5 and 11 cost Redis nothing).
    assert client.info("commandstats")["cmdstat_exists"]["calls"] == 2


def test_retention_reads_when_a_kept_job_ended_once_not_on_every_pass(redis_server: RedisServer, tmp_path: Path) -> None:
    """The oldest ended jobs are looked at on every pass until they are due: their end is read
    from Redis once, and a job that becomes due later still goes."""
    import time

    from conductor import retention

    client = redis_server.client()
    now = time.time()
    for job_id, ended in ((1, now - 5), (2, now - 1000), (3, now - 5)):
        client.hset(keys.job(job_id), mapping={"id": job_id, "state": "COMPLETED", "name": "j", "account": "a",
                                               "partition": "p", "cpus": 1, "memory": 0, "submitted_at": "1.0",
                                               "started_at": "2.0", "ended_at": f"{ended:.6f}", "exit_code": 0})
        client.zadd(keys.JOBS, {job_id: job_id})
        client.zadd(keys.state("COMPLETED"), {job_id: job_id})
    keep = load_settings(None, accounting_file=tmp_path / "acct.jsonl", job_retention=3600)
    client.config_resetstat()
    assert retention.expire(client, keep) == []
    assert retention.expire(client, keep) == []
    assert client.info("commandstats")["cmdstat_hget"]["calls"] == 3  # once per job, not once per pass
    shorter = load_settings(None, accounting_file=tmp_path / "acct.jsonl", job_retention=100)
    assert retention.expire(client, shorter) == [2]
    assert client.exists(keys.job(1)) and client.exists(keys.job(3)) and not client.exists(keys.job(2))


def test_records_stay_while_the_accounting_file_cannot_be_written(redis_server: RedisServer, tmp_path: Path) -> None:
    """History must not lose what Redis forgets: if ACCOUNTING_FILE cannot be written, the expired
    records stay in Redis (and are removed, with their line written, once it can)."""
    from conductor import retention

    client = redis_server.client()
    client.hset(keys.job(1), mapping={"id": 1, "state": "COMPLETED", "name": "j", "account": "a", "partition": "p",
                                      "cpus": 1, "memory": 0, "submitted_at": "1.0", "started_at": "2.0",
                                      "ended_at": "3.0", "exit_code": 0})
    client.zadd(keys.JOBS, {1: 1})
    client.zadd(keys.state("COMPLETED"), {1: 1})
    (tmp_path / "blocked").write_text("a file where a directory should be")
    blocked = load_settings(None, accounting_file=tmp_path / "blocked" / "jobs.jsonl", job_retention=1)
    assert retention.expire(client, blocked) == []
    assert client.exists(keys.job(1)) and client.zscore(keys.state("COMPLETED"), 1) == 1
    good = load_settings(None, accounting_file=tmp_path / "acct" / "jobs.jsonl", job_retention=1)
    assert retention.expire(client, good) == [1]
    assert not client.exists(keys.job(1)) and client.zcard(keys.JOBS) == 0
    assert json.loads((tmp_path / "acct" / "jobs.jsonl").read_text())["JobID"] == 1
