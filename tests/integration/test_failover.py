"""High availability: Redis Sentinel failover under a steady job stream, and a restart from an
older snapshot, with real redis-server and sentinel processes and real worker processes.

What must hold afterwards: every accepted job in exactly one final state, no script run twice,
the workers' PIDs unchanged (none exited), and ``conductor check --cluster`` clean.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from redis import Redis

from conductor import jobs, placement, reconcile
from conductor.config import load_settings
from conductor.jobs import JobState, JobSubmission
from conductor.store import UNREACHABLE, NotReplicated, connect
from support import Node, RedisServer, SentinelCluster, conductor, free_port, require, running, wait_until
from test_api import Api


def recording_script(runs: Path, body: str = "sleep 0.2") -> str:
    """A job that notes each run of itself (id and time), so a second run would show."""
    return f'#!/bin/bash\necho "$SLURM_JOB_ID $(date +%s.%N)" >> {runs}\n{body}\n'


def runs_by_job(runs: Path) -> tuple[Counter[int], list[float]]:
    lines = [line.split() for line in runs.read_text().splitlines()] if runs.exists() else []
    return Counter(int(job_id) for job_id, _ in lines), sorted(float(at) for _, at in lines)


def assert_cluster_check_passes(config: Path) -> None:
    result = conductor("check", "--cluster", "--json", config=config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"ok": True, "violations": []}


def wait_for_cluster_check_to_pass(config: Path, timeout: float = 30.0) -> None:
    """Polls `check --cluster` until it passes. After a rollback the repairs land within a
    heartbeat of each worker's return, not at one instant: until every worker has beaten on the
    restarted Redis, its expired record makes its RUNNING job a true violation of the moment."""
    seen: list[str] = []

    def passes() -> bool:
        result = conductor("check", "--cluster", "--json", config=config, check=False)
        seen[:] = [result.stdout + result.stderr]
        return result.returncode == 0 and json.loads(result.stdout) == {"ok": True, "violations": []}

    try:
        wait_until(passes, timeout=timeout, interval=0.2, what="the cluster check to pass")
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer: {seen[0] if seen else ''}") from None


def ids_named(text: str) -> set[int]:
    """The job ids an error message names ("job 12 ...")."""
    return {int(found) for found in re.findall(r"\bjob (\d+)\b", text)}


def job_names(config: Path) -> list[str]:
    return [job["name"] for job in json.loads(conductor("jobs", "--json", config=config).stdout)]


def submit_when_accepted(config: Path, name: str, told: set[int], timeout: float = 60) -> int:
    """Submit through the CLI until a submission is acknowledged (after a failover the new primary
    needs a replica first); the ids named by the refusals on the way are added to ``told``."""
    def attempt() -> int | None:
        result = conductor("submit", "--name", name, "-", config=config, input="#!/bin/bash\ntrue\n", check=False)
        if result.returncode == 0:
            return int(result.stdout)
        assert result.returncode == 1, result.stderr
        told.update(ids_named(result.stderr))
        return None

    return wait_until(attempt, timeout=timeout, interval=0.2, what=f"a submission ({name}) to be acknowledged")


def wait_state(connection: Redis, job_id: int, state: str, timeout: float = 30) -> dict:
    """Like Node.wait_state, through the sentinels' current primary."""
    return wait_until(lambda: (job := jobs.get(connection, job_id)) is not None and job["state"] == state and job,
                      timeout=timeout, what=f"job {job_id} to be {state}")


class Stream:
    """Submits short jobs steadily from a thread, as a client would: an id counts as accepted only
    once ``jobs.submit`` returned it; a refused submission is retried after a short pause."""

    def __init__(self, config: Path, script: str, per_second: float) -> None:
        self.settings = load_settings(config)
        self.submission = JobSubmission.model_validate({"job": {"name": "stream"}, "script": script})
        self.pause = 1.0 / per_second
        self.accepted: list[int] = []
        self.refused: list[str] = []
        self.submit_seconds: list[float] = []
        self.unexpected: list[BaseException] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # the test reports it instead of a silently dead thread
            self.unexpected.append(error)
            raise

    def _run(self) -> None:
        connection, raw = connect(self.settings), connect(self.settings, decode=False)
        while not self.stopped.wait(self.pause):
            began = time.perf_counter()
            try:
                job_id = jobs.submit(connection, self.submission)
            except (NotReplicated, *UNREACHABLE) as error:
                self.refused.append(str(error))
                continue
            self.submit_seconds.append(time.perf_counter() - began)
            self.accepted.append(job_id)
            try:
                placement.place(connection, raw)
            except UNREACHABLE:
                pass  # placement runs again on the workers' heartbeats

    def start(self) -> Stream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)


