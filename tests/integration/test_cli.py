"""The `conductor` job client against a real redis-server (and real workers where a job must run)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conductor import jobs, keys, resources
from conductor.config import load_settings
from conductor.jobs import JobSubmission
from support import conductor, free_port, node_config, wait_until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
JOB_FIELDS = {"id", "name", "account", "partition", "state", "cpus", "memory", "node", "worker", "exit_code",
              "reason", "submitted_at", "started_at", "ended_at"}
NODE_FIELDS = {"name", "total_cpus", "allocated_cpus", "free_cpus", "total_memory", "allocated_memory",
               "free_memory", "workers", "busy_workers"}
WORKER_FIELDS = {"name", "node", "index", "pid", "host", "state", "job", "last_heartbeat"}
G = 1 << 30


pytestmark = pytest.mark.usefixtures("clean_environment")


def blocking_script(release: Path) -> str:
    return f"#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\necho done\n"


def declare(node) -> None:
    """The node's books exist (as after a worker started once) but no worker runs: jobs stay PENDING."""
    resources.node_up(node.redis.client(), load_settings(node.config))


def store_job(node, script: str = "echo hi\n", **job: object) -> int:
    """A job submitted in-process (quicker than the CLI where the CLI is not what is tested)."""
    return jobs.submit(node.redis.client(), JobSubmission.model_validate({"job": job, "script": script}))


def as_json(*args: str, config: Path) -> Any:
    return json.loads(conductor(*args, "--json", config=config).stdout)


def submit_fails(node, *options: str, script: str = "echo hi\n") -> tuple[Any, str]:
    """Submit a spec that must be refused; returns (result, stderr) after checking nothing was stored."""
    client = node.redis.client()
    before = (client.dbsize(), client.zcard(keys.JOBS), client.get(keys.NEXT_JOB_ID))
    result = conductor("submit", *options, "-", config=node.config, input=script, check=False)
    assert (client.dbsize(), client.zcard(keys.JOBS), client.get(keys.NEXT_JOB_ID)) == before
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result, result.stderr


# --- submit ---------------------------------------------------------------------------------------


def test_submit_prints_only_the_job_id_and_the_job_runs(make_node, tmp_path):
    node = make_node("node-a", WORKER_CONCURRENCY=1)
    node.start_workers(1)
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/bash\necho hello from $SLURM_JOB_ID\n")
    result = conductor("submit", str(script), "--cpus-per-task", "2", config=node.config)
    assert re.fullmatch(r"\d+\n", result.stdout), repr(result.stdout)
    job_id = int(result.stdout)

    node.wait_state(job_id, "COMPLETED")
    shown = as_json("show", str(job_id), config=node.config)
    assert shown["id"] == job_id
    assert shown["name"] == "hello.sh"  # the script's file name by default
    assert (shown["state"], shown["exit_code"], shown["cpus"]) == ("COMPLETED", 0, 2)
    assert (shown["node"], shown["worker"]) == ("node-a", "node-a-1")
    for field in ("submitted_at", "started_at", "ended_at"):
        assert ISO.match(shown[field]), shown[field]
    assert shown["submitted_at"] <= shown["started_at"] <= shown["ended_at"]


def test_submit_from_stdin_with_every_option(make_node):
    node = make_node("node-a")
    declare(node)
    result = conductor("submit", "--name", "stdin-job", "--account", "physics", "--partition", "compute-high-mem",
                       "--ntasks-per-node", "2", "--cpus-per-task", "3", "--mem", "1G", "--time-limit", "5",
                       "--env", "FOO=bar", "-", config=node.config, input="#!/bin/bash\necho hi\n")
    job_id = int(result.stdout)
    assert result.stdout == f"{job_id}\n"
    shown = as_json("show", str(job_id), config=node.config)
    assert (shown["name"], shown["account"], shown["partition"]) == ("stdin-job", "physics", "compute-high-mem")
    assert (shown["cpus"], shown["memory"], shown["state"]) == (6, G, "PENDING")
    assert shown["time_limit"] == 300
    assert (shown["node"], shown["worker"], shown["started_at"], shown["ended_at"]) == (None, None, None, None)
    stored = node.redis.client().hgetall(keys.job(job_id))
    assert stored["script"] == "#!/bin/bash\necho hi\n"
    assert json.loads(stored["environment"]) == {"FOO": "bar"}


