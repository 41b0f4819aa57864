"""Regression tests for the correctness holes of the first release, against real redis-server and
real worker processes: Redis outages under running jobs, cancels racing a dead worker, stops with
jobs waiting or Redis gone, double runs, orphan clean-up and errors naming their real cause."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conductor import keys, placement, procs, registry, scripts
from conductor.store import connect
from support import (BIN, CHECKOUT_SHARED, PRIVATE_CHECKOUT, Node, RedisServer, WorkerProcess, conductor, node_config,
                     wait_until, write_config)

BLOCK = "#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\nexit {code}\n"


def alive(pid: int) -> bool:
    return procs.start_ticks(pid) is not None


def allocated(node: Node) -> tuple[int, int]:
    ledger = node.redis.client().hmget(f"conductor:node:{node.name}", "allocated_cpus", "allocated_memory")
    return int(ledger[0]), int(ledger[1])


@pytest.fixture
def aof_redis(tmp_path):
    server = RedisServer(tmp_path / "aof-redis", appendonly=True).start()
    yield server
    server.stop()


def submit_one(client) -> int:
    from conductor import jobs
    from conductor.jobs import JobSubmission

    return jobs.submit(client, JobSubmission.model_validate({"job": {"name": "x"}, "script": "true\n"}))


def cluster_beats(client, count: int) -> None:
    """Wait for ``count`` more heartbeats from anyone (each one may also reap)."""
    for _ in range(count):
        last = client.hget(keys.LIVENESS, "last_beat")
        wait_until(lambda: client.hget(keys.LIVENESS, "last_beat") != last, what="another heartbeat")


@pytest.mark.reliability("fault: Redis paused or restarted longer than HEARTBEAT_TTL under running jobs", cases=2)
@pytest.mark.parametrize("how", ["pause", "restart"])
def test_a_redis_outage_longer_than_the_ttl_kills_no_job_of_a_live_worker(tmp_path, aof_redis, how):
    """Guards against a Redis outage longer than HEARTBEAT_TTL killing jobs on live workers: the
    first sibling back must not reap the others (their records expired, their processes did not)
    nor kill their jobs as orphans; every job ends with its own outcome (a --requeue job too)."""
    node = Node(tmp_path, aof_redis, WORKER_CONCURRENCY=2, HEARTBEAT_INTERVAL=1, HEARTBEAT_TTL=3)
    try:
        workers = node.start_workers(2)
        first, second = tmp_path / "go-1", tmp_path / "go-2"
        plain = node.submit(BLOCK.format(release=first, code=7))
        requeue = node.submit(BLOCK.format(release=second, code=0), "--requeue")
        for job_id in (plain, requeue):
            wait_until(lambda j=job_id: node.job(j)["worker"], what=f"job {job_id} to be claimed")
        if how == "pause":
            os.kill(aof_redis.process.pid, signal.SIGSTOP)
            time.sleep(8)  # the fault itself: Redis frozen well beyond HEARTBEAT_TTL
            os.kill(aof_redis.process.pid, signal.SIGCONT)
        else:
            aof_redis.stop()
            first.touch()  # ends while Redis is away: exit status 7 must be what is recorded
            time.sleep(6)  # the fault itself
            aof_redis.start()
        client = aof_redis.client()
        wait_until(lambda: all(client.exists(f"worker:node-a-{i}") for i in (1, 2)), timeout=30,
                   what="both workers to register again")
        cluster_beats(client, 4)
        assert node.job(requeue)["state"] == "RUNNING" and not node.job(requeue)["requeued"]
        first.touch()
        second.touch()
        assert node.wait_state(plain, "FAILED", "NODE_FAIL", "COMPLETED")["exit_code"] == 7
        done = node.wait_state(requeue, "COMPLETED", "FAILED", "NODE_FAIL")
        assert done["state"] == "COMPLETED" and not done["requeued"]
        assert all(w.process.poll() is None for w in workers)
        assert allocated(node) == (0, 0)
    finally:
        node.stop()


@pytest.mark.reliability("fault: SIGKILL of a busy worker, then cancel")
def test_a_cancel_sent_after_the_worker_died_ends_the_job_cancelled(make_node, tmp_path):
    """Guards against a lost cancel: a cancel of a job whose worker has just died is honoured when
    the dead worker is reaped (CANCELLED), instead of the job being requeued and run again."""
    node = make_node(WORKER_CONCURRENCY=2)
    node.start_workers(2)
    runs = tmp_path / "runs"
    job_id = node.submit(f"#!/bin/bash\necho run >> {runs}\nsleep 300\n", "--requeue")
    wait_until(runs.exists, what="the job to start")
    owner = node.workers[int(node.job(job_id)["worker"].rsplit("-", 1)[1])]
    owner.signal(signal.SIGKILL)
    owner.wait()
    assert "cancel requested" in conductor("cancel", str(job_id), config=node.config).stdout
    job = node.wait_state(job_id, "CANCELLED", "PENDING", "NODE_FAIL", "COMPLETED", "FAILED")
    if job["state"] == "PENDING":  # the old fault: requeued; wait to show it runs again
        node.wait_state(job_id, "RUNNING")
    assert job["state"] == "CANCELLED"
    assert runs.read_text().count("run") == 1
    assert allocated(node) == (0, 0)


@pytest.mark.reliability("fault: SIGTERM to the last worker of a node with a job waiting")
def test_a_stopping_worker_places_nothing_on_its_own_slot(make_node, tmp_path):
    """Guards against a job stuck RUNNING with no worker: the last worker of a node, stopping after
    its job, must not place the waiting job on its own slot; the job waits PENDING and runs when a
    worker starts again."""
    node = make_node(WORKER_CONCURRENCY=1)
    worker = node.start_worker(1)
    release = tmp_path / "go"
    running = node.submit(BLOCK.format(release=release, code=0))
    wait_until(lambda: node.job(running)["worker"], what="the first job to be claimed")
    waiting = node.submit("#!/bin/bash\ntrue\n")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "stop requested" in worker.output(), what="the stop to be noted")
    release.touch()
    assert worker.wait() == 0
    assert node.job(running)["state"] == "COMPLETED"
    job = node.job(waiting)
    assert job["state"] == "PENDING", job
    assert allocated(node) == (0, 0)
    node.start_worker(1)
    assert node.wait_state(waiting, "COMPLETED")["exit_code"] == 0


def test_unregistering_hands_back_jobs_placed_on_the_slot(redis_server):
    """Guards the other half of the stranded job: a job placed on a slot that then unregisters
    goes back to PENDING in the same step (the unregister script)."""
    client = connect(redis_server.url)
    from conductor.config import Settings

    settings = Settings(node_name="node-z", total_cpus=2, total_memory=1 << 30, redis_url=redis_server.url)
    from conductor import resources

    resources.node_up(client, settings)
    registry.register(client, settings, 1)
    job_id = submit_one(client)
    assert dict(placement.place(client, connect(redis_server.url, decode=False))) == {job_id: "node-z"}
    registry.unregister(client, settings, 1)
    assert client.hget(keys.job(job_id), "state") == "PENDING"
    assert client.hget(keys.node("node-z"), "allocated_cpus") == "0"


@pytest.mark.reliability("fault: SIGTERM around a job's end while Redis is gone", cases=3)
@pytest.mark.parametrize("when", ["before-end-stopped", "after-end-stopped", "after-end-paused"])
def test_a_worker_told_to_stop_leaves_within_its_stop_timeout_when_redis_is_gone(tmp_path, aof_redis, when):
    """Guards against a stopping worker waiting for Redis forever: the job's end is spooled on local
    disk, the worker exits within WORKER_STOP_TIMEOUT, and the next worker of the node records
    the job's real outcome once Redis is back (exactly once)."""
    stop_timeout = 8
    node = Node(tmp_path, aof_redis, WORKER_CONCURRENCY=1, WORKER_STOP_TIMEOUT=stop_timeout)
    try:
        worker = node.start_worker(1)
        release = tmp_path / "go"
        job_id = node.submit(BLOCK.format(release=release, code=5))
        wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
        if when.endswith("paused"):
            os.kill(aof_redis.process.pid, signal.SIGSTOP)
        else:
            aof_redis.stop()
        if when.startswith("before"):
            worker.signal(signal.SIGTERM)
            wait_until(lambda: "stop requested" in worker.output(), what="the stop to be noted")
            release.touch()
        else:
            release.touch()
            wait_until(lambda: list((tmp_path / "jobs" / ".spool").glob("*.json")), what="the end to be spooled")
            worker.signal(signal.SIGTERM)
        worker.wait(timeout=stop_timeout)  # the promise itself: gone within its stop timeout
        spooled = list((tmp_path / "jobs" / ".spool").glob("*.json"))
        assert len(spooled) == 1, worker.output()
        if when.endswith("paused"):
            os.kill(aof_redis.process.pid, signal.SIGCONT)
        else:
            aof_redis.start()
        node.start_worker(1)
        job = node.wait_state(job_id, "FAILED", "COMPLETED", "NODE_FAIL")
        assert (job["state"], job["exit_code"]) == ("FAILED", 5)
        assert not list((tmp_path / "jobs" / ".spool").glob("*.json"))
        assert allocated(node) == (0, 0)
    finally:
        if aof_redis.process and aof_redis.process.poll() is None:
            os.kill(aof_redis.process.pid, signal.SIGCONT)
        node.stop()


