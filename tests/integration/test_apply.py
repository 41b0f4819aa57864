"""`conductor apply` and `conductor verify` on a node of their own (supervisord mode, `--local`), and
`make run` (deploy/run-local.sh), which is that same apply.

The systemd mode runs on real systemd hosts in tests/system (install.sh and the Ansible role call it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis
from conductor import keys
from support import CHECKOUT_SHARED, IS_ROOT, PRIVATE_CHECKOUT, ROOT, Supervisord, clean_env, conductor, free_port, node_config, running, wait_until


def apply(config: Path, local: Path, *options: str) -> dict[str, list[str]]:
    result = conductor("apply", "--mode", "supervisord", "--local", str(local), "--json", *options, config=config)
    return json.loads(result.stdout)


def verify(config: Path, local: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return conductor("verify", "--local", str(local), "--json", *options, config=config, check=False)


def test_apply_converges_and_a_second_run_changes_nothing(tmp_path, redis_server):
    with running(Supervisord(tmp_path / "node").start()) as supervisord:
        local = supervisord.directory
        config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=2)

        # --check on a fresh node says what it would do, and does none of it.
        planned = apply(config, local, "--check")
        assert planned["started"] == ["conductor-worker-1", "conductor-worker-2"]
        assert str(local / "conf.d" / "conductor.conf") in planned["changed"]
        assert not (local / "conf.d" / "conductor.conf").exists() and not (tmp_path / "jobs").exists()
        assert supervisord.status() == {}

        assert apply(config, local) == planned
        assert (tmp_path / "jobs").is_dir()
        found = json.loads(wait_until(lambda: (r := verify(config, local)).returncode == 0 and r,
                                      what="verify to pass").stdout)
        assert found["ok"] and set(found["workers"]) == {"1", "2"}
        pids = {name: pid for name, (_, pid) in supervisord.status().items()}

        again = {"changed": [], "started": [], "stopped": [], "restarted": []}
        assert apply(config, local, "--check") == again
        assert apply(config, local) == again
        assert {name: pid for name, (_, pid) in supervisord.status().items()} == pids


@pytest.mark.skipif(not IS_ROOT, reason="only root creates users")
def test_apply_creates_the_job_user_beside_the_service_user(tmp_path, redis_server):
    """JOB_USER is created by the same apply that creates the service user (jobs then run as it)."""
    name = f"cj{os.getpid() % 100000}"
    with running(Supervisord(tmp_path / "node").start()) as supervisord:
        config = node_config(tmp_path, redis_server, JOB_USER=name)
        planned = apply(config, supervisord.directory, "--check")
        assert f"group {name}" in planned["changed"] and f"user {name}" in planned["changed"]
        assert subprocess.run(["id", name], capture_output=True).returncode != 0  # --check created nothing


def test_scaling_starts_and_stops_only_the_changed_instances_and_a_setting_restarts(tmp_path, redis_server):
    with running(Supervisord(tmp_path / "node").start()) as supervisord:
        local = supervisord.directory
        config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=2)
        apply(config, local)
        assert verify(config, local, "--timeout", "30").returncode == 0
        pids = {name: pid for name, (_, pid) in supervisord.status().items()}

        node_config(tmp_path, redis_server, WORKER_CONCURRENCY=3)
        assert apply(config, local) == {"changed": [str(local / "conf.d" / "conductor.conf")],
                                        "started": ["conductor-worker-3"], "stopped": [], "restarted": []}
        assert verify(config, local, "--timeout", "30").returncode == 0
        status = supervisord.status()
        assert (status["conductor-worker-1"][1], status["conductor-worker-2"][1]) == (
            pids["conductor-worker-1"], pids["conductor-worker-2"])

        node_config(tmp_path, redis_server, WORKER_CONCURRENCY=1)
        report = apply(config, local)
        assert report["stopped"] == ["conductor-worker-2", "conductor-worker-3"] and report["started"] == []
        assert report["restarted"] == []
        assert supervisord.status()["conductor-worker-1"][1] == pids["conductor-worker-1"]
        assert redis_server.client().exists("worker:node-a-2", "worker:node-a-3") == 0

        # A setting the workers read (not WORKER_CONCURRENCY) restarts the running ones.
        node_config(tmp_path, redis_server, WORKER_CONCURRENCY=1, HEARTBEAT_INTERVAL=0.6)
        assert apply(config, local)["restarted"] == ["conductor-worker-1"]
        assert verify(config, local, "--timeout", "30").returncode == 0
        assert supervisord.status()["conductor-worker-1"][1] != pids["conductor-worker-1"]


def test_verify_names_what_is_wrong(tmp_path, redis_server):
    with running(Supervisord(tmp_path / "node").start()) as supervisord:
        local = supervisord.directory
        config = node_config(tmp_path, redis_server, WORKER_CONCURRENCY=2)
        apply(config, local)
        assert verify(config, local, "--timeout", "30").returncode == 0

        supervisord.ctl("stop", "conductor-worker-2")
        result = verify(config, local)
        assert result.returncode == 1
        problems = json.loads(result.stdout)["problems"]
        assert "program conductor-worker-2 is STOPPED, not RUNNING" in problems
        assert "worker 2 has no process" in problems
        assert "worker:node-a-2 is not registered in Redis" in problems
        assert "conductor: error: worker 2 has no process" in result.stderr

        too_many = verify(config, local, "--expect", "1")
        assert too_many.returncode == 0, too_many.stderr  # 1 running, 1 expected

        redis_server.stop()
        down = verify(config, local)
        assert down.returncode == 1 and "does not answer" in down.stderr


@pytest.mark.skipif(not IS_ROOT, reason="the service user differs from the caller only when make run runs as root")
def test_make_run_as_root_from_a_0700_home_runs_the_node_from_a_copy():
    """Guards the most common first run: root clones into its 0700 home and types `make run`.

    The services run as the service user, which cannot enter that home; before, Redis failed
    with "Permission denied" after things had started. Now the node runs from a copy the service
    user can read (the package and app.properties under /var/lib/conductor-local), and `make stop`
    finds it again.
    """
    home = Path(tempfile.mkdtemp(prefix="home-"))  # mode 0700, in /tmp (which everyone may pass)
    clone = home / "conductor"
    assert home.stat().st_mode & 0o777 == 0o700
    shutil.copytree(ROOT, clone, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "run", "supervisord.conf", ".git", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    os.symlink(ROOT / ".venv", clone / ".venv")
    config = clone / "app.properties"
    config.write_text((ROOT / "app.properties").read_text()
                      .replace("6379", str(free_port())).replace("API_PORT=8000", f"API_PORT={free_port()}")
                      .replace("NODE_NAME=kunpeng-compute-01", "NODE_NAME=make-run-home"))
    env = clean_env()
    env.pop("SERVICE_USER", None)
    script = clone / "deploy" / "run-local.sh"
    copy = None
    try:
        result = subprocess.run([str(script), "start"], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        copy = Path(result.stderr.split("running the node from a copy in ", 1)[1].split()[0])
        assert copy.parent == Path("/var/lib/conductor-local")
        assert "verify: all 4 workers of node make-run-home run and are registered" in result.stdout
        assert result.stdout.count("COMPLETED") >= 4
        installed = copy / "app.properties"
        assert installed.stat().st_mode & 0o777 == 0o640 and installed.group() == "conductor"
        listed = json.loads(conductor("workers", "--json", config=installed).stdout)
        assert {subprocess.run(["ps", "-o", "user=", "-p", str(w["pid"])], capture_output=True,
                               text=True).stdout.strip() for w in listed} == {"conductor"}
        assert not (clone / "run").exists()  # nothing of the node in the private home
    finally:
        stopped = subprocess.run([str(script), "stop"], capture_output=True, text=True, env=env, timeout=300)
        shutil.rmtree(home)
        if copy is not None:
            shutil.rmtree(copy)
    assert stopped.returncode == 0 and "stopping the workers" in stopped.stdout, stopped.stdout + stopped.stderr


@pytest.mark.skipif(not IS_ROOT, reason="the copy under /var/lib/conductor-local is made only by root's make run")
@pytest.mark.parametrize("home_mode", [0o700, 0o755], ids=["private-home", "home-opened-since-make-run"])
def test_make_clean_stops_the_node_and_removes_this_checkouts_copy_only(home_mode):
    """`make clean` left behind what `make run` as root installs for a checkout in a 0700 home (a
    virtual environment, app.properties, the Redis password, job outputs under
    /var/lib/conductor-local/<checkout>). Now it stops the node running from there first (its
    supervisord and programs end), then removes that copy, run/ and supervisord.conf; the copy of
    another checkout beside it is kept. So it does when the home was opened since `make run` (then
    `make stop` alone looks in run/ and would not find that node)."""
    import hashlib

    home = Path(tempfile.mkdtemp(prefix="home-"))
    home.chmod(home_mode)  # 0700: make run used the copy
    clone = home / "conductor"
    (clone / "deploy").mkdir(parents=True)
    shutil.copy2(ROOT / "Makefile", clone / "Makefile")
    shutil.copy2(ROOT / "deploy" / "run-local.sh", clone / "deploy" / "run-local.sh")
    os.symlink(ROOT / ".venv", clone / ".venv")
    base = Path("/var/lib/conductor-local")
    copy = base / hashlib.sha1(str(clone).encode()).hexdigest()[:12]
    other = base / hashlib.sha1(str(home / "another-checkout").encode()).hexdigest()[:12]
    run = copy / "run"
    (run / "supervisor").mkdir(parents=True)
    (run / "log").mkdir()
    (copy / "redis-password").write_text("secret\n")
    (other / "run").mkdir(parents=True)
    (other / "app.properties").write_text("NODE_NAME=another\n")
    (clone / "run").mkdir()
    os.symlink(run / "supervisord.conf", clone / "supervisord.conf")  # as make run leaves it
    # The node as run-local.sh lays it out: its supervisord, socket and pid file in the copy's run/.
    (run / "supervisord.conf").write_text(
        f"[unix_http_server]\nfile={run}/supervisor/supervisor.sock\nchmod=0700\n\n"
        f"[supervisord]\nlogfile={run}/log/supervisord.log\npidfile={run}/supervisor/supervisord.pid\n"
        f"childlogdir={run}/log\nnodaemon=true\n\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{run}/supervisor/supervisor.sock\n\n"
        "[program:conductor-worker-1]\ncommand=/bin/sleep 31993\nstopsignal=TERM\n")
    supervisord = subprocess.Popen([str(ROOT / ".venv" / "bin" / "supervisord"), "-c", str(run / "supervisord.conf")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ctl = [str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(run / "supervisord.conf"), "status"]
        wait_until(lambda: "RUNNING" in subprocess.run(ctl, capture_output=True, text=True).stdout,
                   what="the copy's node to run")
        result = subprocess.run(["make", "-C", str(clone), "clean"], capture_output=True, text=True,
                                env=clean_env(), timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert supervisord.wait(timeout=60) == 0  # stopped first, through its own supervisorctl
        assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == b"/bin/sleep\x0031993\x00"]
        assert "stopping the workers" in result.stdout and f"removing this checkout's copy {copy}" in result.stdout
        assert not copy.exists() and not (clone / "run").exists()
        assert not (clone / "supervisord.conf").is_symlink()
        assert (other / "app.properties").read_text() == "NODE_NAME=another\n"  # another checkout's: kept
    finally:
        if supervisord.poll() is None:
            supervisord.kill()
            supervisord.wait()
        shutil.rmtree(home)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(other)


def _cmdline(proc: Path) -> bytes:
    try:
        return proc.joinpath("cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


def assert_redis_password_kept_from_jobs(source: Path, run: Path, node: Path) -> None:
    """make run's Redis has a password, generated once and kept in files only root (the password)
    and the service user (the node's app.properties, redis.conf) may read, never on a command line;
    run by root, jobs run as conductor-job and can neither read those files nor use that Redis."""
    secret = (run / "redis-password").read_text().strip()
    assert len(secret) >= 32 and secret not in source.read_text()
    assert (run / "redis-password").stat().st_mode & 0o077 == 0
    for private in (node, run / "redis.conf"):
        assert private.stat().st_mode & 0o777 in (0o640, 0o600) and secret in private.read_text()
        if IS_ROOT:
            assert (private.owner(), private.group()) == ("root", "conductor")
    plain = next(line.split("=", 1)[1] for line in source.read_text().splitlines() if line.startswith("REDIS_URL="))
    with pytest.raises(redis.AuthenticationError):  # without the password Redis refuses (NOAUTH)
        redis.Redis.from_url(plain).ping()
    argv = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert "redis-server" in argv and secret not in argv
    if not IS_ROOT:
        return
    port = plain.rsplit(":", 1)[1].split("/")[0]
    probe = (f"id -un\ncat {node} {run / 'redis.conf'} 2>&1 | head -c 300\n"
             f"cat /proc/$PPID/environ 2>&1 | head -c 300\n"
             f"redis-cli -p {port} SET stolen 1 2>&1\nsetsid sleep 31991 &\n")
    job_id = conductor("submit", "--mem", "64M", "-", config=node, input=probe).stdout.strip()
    client = redis.Redis.from_url(f"redis://:{secret}@127.0.0.1:{port}/0", decode_responses=True)
    wait_until(lambda: client.hget(keys.job(job_id), "state") in ("COMPLETED", "FAILED"), timeout=60,
               what="the probe job's end")
    output = (run / "jobs" / job_id / f"slurm-{job_id}.out").read_text()
    assert output.splitlines()[0] == "conductor-job", output
    assert secret not in output and output.count("Permission denied") >= 2, output
    assert "NOAUTH" in output and client.get("stolen") is None, output
    # The worker (conductor, without CAP_KILL) killed what the job left behind, as conductor-job,
    # through the job's cgroup where the node contains jobs (`setsid` escapes a process group).
    containment = json.loads(conductor("nodes", "--json", config=node).stdout)[0]["containment"]
    if containment != "none":
        wait_until(lambda: not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == b"sleep\x0031991\x00"],
                   what="the job's setsid leftover to be killed")


@pytest.mark.skipif(IS_ROOT and not CHECKOUT_SHARED, reason=PRIVATE_CHECKOUT)
def test_make_run_then_stop():
    """`make run`'s script end to end on free ports: Redis, four workers, the API, the demonstration jobs."""
    shared = Path(tempfile.mkdtemp(prefix="make-run-"))  # the service user reads the configuration
    shared.chmod(0o755)
    config = shared / "app.properties"
    config.write_text((ROOT / "app.properties").read_text()
                      .replace("6379", str(free_port())).replace("API_PORT=8000", f"API_PORT={free_port()}")
                      .replace("NODE_NAME=kunpeng-compute-01", "NODE_NAME=make-run-test")
                      .replace("\nAPI_TOKEN=\n", "\nAPI_TOKEN=make-run-test-token\n"))
    config.chmod(0o644)
    run = ROOT / "run"
    if run.exists():
        pytest.skip(f"{run} exists: a local node of this checkout may be running (make stop; rm -r run)")
    env = {**clean_env(), "CONDUCTOR_CONFIG": str(config)}
    try:
        result = subprocess.run([str(ROOT / "deploy" / "run-local.sh"), "start"], capture_output=True, text=True,
                                env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verify: all 4 workers of node make-run-test run and are registered" in result.stdout
        assert result.stdout.count("COMPLETED") >= 4  # submitted through the API with the token
        # The demo's curl reads the token from a root-only file, never from its command line.
        assert (run / "api-auth-header").stat().st_mode & 0o077 == 0
        node = run / "app.properties"  # the node's own configuration: the checkout's plus the Redis password
        listed = conductor("workers", "--json", config=node).stdout
        users = {subprocess.run(["ps", "-o", "user=", "-p", str(w["pid"])], capture_output=True, text=True).stdout.strip()
                 for w in json.loads(listed)}
        assert users == {"conductor" if IS_ROOT else os.environ.get("USER", "")}
        assert_redis_password_kept_from_jobs(config, run, node)
    finally:
        subprocess.run([str(ROOT / "deploy" / "run-local.sh"), "stop"], env=env, timeout=300)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
        (ROOT / "supervisord.conf").unlink(missing_ok=True)
