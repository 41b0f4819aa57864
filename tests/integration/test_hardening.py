"""Hostile use of a real node: a job that prints without end, a password in REDIS_URL's query
string looked for in every output, an unauthenticated client that sends a body, and the token of
`make run` looked for on curl's command line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from support import (BIN, CHECKOUT_SHARED, CONDUCTOR, PRIVATE_CHECKOUT, RedisServer, clean_env, free_port, require,
                     running, wait_until, write_config)
from test_api import Api

SECRET = "Qu3ry-S3cret"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.reliability("fault: a job printing without end")
def test_output_beyond_max_output_size_is_cut_with_a_note_and_the_job_runs_on(make_node):
    """Output had no cap: a job printing forever filled JOB_ROOT's disk. Now the file stops at the cap,
    says so, the job's reason says so, and the job is not killed (it finishes its own work)."""
    node = make_node(WORKER_CONCURRENCY=1, MAX_OUTPUT_SIZE="64K")
    node.start_workers(1)
    job_id = node.submit("#!/bin/bash\nhead -c 20000000 /dev/zero | tr '\\0' x\necho\necho after >ran-on\n")
    job = node.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["state"] == "COMPLETED" and job["exit_code"] == 0, job
    assert "output truncated at MAX_OUTPUT_SIZE=65536 bytes" in job["reason"]
    directory = node.directory / "jobs" / str(job_id)
    output = (directory / f"slurm-{job_id}.out").read_bytes()
    assert output.startswith(b"x" * 65536)
    assert output[65536:].decode().startswith("\n[conductor: output truncated at MAX_OUTPUT_SIZE=65536 bytes")
    assert len(output) < 65536 + 200
    assert (directory / "ran-on").read_text() == "after\n"


def test_output_under_the_cap_is_complete_and_the_reason_says_nothing(make_node):
    node = make_node(WORKER_CONCURRENCY=1, MAX_OUTPUT_SIZE="64K")
    node.start_workers(1)
    job_id = node.submit("#!/bin/bash\nhead -c 65532 /dev/zero | tr '\\0' y\necho err >&2\n")
    job = node.wait_state(job_id, "COMPLETED")
    assert job["reason"] in ("", None)
    output = (node.directory / "jobs" / str(job_id) / f"slurm-{job_id}.out").read_bytes()
    assert output == b"y" * 65532 + b"err\n"  # exactly the cap: nothing cut, no note


