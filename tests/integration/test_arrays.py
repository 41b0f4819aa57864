"""Job arrays (sbatch --array) against a real Redis and, end to end, real workers."""

from __future__ import annotations

import json
import threading

import pytest

from conductor import jobs, keys, retention
from conductor.config import load_settings
from conductor.jobs import JobRejected, JobSubmission
from support import conductor, wait_until
from test_ledger import Ledger

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def ledger(redis_server) -> Ledger:
    return Ledger(redis_server.url)


def submit_array(ledger: Ledger, array: str, **job: object) -> int:
    body = {"job": {"array": array, "name": "sweep", **job}, "script": "true\n"}
    return jobs.submit(ledger.c, JobSubmission.model_validate(body), 10_001)


def test_an_array_is_one_record_at_submit_and_tasks_appear_as_they_become_placeable(ledger):
    ledger.node("node-a", cpus=8, workers=3)
    array = submit_array(ledger, "0-9999")
    assert ledger.c.zcard(keys.JOBS) == 1  # a 10,000-task array: its first task only
    placed = ledger.place()
    assert len(placed) == 3 and array in placed
    tasks = [ledger.job(j) for j in placed]
    assert sorted(t["array_task_id"] for t in tasks) == [0, 1, 2]
    assert {t["array_job_id"] for t in tasks} == {array}
    assert ledger.c.zcard(keys.JOBS) == 4  # three placed and the next one waiting
    ledger.assert_consistent()


def test_the_limit_caps_tasks_not_yet_ended_and_every_task_runs_once(ledger):
    ledger.node("node-a", cpus=8, workers=4)
    array = submit_array(ledger, "1-7:2,20%2")
    seen: list[int] = []
    while True:
        placed = ledger.place()
        running = [int(i) for i in ledger.c.zrange(keys.state("RUNNING"), 0, -1)]
        assert len(running) <= 2
        if not running:
            break
        for job_id in running:
            seen.append(ledger.job(job_id)["array_task_id"])
            ledger.finish(job_id)
        assert placed or running
    assert sorted(seen) == [1, 3, 5, 7, 20]
    assert ledger.c.zcard(keys.state("COMPLETED")) == 5
    assert jobs.array_remainders(ledger.c, [array]) == {}
    ledger.assert_consistent()