def test_submit_from_stdin_is_named_stdin_by_default(make_node):
    node = make_node("node-a")
    declare(node)
    job_id = node.submit("echo hi\n")
    assert as_json("show", str(job_id), config=node.config)["name"] == "stdin"


@pytest.mark.parametrize(("options", "script", "message"), [
    (("--cpus-per-task", "9"), "echo hi\n", "job.cpus_per_task: the job needs 9 CPUs"),
    (("--ntasks-per-node", "3", "--cpus-per-task", "3"), "echo hi\n", "the largest node offers 8"),
    (("--mem", "8X"), "echo hi\n", "job.memory_per_node: '8X' is not a size"),
    (("--mem", "17G"), "echo hi\n", "job.memory_per_node: the job needs"),
    ((), "", "script: the script is empty"),
    ((), "  \n\n", "script: the script is empty"),
    (("--cpus-per-task", "0"), "echo hi\n", "job.cpus_per_task"),
    (("--name", "two\nlines"), "echo hi\n", "job.name: must not contain control characters"),
    (("--env", "1X=2"), "echo hi\n", "job.environment"),
    (("--env", "NOEQUALS"), "echo hi\n", "--env 'NOEQUALS': expected NAME=VALUE"),
    (("--time-limit", "soon"), "echo hi\n", "job.time_limit"),
], ids=["cpus-over-largest-node", "tasks-times-cpus-over-largest-node", "mem-unparseable", "mem-over-largest-node",
        "empty-script", "blank-script", "zero-cpus", "newline-in-name", "bad-env-name", "env-without-value",
        "bad-time-limit"])
def test_bad_spec_exits_2_with_a_clear_message_and_stores_nothing(make_node, options, script, message):
    node = make_node("node-a")  # 8 CPUs, 16G
    declare(node)
    store_job(node)  # so that an id counter exists and must stay as it is
    result, stderr = submit_fails(node, *options, script=script)
    assert result.returncode == 2
    assert stderr.startswith("conductor: error: ")
    assert message in stderr


def test_submit_before_any_node_registered_exits_2_and_stores_nothing(make_node):
    node = make_node("node-a")
    result, stderr = submit_fails(node)
    assert result.returncode == 2
    assert "no compute node has registered yet" in stderr
    assert node.redis.client().dbsize() == 0


def test_submit_of_a_missing_script_file_exits_2(make_node, tmp_path):
    node = make_node("node-a")
    declare(node)
    result = conductor("submit", str(tmp_path / "missing.sh"), config=node.config, check=False)
    assert result.returncode == 2
    assert "missing.sh" in result.stderr
    assert node.redis.client().zcard(keys.JOBS) == 0


def test_submit_of_a_script_that_is_not_utf8_exits_2_with_a_message(make_node, tmp_path):
    node = make_node("node-a")
    declare(node)
    script = tmp_path / "latin1.sh"
    script.write_bytes(b"#!/bin/bash\necho caf\xe9\n")
    result = conductor("submit", str(script), config=node.config, check=False)
    assert node.redis.client().zcard(keys.JOBS) == 0
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert "latin1.sh" in result.stderr