@pytest.mark.reliability("fault: --requeue job re-placed while its first copy still runs")
def test_a_requeued_job_never_runs_beside_its_first_copy(make_node, tmp_path):
    """Guards against a double run: a requeued job's first copy (left by a SIGKILLed worker) is
    killed before the second copy starts on the host, each attempt has its own process-group
    entry, and a stale finish from a non-owner removes nobody else's entry."""
    node = make_node(WORKER_CONCURRENCY=1)
    first = node.start_worker(1)
    runs = tmp_path / "runs"
    job_id = node.submit(f"#!/bin/bash\necho $$ >> {runs}\nsleep 300\n", "--requeue")
    wait_until(runs.exists, what="the first run")
    first_copy = int(runs.read_text().split()[0])
    client = node.redis.client()
    # The worker notes the copy's process group just after starting it; the script's first line
    # may run before that. A worker killed inside that window leaves a copy nobody can find (see
    # the README's limits); this test is about the copy the worker did note.
    wait_until(lambda: client.hexists(keys.node_process_groups("node-a"), f"{job_id}:{first_copy}"),
               what="the first copy's process group to be noted")
    first.signal(signal.SIGKILL)
    first.wait()
    # Requeue and re-place it from elsewhere (as another host's maintenance does) while no worker
    # of this host has cleaned up yet.
    client.delete("worker:node-a-1")  # its record expires
    registry.reap(connect(node.redis.url), "node-a-1", "node-a", force=True)
    assert node.job(job_id)["state"] == "PENDING"
    node.start_worker(1)
    wait_until(lambda: len(runs.read_text().split()) == 2, what="the second run")
    second_copy = int(runs.read_text().split()[1])
    assert not alive(first_copy) and alive(second_copy)
    entries = client.hgetall(keys.node_process_groups("node-a"))
    assert list(entries) == [f"{job_id}:{second_copy}"], entries
    # A stale finish from a worker that no longer owns the job must not touch the owner's entry.
    assert scripts.run(connect(node.redis.url), "finish", job_id, "FAILED", 1, "stale", "node-a-9",
                       f"{job_id}:{first_copy}") == 0
    assert list(client.hgetall(keys.node_process_groups("node-a"))) == [f"{job_id}:{second_copy}"]
    conductor("cancel", str(job_id), config=node.config)
    node.wait_state(job_id, "CANCELLED")
    assert not alive(second_copy)