@pytest.fixture
def sentinel_cluster(tmp_path):
    require("redis-server")
    with running(SentinelCluster(tmp_path / "redis").start()) as cluster:
        yield cluster


@pytest.mark.reliability("fault: Redis primary SIGKILLed under a steady job stream (Sentinel failover)")
def test_primary_killed_under_load_fails_over_without_losing_or_repeating_a_job(tmp_path, sentinel_cluster):
    cluster = sentinel_cluster
    runs = tmp_path / "runs"
    node = Node(tmp_path, cluster.primary, WORKER_CONCURRENCY=4, HEARTBEAT_TTL=5,
                REDIS_SENTINELS=cluster.addresses, REDIS_SENTINEL_MASTER=cluster.MASTER)
    with running(node):
        workers = node.start_workers(4)
        pids = {w.index: w.pid for w in workers}
        stream = Stream(node.config, recording_script(runs), per_second=20).start()
        with running(stream):
            wait_until(lambda: len(runs_by_job(runs)[1]) >= 20, timeout=60, what="the stream to run jobs")
            killed_at = time.time()
            victim = cluster.kill_primary()
            wait_until(lambda: cluster.primary_port() != victim.port, timeout=60, interval=0.05,
                       what="sentinels to fail over")
            promoted = time.time() - killed_at
            wait_until(lambda: any(at > killed_at for at in runs_by_job(runs)[1]), timeout=60,
                       what="jobs to start again after the failover")
            resumed = min(at for at in runs_by_job(runs)[1] if at > killed_at) - killed_at
            accepted_at_kill = len(stream.accepted)
            wait_until(lambda: len(stream.accepted) >= accepted_at_kill + 40 or stream.unexpected, timeout=60,
                       what="submissions to be accepted again")
            assert not stream.unexpected, stream.unexpected
        new_primary = cluster.current().client()
        settings = load_settings(node.config)
        connection = connect(settings)

        def all_final() -> bool:
            states = [connection.hget(f"conductor:job:{i}", "state") for i in stream.accepted]
            return all(s is not None and JobState(s).final for s in states)

        wait_until(all_final, timeout=90, what="every accepted job to end")
        counts, _ = runs_by_job(runs)
        views = [jobs.get(connection, i) for i in stream.accepted]
        assert all(v is not None for v in views), "an acknowledged submission was lost"
        twice = {i: n for i, n in counts.items() if n > 1}
        assert not twice, f"scripts ran more than once: {twice}"
        for view in views:
            if view["state"] == "COMPLETED":
                assert counts[view["id"]] == 1, view
        assert {w.index: w.pid for w in workers} == pids
        assert all(w.process.poll() is None for w in workers), "a worker exited during the failover"
        assert new_primary.info("server")["tcp_port"] != victim.port
        wait_for_cluster_check_to_pass(node.config)
        wait_per_submit = sorted(stream.submit_seconds)[len(stream.submit_seconds) // 2]
        print(f"\nfailover: sentinels named a new primary {promoted:.2f} s and jobs started again "
              f"{resumed:.2f} s after SIGKILL of the primary; "
              f"{len(stream.accepted)} accepted, {len(stream.refused)} refused during the failover, "
              f"submit with WAIT 1 p50 {wait_per_submit * 1000:.2f} ms; states "
              f"{Counter(v['state'] for v in views)}; repairs {reconcile.counts(connection)}")


@pytest.mark.reliability("fault: Redis restarted from a snapshot older than the last writes")
@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_restart_from_an_older_snapshot_is_reconciled_from_what_workers_know(tmp_path, persistence):
    """Redis comes back from an older copy of its data (an RDB snapshot, or an append-only file
    copied earlier): jobs that ended or started since are recorded again from what the workers
    know, none runs twice, no job id is handed out twice, and the books pass the cluster check."""
    aof = persistence == "aof"
    # appendfsync always: the copy holds every write made before it, as the RDB snapshot does.
    redis = RedisServer(tmp_path / "redis", appendonly=aof, extra=("--appendfsync", "always") if aof else ()).start()
    older = tmp_path / ("older-aof" if aof else "snapshot.rdb")
    runs = tmp_path / "runs"
    gates = tmp_path / "gates"
    gates.mkdir()

    def gated(name: str) -> str:
        return recording_script(runs, f"while [ ! -e {gates / name} ]; do sleep 0.05; done")

    node = Node(tmp_path, redis, WORKER_CONCURRENCY=4, HEARTBEAT_INTERVAL=1)
    with running(redis), running(node):
        workers = node.start_workers(4)
        pids = {w.index: w.pid for w in workers}
        client = redis.client()
        still_running = node.submit(gated("a"))  # running at the snapshot and after the restart
        ends_later = node.submit(gated("c"))     # running at the snapshot, COMPLETED before the restart
        for job_id in (still_running, ends_later):
            wait_until(lambda j=job_id: node.job(j)["worker"], what=f"job {job_id} to be claimed")
        if aof:
            shutil.copytree(redis.directory / "appendonlydir", older)
        else:
            client.save()
            shutil.copy(redis.directory / "dump.rdb", older)

        (gates / "c").touch()
        node.wait_state(ends_later, "COMPLETED")
        unknown_running = node.submit(gated("b"))  # submitted after the snapshot, running at the restart
        unknown_done = node.submit(recording_script(runs, "exit 3"))  # after the snapshot, FAILED before it
        node.wait_state(unknown_done, "FAILED")
        wait_until(lambda: node.job(unknown_running)["worker"], what="the late job to be claimed")
        # Every worker has read back the ends it recorded (a whole beat began and ended since):
        # what it saw Redis hold it reads again only because Redis changed.
        ended = time.time()
        wait_until(lambda: all(float(client.hget(f"worker:{node.name}-{w.index}", "last_heartbeat") or 0) > ended + 2.5
                               for w in workers), what="two heartbeats of every worker after the last end")

        assert redis.process is not None
        redis.process.kill()
        redis.process.wait()
        if aof:
            shutil.rmtree(redis.directory / "appendonlydir")
            shutil.copytree(older, redis.directory / "appendonlydir")
        else:
            shutil.copy(older, redis.directory / "dump.rdb")
        redis.start()
        client = redis.client()
        # Redis now holds the older view (ends_later RUNNING, unknown_running unknown), but the
        # workers reconnect at once and may repair it before any read here: the repair counts
        # at the end prove the rollback happened and was repaired.

        def reaches(job_id: int, state: str) -> dict:
            """Polls through the moments in which Redis does not know the job at all."""
            return wait_until(lambda: (j := jobs.get(client, job_id)) is not None and j["state"] == state and j,
                              timeout=30, what=f"job {job_id} to be {state} again")

        reaches(ends_later, "COMPLETED")
        assert reaches(unknown_done, "FAILED")["exit_code"] == 3
        restored = reaches(unknown_running, "RUNNING")
        wait_until(lambda: node.job(unknown_running)["worker"] is not None, what="the restored job's worker")
        assert node.job(still_running)["state"] == "RUNNING"
        wait_for_cluster_check_to_pass(node.config)
        later = node.submit(recording_script(runs, "true"))
        assert later > unknown_done, "a job id was handed out twice"

        (gates / "a").touch()
        (gates / "b").touch()
        for job_id in (still_running, unknown_running, later):
            node.wait_state(job_id, "COMPLETED", timeout=30)
        counts, _ = runs_by_job(runs)
        assert set(counts.values()) == {1}, f"scripts ran more than once: {counts}"
        assert {w.index: w.pid for w in workers} == pids
        assert all(w.process.poll() is None for w in workers)
        repairs = reconcile.counts(client)
        assert repairs.get("running_restored", 0) >= 1 and repairs.get("outcome_recorded", 0) >= 2, repairs
        assert restored["node"] == node.name
        assert_cluster_check_passes(node.config)


@pytest.mark.reliability("fault: replicas lagging when a job is submitted (Sentinel)")
def test_a_submission_no_replica_confirmed_is_refused_without_a_job_or_an_id(tmp_path, sentinel_cluster):
    """With sentinels, `submit` answers with an id only once a replica has the job: while no
    replica acknowledges, it fails before anything is stored, names no id, and no job runs."""
    cluster = sentinel_cluster
    node = Node(tmp_path, cluster.primary, WORKER_CONCURRENCY=1, HEARTBEAT_TTL=5,
                REDIS_SENTINELS=cluster.addresses, REDIS_SENTINEL_MASTER=cluster.MASTER)
    with running(node):
        node.start_workers(1)
        with cluster.replicas_stopped():  # hung replicas: the links stay, nothing is acknowledged
            result = conductor("submit", "--name", "unconfirmed", "-", config=node.config,
                               input="#!/bin/bash\ntrue\n", check=False)
        assert result.returncode == 1, result.stdout
        assert result.stdout == ""
        assert "no replica confirmed the write" in result.stderr and "nothing was submitted" in result.stderr
        assert ids_named(result.stderr) == set(), result.stderr
        assert "unconfirmed" not in job_names(node.config)  # the primary survived, and holds no such job
        later = submit_when_accepted(node.config, "later", set())  # the replicas answer again
        assert node.wait_state(later, "COMPLETED")


@pytest.mark.reliability("fault: Redis primary SIGKILLed after submissions no replica confirmed, replicas cut off (Sentinel)")
def test_a_submission_unconfirmed_when_the_primary_dies_names_no_id_that_another_job_gets(tmp_path, sentinel_cluster):
    """The replicas are cut off, a client submits through the CLI and through the HTTP API, then the
    primary is SIGKILLed and a replica that never saw those submissions is promoted. Each client
    was refused without an id (exit 1 / 503), no job of theirs exists afterwards, no id named to
    a client goes to another job, the worker that ran a job through it all keeps its PID and its
    job, and the cluster check passes."""
    cluster = sentinel_cluster
    gate = tmp_path / "gate"
    node = Node(tmp_path, cluster.primary, WORKER_CONCURRENCY=1, HEARTBEAT_TTL=5, API_PORT=free_port(),
                REDIS_SENTINELS=cluster.addresses, REDIS_SENTINEL_MASTER=cluster.MASTER)
    with running(node):
        [worker] = node.start_workers(1)
        held = node.submit(f"#!/bin/bash\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n")
        node.wait_state(held, "RUNNING")
        with running(Api(node.config)) as api:
            with cluster.replicas_stopped(cut_links=True):
                cli = conductor("submit", "--name", "unconfirmed-cli", "-", config=node.config,
                                input="#!/bin/bash\ntrue\n", check=False)
                http = api.submit("#!/bin/bash\ntrue\n", name="unconfirmed-http")
                victim = cluster.kill_primary()
            wait_until(lambda: cluster.primary_port() != victim.port, timeout=60, interval=0.05,
                       what="sentinels to fail over")
            told = ids_named(cli.stderr) | ids_named(http.text)
            after_cli = submit_when_accepted(node.config, "after-cli", told)
            after_http = wait_until(lambda: (r := api.submit("#!/bin/bash\ntrue\n", name="after-http")).status_code == 201
                                    and r.json()["job_id"], timeout=60, what="the API to accept a job again")
        assert not told & {after_cli, after_http}, f"ids named to refused clients went to other jobs: {told}"

        assert cli.returncode == 1 and cli.stdout == "", cli.stdout
        assert "no replica confirmed the write" in cli.stderr and "nothing was submitted" in cli.stderr, cli.stderr
        assert http.status_code == 503 and http.headers["Retry-After"] == "5", http.text
        assert "nothing was submitted" in http.json()["detail"], http.text
        assert told == set(), f"a refused client was told an id: {cli.stderr} {http.text}"
        names = job_names(node.config)
        assert not {"unconfirmed-cli", "unconfirmed-http"} & set(names), names

        connection = connect(load_settings(node.config))
        assert jobs.get(connection, held)["state"] == "RUNNING"  # type: ignore[index]
        gate.touch()
        for job_id in (held, after_cli, after_http):
            wait_state(connection, job_id, "COMPLETED")
        assert worker.process.poll() is None and node.workers[1].pid == worker.pid
        wait_for_cluster_check_to_pass(node.config)


@pytest.mark.reliability("fault: a job stored on the Redis primary but confirmed by no replica (Sentinel)")
@pytest.mark.parametrize("primary", ["dies", "survives"])
def test_a_job_no_replica_confirmed_keeps_its_id_whether_or_not_the_primary_survives(tmp_path, sentinel_cluster,
                                                                                     primary):
    """The narrower window: the id was reserved (a replica confirmed it), then the replicas are cut off
    before the job itself reaches one. The client is told the job's id and that it is not
    confirmed. If the primary survives the job runs; if it dies, `conductor show N` says the job
    was lost, and no later job gets id N."""
    cluster = sentinel_cluster
    gate = tmp_path / "gate"
    node = Node(tmp_path, cluster.primary, WORKER_CONCURRENCY=1, HEARTBEAT_TTL=5,
                REDIS_SENTINELS=cluster.addresses, REDIS_SENTINEL_MASTER=cluster.MASTER)
    with running(node):
        [worker] = node.start_workers(1)
        held = node.submit(f"#!/bin/bash\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n")  # so the new job waits
        node.wait_state(held, "RUNNING")
        settings = load_settings(node.config)
        connection = connect(settings)
        submission = JobSubmission.model_validate({"job": {"name": "unconfirmed"}, "script": "#!/bin/bash\ntrue\n"})
        reserved = jobs.reserve_id(connection)
        with cluster.replicas_stopped(cut_links=True):
            with pytest.raises(NotReplicated) as refused:
                jobs.submit(connection, submission, job_id=reserved)
            if primary == "dies":
                victim = cluster.kill_primary()
        if primary == "dies":
            wait_until(lambda: cluster.primary_port() != victim.port, timeout=60, interval=0.05,
                       what="sentinels to fail over")
        message = str(refused.value)
        assert f"job {reserved} reached the primary but no replica confirmed the write" in message, message
        assert f"conductor show {reserved}" in message, message
        later = submit_when_accepted(node.config, "later", set())
        assert later > reserved, f"job id {reserved}, named to the client, went to another job"
        shown = conductor("show", str(reserved), config=node.config, check=False)
        if primary == "dies":
            assert shown.returncode == 1, shown.stdout
            assert f"job {reserved} does not exist: the id was given out but no job is stored" in shown.stderr
            assert "lost: submit it again" in shown.stderr, shown.stderr
        else:
            assert shown.returncode == 0 and "unconfirmed" in shown.stdout, shown.stdout + shown.stderr
        gate.touch()
        for job_id in (held, later, *([reserved] if primary == "survives" else [])):
            wait_state(connection, job_id, "COMPLETED")
        assert worker.process.poll() is None and node.workers[1].pid == worker.pid
        wait_for_cluster_check_to_pass(node.config)


@pytest.mark.reliability("fault: a node's ledger out of step with its RUNNING jobs")
def test_check_cluster_reports_a_broken_ledger_and_a_worker_repairs_it(tmp_path):
    """`check --cluster` exits 1 naming the violation; within a heartbeat a worker of the node
    recomputes the ledger from its RUNNING jobs and counts the repair."""
    with running(RedisServer(tmp_path / "redis").start()) as redis:
        node = Node(tmp_path, redis, WORKER_CONCURRENCY=1)
        with running(node):
            client = redis.client()
            client.hset("conductor:reconciliations", "ledger_recomputed", 0)
            node.start_workers(1)
            assert_cluster_check_passes(node.config)
            client.hincrby(f"conductor:node:{node.name}", "allocated_cpus", 3)  # as after lost writes
            # The worker may already have repaired it; when the check sees it first, it must say so.
            result = conductor("check", "--cluster", "--json", config=node.config, check=False)
            if result.returncode != 0:
                assert result.returncode == 1
                assert any("allocated CPUs 3 != 0" in v for v in json.loads(result.stdout)["violations"])
            wait_until(lambda: reconcile.counts(client).get("ledger_recomputed", 0) >= 1,
                       what="a worker to recompute the ledger")
            assert_cluster_check_passes(node.config)
            client.delete(f"conductor:node:{node.name}")  # what no worker can repair: a vanished ledger
            client.sadd(f"conductor:node:{node.name}:running", 999)
            client.hset("conductor:job:999", mapping={"state": "COMPLETED", "node": node.name})
            node.stop()
            result = conductor("check", "--cluster", config=node.config, check=False)
            assert result.returncode == 1
            assert "job 999 holds resources but is COMPLETED" in result.stdout or "has no ledger" in result.stdout