def test_cancel_one_task_before_and_after_it_exists_and_then_the_whole_array(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    array = submit_array(ledger, "0-9")
    assert ledger.place() == {array: "node-a"}
    assert jobs.array_remainders(ledger.c, [array]) == {array: "2-9"}  # task 1 waits materialised
    assert jobs.cancel_array(ledger.c, array, 5) == ["cancelled"]  # never materialised
    assert jobs.array_remainders(ledger.c, [array]) == {array: "2-4,6-9"}
    assert jobs.cancel_array(ledger.c, array, 42) == ["missing"]
    first = ledger.c.hget(keys.array(array), "task:1")
    assert jobs.cancel_array(ledger.c, array, 1) == ["cancelled"]  # materialised and PENDING
    assert ledger.job(int(first))["state"] == "CANCELLED"
    # the unclaimed running first task and task 2, materialised when task 1 left
    assert jobs.cancel_array(ledger.c, array) == ["cancelled", "cancelled"]
    assert jobs.array_remainders(ledger.c, [array]) == {}
    assert ledger.place() == {}
    ledger.assert_consistent()


def test_afterok_on_an_array_waits_for_every_task(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    array = submit_array(ledger, "0-2")
    body = {"job": {"dependency": f"afterok:{array}", "name": "collect"}, "script": "true\n"}
    collector = jobs.submit(ledger.c, JobSubmission.model_validate(body))
    one = {"job": {"dependency": f"afterok:{array}_1", "name": "one"}, "script": "true\n"}
    after_one = jobs.submit(ledger.c, JobSubmission.model_validate(one))
    done = 0
    while done < 3:
        for job_id in ledger.place():
            if ledger.job(job_id)["array_job_id"] == array:
                assert ledger.job(collector)["reason"] == "Dependency"
                ledger.finish(job_id)
                done += 1
            else:
                assert job_id == after_one
    assert ledger.job(collector)["reason"] is None
    assert collector in ledger.place()


def test_an_array_over_max_array_size_is_refused(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    body = {"job": {"array": "0-1001"}, "script": "true\n"}
    with pytest.raises(JobRejected) as refused:
        jobs.submit(ledger.c, JobSubmission.model_validate(body), 1001)
    assert refused.value.field == "job.array" and "MAX_ARRAY_SIZE=1001" in refused.value.reason


def test_an_array_with_a_limit_of_two_on_real_workers(make_node, tmp_path):
    """A %2 array never runs more than two tasks at once (watched in Redis all along), runs them
    all, names outputs slurm-%A_%a.out, and its tasks see SLURM_ARRAY_*."""
    node = make_node(TOTAL_CPUS=8, WORKER_CONCURRENCY=4)
    node.start_workers(4)
    script = "#!/bin/bash\necho task=$SLURM_ARRAY_TASK_ID of=$SLURM_ARRAY_JOB_ID count=$SLURM_ARRAY_TASK_COUNT " \
             "min=$SLURM_ARRAY_TASK_MIN max=$SLURM_ARRAY_TASK_MAX step=$SLURM_ARRAY_TASK_STEP\n" \
             f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done\n"
    connection = node.redis.client()
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], connection.zcard(keys.state("RUNNING")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        array = node.submit(script, "--array=0-6:2,9%2")
        listing = conductor("jobs", config=node.config).stdout
        assert f"{array}_[4,6,9%2]" in listing  # tasks 0 and 2 hold the two places
        (tmp_path / "go").touch()
        wait_until(lambda: connection.zcard(keys.state("COMPLETED")) == 5, timeout=60, what="all five tasks")
    finally:
        stop.set()
        watcher.join()
    assert 1 <= peak[0] <= 2
    tasks = [node.job(int(connection.hget(keys.array(array), f"task:{i}"))) for i in (0, 2, 4, 6, 9)]
    for task in tasks:
        index = task["array_task_id"]
        output = node.directory / "jobs" / str(task["id"]) / f"slurm-{array}_{index}.out"
        assert output.read_text().startswith(f"task={index} of={array} count=5 min=0 max=9 step=1")
    assert f"{array}_9" in conductor("jobs", config=node.config).stdout


def test_cancel_from_the_cli_one_task_and_the_whole_array(make_node, tmp_path):
    node = make_node(TOTAL_CPUS=4, WORKER_CONCURRENCY=1)
    node.start_workers(1)
    array = node.submit(f"#!/bin/bash\nwhile [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done\n", "--array=0-99%4")
    node.wait_state(array, "RUNNING")
    assert "cancelled" in conductor("cancel", f"{array}_50", config=node.config).stdout
    assert f"{array}_[2-49,51-99%4]" in conductor("jobs", config=node.config).stdout
    conductor("cancel", str(array), config=node.config)
    node.wait_state(array, "CANCELLED")
    assert f"{array}_[" not in conductor("jobs", config=node.config).stdout
    refused = conductor("cancel", f"{array}_500", config=node.config, check=False)
    assert refused.returncode != 0 and "does not exist" in refused.stderr
    ended = conductor("cancel", str(array), config=node.config, check=False)
    assert ended.returncode == 1 and "every task of the array has ended" in ended.stderr


def test_show_and_watch_name_a_task_as_array_underscore_index(make_node, tmp_path):
    """`show 1_2` is task 2 of array 1 (as scontrol), never job 12 (Python's int() reads "1_2"
    as 12)."""
    node = make_node(TOTAL_CPUS=4, WORKER_CONCURRENCY=1)
    node.start_workers(1)
    array = node.submit("#!/bin/bash\ntrue\n", "--array=0-2")
    other = node.submit("#!/bin/bash\ntrue\n", "--array=0-9")  # jobs 4..13: job 12 exists
    wait_until(lambda: node.redis.client().zcard(keys.state("COMPLETED")) == 13, what="the thirteen tasks")
    assert (array, other) == (1, 4)
    shown = json.loads(conductor("show", "1_2", "--json", config=node.config).stdout)
    assert (shown["id"], shown["array_job_id"], shown["array_task_id"]) == (3, 1, 2)
    refused = conductor("show", "1_5", config=node.config, check=False)
    assert refused.returncode == 1 and "job 1_5 does not exist" in refused.stderr
    assert f"{array}_1" in conductor("watch", f"{array}_1", config=node.config).stdout
    bad = conductor("show", "1_2_3", config=node.config, check=False)
    assert bad.returncode == 2 and "not a job id" in bad.stderr


# --- retention of arrays --------------------------------------------------------------------------


def expire_everything(ledger: Ledger) -> None:
    """Expire every ended record retention may remove (a retention shorter than a Redis second)."""
    settings = load_settings(None, job_retention=0.001, max_job_records=1, accounting_file=None)
    ended = sum(ledger.c.zcard(keys.state(s)) for s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"))
    wait_until(lambda: len(retention.expire(ledger.c, settings)) >= ended or not ended
               or not ledger.c.zcard(keys.JOBS), what="the ended records to expire")


def array_keys(ledger: Ledger) -> list[str]:
    return sorted(ledger.c.scan_iter(match=keys.ARRAY_PREFIX + "*"))


def test_an_array_outlives_its_first_tasks_record_and_its_keys_go_with_its_last(ledger):
    """The array's first task is its record (same id) and may expire while later tasks are still to
    be materialised: every task still runs once, the collector waiting on the whole array (its
    dependents are keyed by that id) is still released, and the array's keys go once every task
    has ended and every record of it has expired."""
    ledger.node("node-a", cpus=8, workers=1)
    settings = load_settings(None, job_retention=3600, max_job_records=1, accounting_file=None)  # the cap alone
    array = submit_array(ledger, "0-5%1")
    body = {"job": {"dependency": f"afterok:{array}", "name": "collect"}, "script": "true\n"}
    collector = jobs.submit(ledger.c, JobSubmission.model_validate(body))
    seen: list[int] = []
    while ledger.job(collector)["state"] == "PENDING":
        placed = ledger.place()
        assert placed, f"nothing placed after tasks {seen}: a task of the array or the collector was lost"
        for job_id in placed:
            if job_id == collector:
                continue
            seen.append(ledger.job(job_id)["array_task_id"])
            ledger.finish(job_id)
        retention.expire(ledger.c, settings)  # every ended record but the newest, at each step
        if 2 <= len(seen) < 6:
            assert not ledger.c.exists(keys.job(array))  # the first task's record went early...
            assert ledger.c.exists(keys.array(array))  # ...the array stays
            assert ledger.job(collector)["reason"] == "Dependency"
            # and can still be named as a dependency and listed
            later = {"job": {"dependency": f"afterany:{array}", "name": "later"}, "script": "true\n"}
            seen_later = jobs.submit(ledger.c, JobSubmission.model_validate(later))
            jobs.cancel(ledger.c, seen_later)
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    assert ledger.job(collector)["state"] == "RUNNING"
    ledger.finish(collector)
    ledger.assert_consistent()
    expire_everything(ledger)
    assert ledger.c.zcard(keys.JOBS) == 0
    assert array_keys(ledger) == []
    assert list(ledger.c.scan_iter(match=keys.JOB_PREFIX + "*")) == []


def test_a_cancelled_arrays_keys_go_once_its_materialised_tasks_expire(ledger):
    """A whole-array cancel ends the part never materialised at once; the keys stay while any
    task's record does (the array is still listed and named by them), then go."""
    ledger.node("node-a", cpus=8, workers=2)
    array = submit_array(ledger, "0-99%2")
    assert jobs.cancel_array(ledger.c, array, 50) == ["cancelled"]  # skipped, never materialised
    assert len(ledger.place()) == 2
    assert jobs.cancel_array(ledger.c, array) == ["cancelled", "cancelled"]
    assert array_keys(ledger) != []
    expire_everything(ledger)
    assert ledger.c.zcard(keys.JOBS) == 0
    assert array_keys(ledger) == []


def test_an_array_still_running_keeps_its_keys_whatever_retention_removes(ledger):
    """Retention removes only ended records: with tasks left to run, the array's keys stay even
    when every record that ended is gone."""
    ledger.node("node-a", cpus=8, workers=1)
    array = submit_array(ledger, "0-9")
    ledger.finish(next(iter(ledger.place())))
    expire_everything(ledger)
    assert not ledger.c.exists(keys.job(array))
    assert ledger.c.hget(keys.array(array), "spec") and ledger.c.exists(keys.array(array) + ":template")
    assert jobs.array_remainders(ledger.c, [array]) == {array: "2-9"}
    placed = ledger.place()
    assert [ledger.job(j)["array_task_id"] for j in placed] == [1]


def test_squeue_format_names_tasks_as_array_underscore_index_and_the_limit_as_the_reason(make_node, tmp_path):
    """`conductor jobs --format` follows squeue: %i is <array>_<index> for a task and
    <array>_[rest%N] for the part not yet materialised, which waits with reason JobArrayTaskLimit
    while N tasks are unended; %F/%K are the array's id and the task's index, %A the task's own id."""
    node = make_node(TOTAL_CPUS=4, WORKER_CONCURRENCY=2)
    node.start_workers(2)
    array = node.submit(f"#!/bin/bash\nwhile [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done\n", "--array=0-9%1")
    node.wait_state(array, "RUNNING")
    plain = node.submit(f"#!/bin/bash\nwhile [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done\n")
    node.wait_state(plain, "RUNNING")
    lines = conductor("jobs", "--format", "%i|%t|%r|%F|%K|%A", config=node.config).stdout.splitlines()
    assert lines[0] == "JOBID|ST|REASON|ARRAY_JOB_ID|ARRAY_TASK_ID|JOBID"
    assert sorted(lines[1:]) == sorted([
        f"{array}_[1-9%1]|PD|JobArrayTaskLimit|{array}|[1-9%1]|{array}",
        f"{plain}|R|None|{plain}|N/A|{plain}",
        f"{array}_0|R|None|{array}|0|{array}",
    ])
    assert "JobArrayTaskLimit" in conductor("jobs", config=node.config).stdout
    (tmp_path / "go").touch()