@pytest.mark.reliability("fault: stale process-group entry naming an unrelated process group")
def test_orphan_clean_up_never_kills_a_process_that_is_not_the_jobs(make_node, tmp_path):
    """Guards against orphan clean-up killing unrelated processes: a recorded group whose leader is
    gone (PID reuse, reboot) is signalled only in processes provably the job's."""
    node = make_node(WORKER_CONCURRENCY=1)
    # An unrelated group whose leader exits and leaves a child: what "leader gone" looks like.
    leader = subprocess.Popen(["bash", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE,
                              start_new_session=True, text=True)
    unrelated = int(leader.stdout.readline())
    leader.wait()
    client = node.redis.client()
    client.hset(keys.node_process_groups("node-a"), "99:" + str(leader.pid),
                f"{leader.pid} 12345 {registry.HOST} node-a-9 {procs.BOOT}")
    try:
        worker = node.start_worker(1)
        wait_until(lambda: not client.hexists(keys.node_process_groups("node-a"), "99:" + str(leader.pid)),
                   what="the stale entry to be dropped")
        assert alive(unrelated)
        assert worker.process.poll() is None
    finally:
        os.kill(unrelated, signal.SIGKILL)


@pytest.mark.reliability("fault: an unprivileged worker meets a job's group it may not signal (root-owned)")
@pytest.mark.skipif(os.geteuid() != 0, reason="a root-owned group and a worker running as another user need root")
@pytest.mark.skipif(not CHECKOUT_SHARED, reason=PRIVATE_CHECKOUT)
def test_an_unprivileged_worker_starts_beside_a_recorded_group_it_may_not_signal(redis_server, tmp_path):
    """Guards against a worker that exits on every start: a recorded process group whose leader is
    alive with the recorded start time (so provably the job's) but belongs to root. The worker,
    under supervisord as SERVICE_USER (`daemon`, no CAP_KILL, jobs as `nobody`), is refused the
    signal by the kernel, directly and as JOB_USER. Before, that PermissionError ended its start with
    status 1 (and supervisord restarted it into the same wall); now the refusal is logged, the
    process is left alive, the stale entry is dropped and the worker runs jobs."""
    import grp
    import pwd

    from support import Supervisord, running

    service = pwd.getpwnam("daemon")
    work = Path(tempfile.mkdtemp(prefix="conductor-refused-kill-"))
    work.chmod(0o755)
    leader = subprocess.Popen(["sleep", "300"], start_new_session=True)  # root's, in its own group
    try:
        jobs = work / "jobs"
        jobs.mkdir(mode=0o750)
        os.chown(jobs, service.pw_uid, service.pw_gid)
        config = write_config(work / "app.properties", NODE_NAME="rk-node", TOTAL_CPUS=2, TOTAL_MEMORY="1G",
                              WORKER_CONCURRENCY=1, REDIS_URL=redis_server.url, JOB_ROOT=jobs,
                              SERVICE_USER="daemon", JOB_USER="nobody", INSTALL_PREFIX=BIN.parent,
                              HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TTL=2)
        os.chown(config, 0, grp.getgrnam("daemon").gr_gid)
        config.chmod(0o640)
        client = redis_server.client()
        ticks = procs.start_ticks(leader.pid)
        field = f"77:{leader.pid}"
        client.hset(keys.node_process_groups("rk-node"), field,
                    f"{leader.pid} {ticks} {registry.HOST} rk-node-9 {procs.BOOT}")  # a dead worker's job
        with running(Supervisord(work / "supervisor")) as supervisord:
            conductor("render", "supervisord", "--out", str(supervisord.conf_d), config=config)
            supervisord.start()

            def log() -> str:
                return supervisord.ctl("tail", "-100000", "conductor-worker-1", check=False).stdout

            wait_until(lambda: not client.hexists(keys.node_process_groups("rk-node"), field),
                       what=f"the worker to deal with the recorded group: {log()}")
            first_pid = int(wait_until(lambda: client.hget("worker:rk-node-1", "pid"),
                                       what=f"the worker to register: {log()}"))
            assert os.stat(f"/proc/{first_pid}").st_uid == service.pw_uid
            assert alive(leader.pid) and procs.start_ticks(leader.pid) == ticks
            wait_until(lambda: f"not allowed to kill process {leader.pid} of job 77" in log(),
                       what=f"the refusal to be logged: {log()}")
            job_id = int(conductor("submit", "-", config=config, input="#!/bin/bash\necho ran\n").stdout)
            wait_until(lambda: client.hget(keys.job(job_id), "state") in ("COMPLETED", "FAILED"),
                       what=f"job {job_id} to end: {log()}")
            assert client.hget(keys.job(job_id), "state") == "COMPLETED"
            assert supervisord.status()["conductor-worker-1"] == ("RUNNING", first_pid)  # never restarted
            assert "exited: conductor-worker-1" not in (work / "supervisor" / "supervisord.log").read_text()
            assert alive(leader.pid)
    finally:
        leader.kill()
        leader.wait()
        shutil.rmtree(work)


@pytest.mark.reliability("bad input: unusable JOB_ROOT")
def test_an_unusable_job_root_is_named_not_blamed_on_redis(tmp_path, redis_server):
    """Guards against errors that lie: a JOB_ROOT that cannot be created is reported as such, not
    as "cannot reach Redis"."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = node_config(tmp_path, redis_server, JOB_ROOT=blocker / "jobs")
    worker = WorkerProcess(config, 1, tmp_path / "worker.log")
    assert worker.wait() == 7
    assert "JOB_ROOT" in worker.output() and "Not a directory" in worker.output()
    assert "cannot reach Redis" not in worker.output()


@pytest.mark.reliability("fault: same NODE_NAME on two hosts")
def test_a_live_index_of_another_host_with_the_same_host_name_is_not_taken_over(make_node):
    """Guards against two hosts with the same NODE_NAME (and host name, as containers have): a
    record from another boot is never judged by a PID on this host, so it is not taken over."""
    node = make_node(WORKER_CONCURRENCY=1)
    client = node.redis.client()
    client.hset("worker:node-a-1", mapping={"name": "node-a-1", "node": "node-a", "index": 1, "pid": 999999,
                                             "pid_start": 1, "host": registry.HOST, "boot": "another-boot"})
    client.expire("worker:node-a-1", 60)
    duplicate = WorkerProcess(node.config, 1, node.directory / "duplicate.log")
    assert duplicate.wait() == 3
    assert "already running" in duplicate.output()


def test_a_worker_claiming_after_its_record_expired_is_still_reaped_if_it_dies(redis_server):
    """Guards the claim of a worker whose record expired (and was reaped) before it re-registers:
    it is listed again, so if it dies then its job is still reaped."""
    from conductor import resources
    from conductor.config import Settings

    client = connect(redis_server.url)
    settings = Settings(node_name="node-y", total_cpus=2, total_memory=1 << 30, redis_url=redis_server.url)
    resources.node_up(client, settings)
    registry.register(client, settings, 1)
    registry.register(client, settings, 2)
    job_id = submit_one(client)
    assert placement.place(client, connect(redis_server.url, decode=False))
    client.delete("worker:node-y-1")
    client.hdel(keys.node_worker_processes("node-y"), "node-y-1")  # its process is gone too
    registry.reap_dead(client)  # reaped: unlisted
    assert scripts.run(client, "start", job_id, "node-y-1", "node-y")[0] == "run"
    registry.reap_dead(client)  # it dies before registering again
    assert client.hget(keys.job(job_id), "state") == "NODE_FAIL"
    assert client.hget(keys.node("node-y"), "allocated_cpus") == "0"


def test_a_reaped_worker_that_registers_again_does_not_show_busy_forever(redis_server):
    """Guards the record of a worker reaped while running: when it registers again (still running
    the job) and the job then ends, its record says idle, not busy with a settled job."""
    from conductor import resources
    from conductor.config import Settings

    client = connect(redis_server.url)
    settings = Settings(node_name="node-x", total_cpus=2, total_memory=1 << 30, redis_url=redis_server.url)
    resources.node_up(client, settings)
    registry.register(client, settings, 1)
    job_id = submit_one(client)
    assert placement.place(client, connect(redis_server.url, decode=False))
    scripts.run(client, "start", job_id, "node-x-1", "node-x")
    client.delete("worker:node-x-1")
    client.hdel(keys.node_worker_processes("node-x"), "node-x-1")  # as seen from another host
    registry.reap_dead(client)
    assert client.hget(keys.job(job_id), "state") == "NODE_FAIL"
    registry.register(client, settings, 1, job=job_id)  # the heartbeat's re-registration
    assert scripts.run(client, "finish", job_id, "COMPLETED", 0, "", "node-x-1", "") == 0
    assert client.hget("worker:node-x-1", "state") == "idle"


def test_a_jobs_usage_is_recorded_with_its_end_and_an_oom_kill_counted_once(redis_server):
    """The finish script stores what a contained job used with its end; a worker that sends the
    end again (the reply to its first try was lost) neither counts the OOM kill twice nor fails."""
    from conductor import resources
    from conductor.cgroups import Usage
    from conductor.config import Settings

    client = connect(redis_server.url)
    settings = Settings(node_name="node-u", total_cpus=2, total_memory=1 << 30, redis_url=redis_server.url)
    resources.node_up(client, settings)
    registry.register(client, settings, 1)
    job_id = submit_one(client)
    assert placement.place(client, connect(redis_server.url, decode=False))
    scripts.run(client, "start", job_id, "node-u-1", "node-u")
    usage = resources.usage_args("node-u", Usage(max_rss=64 << 20, cpu_time=0.25, oom_killed=True))
    end = [job_id, "OUT_OF_MEMORY", 137, "memory limit", "node-u-1", "", *usage]
    assert scripts.run(client, "finish", *end) == 1
    assert scripts.run(client, "finish", *end) == 0
    assert client.hmget(keys.job(job_id), "state", "max_rss", "cpu_time", "oom_killed") == [
        "OUT_OF_MEMORY", str(64 << 20), "0.250000", "1"]
    assert client.hget(keys.node("node-u"), "oom_kills") == "1"
    assert scripts.run(client, "finish", 999_999, "COMPLETED", 0, "", "", "", *usage) == 0
    assert not client.exists(keys.job(999_999))  # no record made up for a job that is gone