def test_submit_with_redis_down_exits_1_naming_redis(tmp_path, redis_server):
    config_path = node_config(tmp_path, redis_server, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = conductor("submit", "-", config=config_path, input="echo hi\n", check=False)
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert result.stdout == ""


# --- show / jobs ----------------------------------------------------------------------------------


def test_show_json_has_the_contract_fields(make_node):
    node = make_node("node-a")
    declare(node)
    job_id = store_job(node, name="contract", cpus_per_task=4, memory_per_node="8G")
    shown = as_json("show", str(job_id), config=node.config)
    assert JOB_FIELDS <= set(shown)
    assert shown["id"] == job_id and shown["cpus"] == 4 and shown["memory"] == 8 * G
    assert shown["state"] == "PENDING" and shown["exit_code"] is None and shown["reason"] is None
    assert ISO.match(shown["submitted_at"])


def test_show_of_an_unknown_job_fails_with_a_message(make_node):
    node = make_node("node-a")
    declare(node)
    result = conductor("show", "4242", "--json", config=node.config, check=False)
    assert result.returncode != 0
    assert "job 4242 does not exist" in result.stderr
    assert result.stdout == ""


def test_jobs_json_lists_newest_first_with_state_filter_and_limit(make_node):
    node = make_node("node-a")
    declare(node)
    ids = [store_job(node, f"echo {i}\n", name=f"job-{i}") for i in range(5)]
    client = node.redis.client()
    assert jobs.cancel(client, ids[1]) == jobs.cancel(client, ids[3]) == "cancelled"

    listed = as_json("jobs", config=node.config)
    assert [job["id"] for job in listed] == ids[::-1]
    assert all(JOB_FIELDS <= set(job) for job in listed)
    assert [job["name"] for job in listed] == [f"job-{i}" for i in range(4, -1, -1)]

    cancelled = as_json("jobs", "--state", "CANCELLED", config=node.config)
    assert [job["id"] for job in cancelled] == [ids[3], ids[1]]
    pending = as_json("jobs", "--state", "pending", config=node.config)  # case does not matter
    assert [job["id"] for job in pending] == [ids[4], ids[2], ids[0]]

    assert [job["id"] for job in as_json("jobs", "--limit", "2", config=node.config)] == [ids[4], ids[3]]
    assert [job["id"] for job in as_json("jobs", "--state", "PENDING", "--limit", "1", config=node.config)] == [ids[4]]
    assert as_json("jobs", "--state", "RUNNING", config=node.config) == []


def test_jobs_rejects_an_unknown_state_and_a_zero_limit(make_node):
    node = make_node("node-a")
    assert conductor("jobs", "--state", "DONE", config=node.config, check=False).returncode == 2
    assert conductor("jobs", "--limit", "0", config=node.config, check=False).returncode == 2


def test_tables_have_a_header_and_one_row_per_item(make_node):
    node = make_node("node-a")
    declare(node)
    job_id = store_job(node, name="tabled", cpus_per_task=2, memory_per_node="1G")

    lines = conductor("jobs", config=node.config).stdout.splitlines()
    assert lines[0].split() == ["JOBID", "NAME", "ACCOUNT", "STATE", "CPUS", "MEM", "NODE", "WORKER", "EXIT", "REASON"]
    assert len(lines) == 2
    assert lines[1].split()[:6] == [str(job_id), "tabled", "default", "PENDING", "2", "1G"]
    assert lines[0].index("STATE") == lines[1].index("PENDING")  # columns line up

    lines = conductor("nodes", config=node.config).stdout.splitlines()
    assert lines[0].split() == ["NODE", "STATE", "CPUS(A/T)", "FREE", "MEM(A/T)", "WORKERS", "BUSY", "PARTITIONS",
                                "CONTAINMENT", "REASON"]
    assert lines[1].split() == ["node-a", "DOWN", "0/8", "8", "0/16G", "0", "0", "*", "none"]

    lines = conductor("workers", config=node.config).stdout.splitlines()
    assert lines[0].split()[:6] == ["NAME", "NODE", "INDEX", "PID", "HOST", "STATE"]

    shown = conductor("show", str(job_id), config=node.config).stdout
    assert re.search(r"^\s*state: PENDING$", shown, re.MULTILINE)
    assert re.search(r"^\s*name: tabled$", shown, re.MULTILINE)


# --- nodes / workers ------------------------------------------------------------------------------


def test_workers_and_nodes_json_carry_the_contract_fields(make_node, tmp_path):
    node = make_node("node-a", WORKER_CONCURRENCY=2)
    started = node.start_workers(2)
    release = tmp_path / "release"
    job_id = node.submit(blocking_script(release), "--cpus-per-task", "3", "--mem", "2G")
    wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
    busy = node.job(job_id)["worker"]

    workers = as_json("workers", config=node.config)
    assert [w["name"] for w in workers] == ["node-a-1", "node-a-2"]
    for worker, process in zip(workers, started):
        assert WORKER_FIELDS <= set(worker)
        assert (worker["node"], worker["index"], worker["pid"]) == ("node-a", process.index, process.pid)
        assert ISO.match(worker["last_heartbeat"])
        if worker["name"] == busy:
            assert (worker["state"], worker["job"]) == ("busy", job_id)
        else:
            assert (worker["state"], worker["job"]) == ("idle", None)

    (nodes,) = as_json("nodes", config=node.config)
    assert NODE_FIELDS <= set(nodes)
    assert nodes == {**nodes, "name": "node-a", "total_cpus": 8, "allocated_cpus": 3, "free_cpus": 5,
                     "total_memory": 16 * G, "allocated_memory": 2 * G, "free_memory": 14 * G,
                     "workers": 2, "busy_workers": 1}

    release.touch()
    node.wait_state(job_id, "COMPLETED")
    (nodes,) = as_json("nodes", config=node.config)
    assert (nodes["allocated_cpus"], nodes["allocated_memory"], nodes["busy_workers"]) == (0, 0, 0)


# --- cancel -----------------------------------------------------------------------------------------


def test_cancel_of_a_pending_job_waiting_for_a_worker(make_node, tmp_path):
    node = make_node("node-a", WORKER_CONCURRENCY=1)
    node.start_workers(1)
    release = tmp_path / "release"
    first = node.submit(blocking_script(release), "--cpus-per-task", "1")
    wait_until(lambda: node.job(first)["worker"] == "node-a-1", what="the first job to be claimed")
    waiting = node.submit("echo never\n", "--cpus-per-task", "1")  # CPUs fit; the only worker is busy
    assert node.job(waiting)["state"] == "PENDING"

    result = conductor("cancel", str(waiting), config=node.config)
    assert result.stdout.strip() == f"job {waiting}: cancelled"
    shown = node.job(waiting)
    assert shown["state"] == "CANCELLED"
    assert ISO.match(shown["ended_at"])

    release.touch()
    assert node.wait_state(first, "COMPLETED")["exit_code"] == 0
    shown = node.job(waiting)
    assert (shown["state"], shown["worker"], shown["started_at"]) == ("CANCELLED", None, None)  # never ran


def test_cancel_of_a_running_job_ends_it_cancelled(make_node, tmp_path):
    node = make_node("node-a", WORKER_CONCURRENCY=1)
    node.start_workers(1)
    job_id = node.submit(blocking_script(tmp_path / "never"), "--cpus-per-task", "2")
    wait_until(lambda: node.job(job_id)["worker"], what="the job to be claimed")
    result = conductor("cancel", str(job_id), config=node.config)
    assert result.stdout.strip() == f"job {job_id}: cancel requested"
    node.wait_state(job_id, "CANCELLED")
    (nodes,) = as_json("nodes", config=node.config)
    assert nodes["allocated_cpus"] == 0


def test_cancel_of_an_ended_or_unknown_job_fails_with_a_message(make_node):
    node = make_node("node-a")
    declare(node)
    job_id = store_job(node)
    conductor("cancel", str(job_id), config=node.config)
    again = conductor("cancel", str(job_id), config=node.config, check=False)
    assert again.returncode != 0
    assert f"job {job_id} has already ended (CANCELLED)" in again.stderr
    assert node.job(job_id)["state"] == "CANCELLED"
    unknown = conductor("cancel", "999", config=node.config, check=False)
    assert unknown.returncode != 0
    assert "job 999 does not exist" in unknown.stderr


def test_cancel_of_a_completed_job_fails_and_keeps_its_state(make_node):
    node = make_node("node-a", WORKER_CONCURRENCY=1)
    node.start_workers(1)
    job_id = node.submit("echo quick\n")
    node.wait_state(job_id, "COMPLETED")
    result = conductor("cancel", str(job_id), config=node.config, check=False)
    assert result.returncode != 0
    assert f"job {job_id} has already ended (COMPLETED)" in result.stderr
    assert node.job(job_id)["state"] == "COMPLETED"