@pytest.mark.reliability("security: REDIS_URL query password in start-up errors, API log and 503")
def test_a_query_string_password_is_in_no_output(tmp_path):
    """A `?password=` in REDIS_URL (the form Unix sockets need) showed in start-up errors, the API's
    log and its 503 body; Redis is away here so that every error path speaks."""
    url = f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"
    config = write_config(tmp_path / "app.properties", NODE_NAME="n", REDIS_URL=url, JOB_ROOT=tmp_path / "jobs",
                          ALLOW_ROOT_JOBS=os.geteuid() == 0, API_PORT=free_port())
    worker = subprocess.run([CONDUCTOR, "worker", "--index", "1", "--config", str(config)], env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 4 and "password=***" in worker.stderr
    listing = subprocess.run([CONDUCTOR, "jobs", "--config", str(config)], env=clean_env(),
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 1 and "password=***" in listing.stderr
    with running(Api(config)) as api:
        answer = api.http.get("/readyz")
        assert answer.status_code == 503 and "password=***" in answer.json()["detail"]
        metrics = api.http.get("/metrics")
        wait_until(lambda: "password=***" in api.output(), what="the API to log the unreachable Redis")
        for text in (worker.stdout, worker.stderr, listing.stderr, answer.text, metrics.text, api.output()):
            assert SECRET not in text


@pytest.mark.reliability("security: 401 before reading the body (real server)")
def test_a_client_without_the_token_gets_401_before_sending_its_body(tmp_path, redis_server):
    """With `Expect: 100-continue` a client waits for the server's go before sending its body; the
    API used to ask for the body (100 Continue) and read it before answering 401."""
    config = write_config(tmp_path / "app.properties", NODE_NAME="n", REDIS_URL=redis_server.url,
                          API_PORT=free_port(), API_TOKEN="the-token", JOB_ROOT=tmp_path / "jobs")
    with running(Api(config, "the-token")) as api:
        port = int(api.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"POST /api/v1/jobs/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
            first = client.makefile("rb").readline()
        assert first.startswith(b"HTTP/1.1 401"), first
        assert httpx.post(f"{api.url}/api/v1/jobs/submit", content=b"x" * 100000, timeout=30).status_code == 401


@pytest.mark.reliability("security: RQ jobs naming anything but conductor's job function")
def test_a_worker_refuses_rq_jobs_that_name_anything_but_conductors_function(make_node, tmp_path):
    """Anyone who can write to Redis could enqueue `os.system` (or a pickle, which runs code when RQ
    merely reads it) on a node's queue, and a worker ran it. Now it is refused, logged at WARNING,
    counted, and conductor's own jobs keep running."""
    from rq import Callback, Queue

    node = make_node(WORKER_CONCURRENCY=1)
    worker = node.start_workers(1)[0]
    rq = node.redis.client()
    rq_raw = __import__("redis").Redis.from_url(node.redis.url)
    pwned = tmp_path / "pwned"
    queue = Queue(f"conductor-{node.name}", connection=rq_raw)  # RQ's default (pickle) serializer
    json_queue = Queue(f"conductor-{node.name}", connection=rq_raw, serializer="rq.serializers.JSONSerializer")
    hostile = [queue.enqueue("os.system", f"touch {pwned}"),
               json_queue.enqueue("os.system", f"touch {pwned}-json"),
               json_queue.enqueue("conductor.worker.perform", f"1; touch {pwned}-args"),
               json_queue.enqueue("conductor.worker.perform", 10**9, on_success=Callback("os.getcwd"))]
    wait_until(lambda: rq.get(f"conductor:node:{node.name}:refused-rq-jobs") == "4",
               what=f"the worker to refuse four jobs:\n{worker.output()}")
    assert not list(tmp_path.glob("pwned*"))
    assert worker.output().count("WARNING") >= 4 and "refused RQ job" in worker.output()
    assert "carries callbacks" in worker.output()
    assert "'os.system'" in worker.output()
    assert not rq_raw.exists(*(job.key for job in hostile))
    from conductor.metrics import refused_rq_jobs

    samples = {s.labels["node"]: s.value for s in refused_rq_jobs(rq).samples if s.name.endswith("_total")}
    assert samples[node.name] == 4
    job_id = node.submit("#!/bin/bash\necho fine\n")
    node.wait_state(job_id, "COMPLETED")


@pytest.mark.reliability("security: jobs run as JOB_USER, away from the services' secrets")
@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (or CAP_SETUID) in the worker")
def test_jobs_run_as_job_user_and_cannot_read_the_services_secrets(make_node, tmp_path):
    """Jobs ran as the workers' own user: a job printed app.properties (REDIS_URL, API_TOKEN) and read
    the worker's /proc/PPID/environ. With JOB_USER they run as that user, with no capability left,
    and both reads fail; the job still writes in its own directory and its output is kept."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    node = make_node(WORKER_CONCURRENCY=1, JOB_USER="nobody", API_TOKEN="job-must-not-see-this")
    node.config.chmod(0o640)
    node.start_workers(1)
    script = (f"#!/bin/bash\nid -u\ngrep CapEff /proc/self/status\necho mine > mine\n"
              f"cat /proc/$PPID/environ || echo no-environ\ncat {node.config} || echo no-config\n"
              f"setpriv --reuid=0 true || echo no-root\n")
    job_id = node.submit(script)
    node.wait_state(job_id, "COMPLETED", "FAILED")
    directory = node.directory / "jobs" / str(job_id)
    output = (directory / f"slurm-{job_id}.out").read_text()
    assert output.splitlines()[0] == str(nobody.pw_uid), output
    assert "CapEff:\t0000000000000000" in output
    assert "no-environ" in output and "no-config" in output and "no-root" in output
    assert "job-must-not-see-this" not in output and "REDIS_URL" not in output
    assert (directory / "mine").read_text() == "mine\n" and directory.stat().st_mode & 0o777 == 0o777
    assert node.job(job_id)["state"] == "COMPLETED"


def test_job_user_must_not_be_root_or_the_service_user(tmp_path):
    for value, reason in (("root", "never root"), ("svc", "must differ from SERVICE_USER")):
        config = write_config(tmp_path / "app.properties", SERVICE_USER="svc", JOB_USER=value)
        result = subprocess.run([CONDUCTOR, "check", "--config", str(config)], env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "JOB_USER" in result.stderr and reason in result.stderr


def _cmdline(proc: Path) -> bytes:
    try:
        return proc.joinpath("cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


@pytest.mark.reliability("security: JOB_USER under supervisord (worker unprivileged, jobs another user)")
@pytest.mark.skipif(os.geteuid() != 0, reason="supervisord must run as root to start workers as SERVICE_USER")
@pytest.mark.skipif(not CHECKOUT_SHARED, reason=PRIVATE_CHECKOUT)
def test_under_supervisord_an_unprivileged_worker_runs_jobs_as_job_user(redis_server, tmp_path):
    """The rendered program starts the worker as SERVICE_USER (here `daemon`) with only CAP_SETUID and
    CAP_SETGID (no CAP_KILL, in none of JOB_USER's groups); its jobs run as JOB_USER (`nobody`) with
    none, and cannot read the configuration (0640 root:SERVICE_USER) or the worker's environment.
    The worker still stops its jobs, as JOB_USER: a time limit and a cancel leave no process."""
    import grp
    import pwd

    from support import Supervisord, conductor

    service, job_user = pwd.getpwnam("daemon"), pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="conductor-job-user-"))
    work.chmod(0o755)
    try:
        jobs = work / "jobs"
        jobs.mkdir(mode=0o750)
        os.chown(jobs, service.pw_uid, service.pw_gid)
        config = write_config(work / "app.properties", NODE_NAME="ju-node", TOTAL_CPUS=2, TOTAL_MEMORY="1G",
                              WORKER_CONCURRENCY=1, REDIS_URL=redis_server.url, JOB_ROOT=jobs,
                              SERVICE_USER="daemon", JOB_USER="nobody", INSTALL_PREFIX=BIN.parent,
                              HEARTBEAT_INTERVAL=0.5, HEARTBEAT_TTL=2, API_TOKEN="not-for-jobs")
        os.chown(config, 0, grp.getgrnam("daemon").gr_gid)
        config.chmod(0o640)
        with running(Supervisord(work / "supervisor")) as supervisord:
            conductor("render", "supervisord", "--out", str(supervisord.conf_d), config=config)
            supervisord.start()
            client = redis_server.client()
            wait_until(lambda: client.hget("worker:ju-node-1", "pid"),
                       what=f"the worker to register: {supervisord.ctl('tail', 'conductor-worker-1', check=False).stdout}")
            worker_pid = int(client.hget("worker:ju-node-1", "pid"))
            assert os.stat(f"/proc/{worker_pid}").st_uid == service.pw_uid
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{worker_pid}/status").read_text().splitlines()
                          if ":\t" in line)
            assert int(status["CapBnd"], 16) == int(status["CapEff"], 16) == 1 << 6 | 1 << 7  # SETGID, SETUID
            assert str(job_user.pw_gid) not in status["Groups"].split()
            script = (f"#!/bin/bash\nid -u\ngrep CapEff /proc/self/status\ncat {config} || echo no-config\n"
                      "cat /proc/$PPID/environ || echo no-environ\n")
            job_id = int(conductor("submit", "-", config=config, input=script).stdout)
            wait_until(lambda: client.hget(f"conductor:job:{job_id}", "state") in ("COMPLETED", "FAILED"),
                       what=f"job {job_id} to end")
            assert client.hget(f"conductor:job:{job_id}", "state") == "COMPLETED", client.hget(f"conductor:job:{job_id}", "reason")
            output = (jobs / str(job_id) / f"slurm-{job_id}.out").read_text()
            assert output.splitlines()[0] == str(job_user.pw_uid), output
            assert "CapEff:\t0000000000000000" in output
            assert "no-config" in output and "no-environ" in output and "not-for-jobs" not in output
            # The worker stops its job's processes without CAP_KILL (as JOB_USER): a time limit ends one,
            # a cancel another; neither leaves its sleep behind.
            endless = int(conductor("submit", "-t", "00:00:02", "-", config=config,
                                    input="#!/bin/bash\nsleep 300\n").stdout)
            wait_until(lambda: client.hget(f"conductor:job:{endless}", "state") == "TIMEOUT",
                       what=f"job {endless} to time out")
            wait_until(lambda: not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == b"sleep\x00300\x00"],
                       what=f"job {endless}'s sleep to be gone (killed, then exited)")
            cancelled = int(conductor("submit", "-", config=config,
                                      input="#!/bin/bash\nsleep 301 &\nsleep 302\n").stdout)
            wait_until(lambda: [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == b"sleep\x00302\x00"],
                       what=f"job {cancelled} to start its sleeps")
            conductor("cancel", str(cancelled), config=config)
            wait_until(lambda: client.hget(f"conductor:job:{cancelled}", "state") == "CANCELLED",
                       what=f"job {cancelled} to be cancelled")
            wait_until(lambda: not [p for p in Path("/proc").glob("[0-9]*")
                                    if _cmdline(p) in (b"sleep\x00301\x00", b"sleep\x00302\x00")],
                       what=f"job {cancelled}'s processes to be gone")
    finally:
        shutil.rmtree(work)


def test_with_job_user_a_worker_refuses_a_job_root_open_to_every_user(tmp_path, redis_server):
    """Job directories are opened to JOB_USER through their 'other' bits; that is safe only while
    JOB_ROOT keeps other users out, so a JOB_ROOT every user may pass through is refused at start."""
    work = Path(tempfile.mkdtemp(prefix="conductor-open-root-"))
    try:
        work.chmod(0o755)
        config = write_config(tmp_path / "app.properties", NODE_NAME="n", REDIS_URL=redis_server.url,
                              JOB_ROOT=work / "jobs", JOB_USER="nobody", ALLOW_ROOT_JOBS=os.geteuid() == 0)
        (work / "jobs").mkdir(mode=0o755)
        (work / "jobs").chmod(0o755)
        result = subprocess.run([CONDUCTOR, "worker", "--index", "1", "--config", str(config)], env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 7 and "is open to every user" in result.stderr, result.stderr
        assert f"chmod o-rwx {work / 'jobs'}" in result.stderr
    finally:
        shutil.rmtree(work)


def test_a_worker_whose_job_user_does_not_exist_refuses_to_start(tmp_path, redis_server):
    config = write_config(tmp_path / "app.properties", NODE_NAME="n", REDIS_URL=redis_server.url,
                          JOB_ROOT=tmp_path / "jobs", JOB_USER="no-such-job-user", ALLOW_ROOT_JOBS=os.geteuid() == 0)
    result = subprocess.run([CONDUCTOR, "worker", "--index", "1", "--config", str(config)], env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "JOB_USER=no-such-job-user does not exist" in result.stderr


@pytest.mark.reliability("security: JOB_USER's files removed by retention")
@pytest.mark.skipif(os.geteuid() != 0, reason="files of two users and a worker without CAP_KILL need root to set up")
@pytest.mark.skipif(not CHECKOUT_SHARED, reason=PRIVATE_CHECKOUT)
def test_retention_removes_what_a_job_user_created_where_the_worker_may_not(redis_server):
    """A job running as JOB_USER that made a subdirectory (here read-only, as `chmod -R a-w` leaves
    it) left a directory the worker could not delete: retention logged an error on every pass and
    the disk filled. The worker (`daemon`, only CAP_SETUID/CAP_SETGID) now empties it as JOB_USER."""
    import pwd
    import sys

    from conductor import keys

    service, job_user = pwd.getpwnam("daemon"), pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="conductor-retention-"))
    work.chmod(0o755)
    try:
        jobs = work / "jobs"
        jobs.mkdir(mode=0o750)
        directory = jobs / "7"
        deep = directory / "results" / "deeper"
        deep.mkdir(parents=True)
        (deep / "data").write_text("x")
        (directory / "slurm-7.out").write_text("output\n")
        for path, account in ((jobs, service), (directory, service), (directory / "slurm-7.out", service),
                              (directory / "results", job_user), (deep, job_user), (deep / "data", job_user)):
            os.chown(path, account.pw_uid, account.pw_gid)
        directory.chmod(0o777)
        deep.chmod(0o500)
        redis_server.client().set(keys.NEXT_JOB_ID, 7)  # job 7 existed and its record has expired
        redis_server.client().zadd(keys.EXPIRED_THROUGH, {"id": 7})  # as retention leaves it
        code = ("import sys; from pathlib import Path; from redis import Redis; from conductor import procs, retention, "
                "runner; procs.signal_jobs_as(int(sys.argv[1]), int(sys.argv[2])); connection = Redis.from_url(sys.argv[3]); "
                "print(retention.remove_directories(connection, Path(sys.argv[4]))); "
                "print(retention.remove_directories(connection, Path(sys.argv[4]), runner.empty_as_job_user))")
        result = subprocess.run(
            ["/usr/bin/setpriv", f"--reuid={service.pw_uid}", f"--regid={service.pw_gid}", "--clear-groups",
             "--inh-caps=-all,+setuid,+setgid", "--ambient-caps=-all,+setuid,+setgid", "--",
             sys.executable, "-c", code, str(job_user.pw_uid), str(job_user.pw_gid), redis_server.url, str(jobs)],
            capture_output=True, text=True, timeout=120, env=clean_env())
        assert result.returncode == 0, result.stderr
        without, with_job_user = result.stdout.split()
        assert without == "[]" and "Permission denied" in result.stderr  # as the worker alone: refused, logged
        assert with_job_user == "[7]" and not directory.exists(), result.stderr
    finally:
        shutil.rmtree(work)
