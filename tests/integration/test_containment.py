"""Job containment on the real kernel: each job in its own cgroup (run as root; skipped otherwise).

What the kernel enforces here is what the ledger promises: memory (OUT_OF_MEMORY inside the
job's group only), CPUs (cpuset), processes (pids), and the end of a job (every process of its
group, daemons included, for a live worker and through the reaper for a dead one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conductor import cgroups, metrics
from support import IS_ROOT, WorkerProcess, conductor, job_cgroups, wait_until

ALLOCATE = "#!/bin/bash\n/usr/bin/python3 -c 'import sys; b = b\"x\" * ({mib} << 20); print(len(b))'\n"
BLOCK = "#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\n"


def gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (a zombie counts as gone: it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def worker_pid(node, index: int) -> int:
    return int(node.redis.client().hget(f"worker:{node.name}-{index}", "pid"))


@pytest.fixture
def contained(make_node):
    """Factory for a node whose workers contain their jobs (subtree prepared as `conductor prepare-cgroups` does)."""
    subtrees = []

    def make(**overrides):
        node = make_node(**overrides)
        subtree = job_cgroups(node.config)
        node.cgroup_parent = subtree.__enter__()
        subtrees.append(subtree)
        return node

    yield make
    for subtree in reversed(subtrees):
        subtree.__exit__(None, None, None)


def test_a_memory_hog_ends_out_of_memory_while_its_neighbour_and_worker_keep_running(contained, tmp_path):
    node = contained(TOTAL_CPUS=2, TOTAL_MEMORY="2G", WORKER_CONCURRENCY=2)
    node.start_workers(2)
    assert conductor("nodes", "--json", config=node.config).stdout.count('"containment": "cgroup-v1"') == 1
    pids = {worker_pid(node, 1), worker_pid(node, 2)}
    neighbour = node.submit(BLOCK.format(release=tmp_path / "go"), "--mem", "64M")
    node.wait_state(neighbour, "RUNNING")
    hog = node.submit(ALLOCATE.format(mib=512), "--mem", "64M")
    job = node.wait_state(hog, "OUT_OF_MEMORY", "FAILED", "COMPLETED")
    assert job["state"] == "OUT_OF_MEMORY", job
    assert job["exit_code"] == 137 and "memory limit of 64M" in job["reason"], job
    assert job["oom_killed"] is True and job["max_rss"] <= 64 << 20, job
    assert node.job(neighbour)["state"] == "RUNNING"
    (tmp_path / "go").touch()
    assert node.wait_state(neighbour, "COMPLETED", "FAILED", "OUT_OF_MEMORY")["state"] == "COMPLETED"
    assert {worker_pid(node, 1), worker_pid(node, 2)} == pids
    assert all(w.process.poll() is None for w in node.workers.values())
    assert '"oom_kills": 1' in conductor("nodes", "--json", config=node.config).stdout
    samples = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in metrics.node_ledgers(node.redis.client()) for s in m.samples}
    assert samples[("conductor_node_oom_kills", (("node", node.name),))] == 1
    assert samples[("conductor_node_containment", (("containment", "cgroup-v1"), ("node", node.name)))] == 1


def test_a_job_within_its_memory_completes_and_reports_its_usage(contained):
    node = contained(TOTAL_CPUS=2, TOTAL_MEMORY="2G", WORKER_CONCURRENCY=1)
    node.start_workers(1)
    small = node.submit(ALLOCATE.format(mib=32), "--mem", "64M")
    job = node.wait_state(small, "COMPLETED", "FAILED", "OUT_OF_MEMORY")
    assert job["state"] == "COMPLETED" and job["oom_killed"] is False, job
    big = node.submit(ALLOCATE.format(mib=200), "--mem", "512M")
    job = node.wait_state(big, "COMPLETED", "FAILED", "OUT_OF_MEMORY")
    assert job["state"] == "COMPLETED", job
    assert job["max_rss"] >= 200 << 20 and job["max_rss"] < 512 << 20, job
    assert job["cpu_time"] > 0 and job["oom_killed"] is False, job
    shown = conductor("show", str(big), config=node.config).stdout
    assert f"max_rss: {job['max_rss']}" in shown and "oom_killed: False" in shown


def test_a_daemon_started_with_setsid_does_not_outlive_its_job(contained, tmp_path):
    node = contained(TOTAL_CPUS=2, WORKER_CONCURRENCY=1)
    node.start_workers(1)
    daemon = tmp_path / "daemon.pid"
    job_id = node.submit(f"#!/bin/bash\nsetsid sleep 31337 &\necho $! > {daemon}\n")
    assert node.wait_state(job_id, "COMPLETED", "FAILED")["state"] == "COMPLETED"
    pid = int(daemon.read_text())
    wait_until(lambda: gone(pid), what=f"the job's setsid daemon {pid} to be killed")
    assert not Path(f"/sys/fs/cgroup/memory/{node.cgroup_parent}/{node.name}-1/job-{job_id}").exists()


def test_a_dead_workers_daemon_is_killed_by_the_reaper(contained, tmp_path):
    """The reaper path: the worker is SIGKILLed mid-job, its restart kills the job's whole cgroup."""
    node = contained(TOTAL_CPUS=2, WORKER_CONCURRENCY=1)
    worker = node.start_worker(1)
    daemon = tmp_path / "daemon.pid"
    job_id = node.submit(f"#!/bin/bash\nsetsid sleep 31337 &\necho $! > {daemon}\nsleep 300\n")
    wait_until(lambda: daemon.exists() and daemon.read_text().strip(), what="the daemon to start")
    pid = int(daemon.read_text())
    worker.signal(signal.SIGKILL)
    worker.wait()
    assert not gone(pid)  # nothing but the cgroup still knows about it now
    node.start_worker(1)
    wait_until(lambda: gone(pid), what=f"the reaper to kill the dead worker's daemon {pid}")
    assert node.wait_state(job_id, "NODE_FAIL")["state"] == "NODE_FAIL"
    assert not Path(f"/sys/fs/cgroup/memory/{node.cgroup_parent}/{node.name}-1/job-{job_id}").exists()


def test_taskset_inside_a_job_cannot_widen_its_cpus(contained):
    node = contained(TOTAL_CPUS=len(os.sched_getaffinity(0)), WORKER_CONCURRENCY=1)
    node.start_workers(1)
    job_id = node.submit("#!/bin/bash\ntaskset -pc 0-1023 $$ >/dev/null\ngrep Cpus_allowed_list /proc/self/status\n")
    job = node.wait_state(job_id, "COMPLETED", "FAILED")
    output = (node.directory / "jobs" / str(job_id) / f"slurm-{job_id}.out").read_text()
    assert job["state"] == "COMPLETED", output
    assert output.split("Cpus_allowed_list:")[1].split()[0] == ",".join(map(str, job["cpu_ids"]))


def test_a_fork_bomb_is_bounded_by_the_pids_limit_and_the_node_keeps_serving(contained):
    node = contained(TOTAL_CPUS=2, WORKER_CONCURRENCY=1, JOB_PIDS_MAX=32)
    node.start_workers(1)
    pid = worker_pid(node, 1)
    bomb = node.submit("#!/bin/bash\n/usr/bin/python3 -c '\nimport os, time\nwhile True:\n"
                       "    if os.fork() == 0:\n        time.sleep(600)\n'\n")
    job = node.wait_state(bomb, "COMPLETED", "FAILED", "OUT_OF_MEMORY", timeout=60)
    output = (node.directory / "jobs" / str(bomb) / f"slurm-{bomb}.out").read_text()
    assert job["state"] == "FAILED" and "BlockingIOError" in output, output
    after = node.submit("#!/bin/bash\ntrue\n")
    assert node.wait_state(after, "COMPLETED", "FAILED")["state"] == "COMPLETED"
    assert worker_pid(node, 1) == pid


def test_a_job_runs_in_its_own_groups_from_its_first_instruction_and_its_worker_stays_out(contained, tmp_path):
    node = contained(TOTAL_CPUS=2, WORKER_CONCURRENCY=1)
    node.start_workers(1)
    seen = tmp_path / "groups"
    # Builtins only: /proc/self is the job's own bash, before it has started anything.
    job_id = node.submit(f"#!/bin/bash\nwhile read -r line; do echo \"$line\"; done < /proc/self/cgroup > {seen}\n"
                         + BLOCK.format(release=tmp_path / "go").removeprefix("#!/bin/bash\n"))
    wait_until(lambda: seen.exists() and "memory" in seen.read_text(), what="the job to write its groups")
    groups = cgroups.own_groups(seen.read_text())
    expected = f"/{node.cgroup_parent}/{node.name}-1/job-{job_id}"
    assert {name: groups[name] for name in cgroups.V1_ALWAYS} == dict.fromkeys(cgroups.V1_ALWAYS, expected)
    pid = worker_pid(node, 1)
    threads = {task.name: (task / "cgroup").read_text() for task in Path(f"/proc/{pid}/task").iterdir()}
    assert threads and not [t for t, text in threads.items() if f"job-{job_id}" in text], threads
    (tmp_path / "go").touch()
    assert node.wait_state(job_id, "COMPLETED", "FAILED")["state"] == "COMPLETED"
    wait_until(lambda: not Path(f"/sys/fs/cgroup/memory{expected}").exists(), what="the job's group to be removed")


# --- the cgroups module on the real kernel, without a worker --------------------------------------

@pytest.fixture
def subtree():
    """``<parent>/w`` prepared as `conductor prepare-cgroups` prepares a worker's, on a v1 host; removed after."""
    if not IS_ROOT:
        pytest.skip("creating cgroups needs root")
    if cgroups.detect_mode() is not cgroups.Mode.V1:
        pytest.skip("the spawning thread's visit and clone_children are v1 behaviour; this host is not v1")
    parent = f"conductor-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        cgroups.prepare(parent, ["w"], "root")
    except OSError as error:
        cgroups.remove_tree(parent)
        pytest.skip(f"this machine's cgroups cannot be written: {error}")
    yield parent
    cgroups.remove_tree(parent)


def in_a_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a thread of its own, as a worker spawns jobs from one: pytest's own
    threads never visit a job's group, whatever happens."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = function()
        except BaseException as error:  # re-raised in the test's thread below
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def thread_groups() -> dict[str, str]:
    return cgroups.own_groups(Path("/proc/thread-self/cgroup").read_text())


def started_in(containment: cgroups.Containment, group: cgroups.JobGroup, argv: list[str]) -> subprocess.Popen[str]:
    with containment.spawning(group) as join_in_child:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, close_fds=True, preexec_fn=join_in_child)


def test_a_child_is_born_in_its_jobs_groups_and_the_spawning_thread_goes_back(subtree):
    def scenario() -> tuple[dict[str, str], dict[str, str], dict[str, str], bool, str]:
        containment = cgroups.detect(subtree, "w", "auto")
        assert containment.thread_home is not None and containment.cpuset_inherited, containment
        before = thread_groups()
        group = containment.create("job-1", cgroups.Limits(0, 1, frozenset({0}), 64))
        with containment.spawning(group) as join_in_child:
            assert join_in_child is None  # no preexec_fn: Python may start the child with vfork
            visiting = thread_groups()
            worker_listed = os.getpid() in group.pids()  # never, though this thread is inside now
            child = subprocess.Popen(["/bin/cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
        after = thread_groups()
        born = cgroups.own_groups(child.communicate()[0])
        mems = Path(group.file(("cpuset", "cpuset.mems"))).read_text().strip()
        group.destroy()
        assert visiting["memory"] == f"/{subtree}/w/job-1"
        return before, after, born, worker_listed, mems

    before, after, born, worker_listed, mems = in_a_thread(scenario)
    assert after == before
    assert {name: born[name] for name in cgroups.V1_ALWAYS} == dict.fromkeys(cgroups.V1_ALWAYS, f"/{subtree}/w/job-1")
    assert not worker_listed
    assert mems == Path(f"/sys/fs/cgroup/cpuset/{subtree}/w/cpuset.mems").read_text().strip() != ""


def test_a_child_joins_its_groups_itself_where_the_thread_may_not_visit(subtree):
    def scenario() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        containment = cgroups.detect(subtree, "w", "auto")
        containment.thread_home = None  # as where neither the thread's group nor the subtree is the worker's
        before = thread_groups()
        group = containment.create("job-2", cgroups.Limits(0, 1, None, 64))
        child = started_in(containment, group, ["/bin/cat", "/proc/self/cgroup"])
        born = cgroups.own_groups(child.communicate()[0])
        group.destroy()
        return before, thread_groups(), born

    before, after, born = in_a_thread(scenario)
    assert after == before
    assert {name: born[name] for name in (*cgroups.V1_ALWAYS, "cpu")} == dict.fromkeys(
        (*cgroups.V1_ALWAYS, "cpu"), f"/{subtree}/w/job-2")


def test_destroying_a_group_kills_what_still_runs_in_it_then_removes_it(subtree):
    def scenario() -> tuple[int | None, list[str]]:
        containment = cgroups.detect(subtree, "w", "auto")
        group = containment.create("job-3", cgroups.Limits(0, 1, None, 64))
        sleeper = started_in(containment, group, ["/bin/sleep", "600"])
        wait_until(lambda: sleeper.pid in group.pids(), what="the sleeper to be in its group")
        group.destroy()
        code = sleeper.wait(timeout=10)
        return code, [path for path in group.paths.values() if os.path.exists(path)]

    code, left = in_a_thread(scenario)
    assert code == -signal.SIGKILL
    assert left == []


def test_required_containment_refuses_to_start_without_a_subtree(make_node):
    node = make_node(WORKER_CONCURRENCY=1, JOB_CONTAINMENT="required", CGROUP_PARENT="conductor-never-prepared")
    worker = WorkerProcess(node.config, 1, node.directory / "worker-1.log")
    assert worker.wait() == 6
    assert "JOB_CONTAINMENT=required but jobs cannot be contained" in worker.output()


def test_a_restarted_worker_kills_a_job_group_no_record_leads_to(contained, tmp_path):
    """Guards the window between a job's start and the worker noting its process group: a worker
    killed inside it leaves a running script that no Redis record names. The next process of the
    same instance finds the group in its own subtree and kills it before taking jobs."""
    node = contained(TOTAL_CPUS=2, WORKER_CONCURRENCY=1)

    def leave_a_group() -> tuple[cgroups.JobGroup, subprocess.Popen[str]]:
        containment = cgroups.detect(node.cgroup_parent, f"{node.name}-1", "auto")
        group = containment.create(cgroups.job_group_name(4242), cgroups.Limits(0, 1, None, 64))
        return group, started_in(containment, group, ["/bin/sleep", "31337"])

    group, orphan = in_a_thread(leave_a_group)
    wait_until(lambda: orphan.pid in group.pids(), what="the orphan to be in its group")
    node.start_worker(1)
    assert orphan.wait(timeout=60) == -signal.SIGKILL
    assert not any(os.path.exists(path) for path in group.paths.values())
    job_id = node.submit("#!/bin/bash\ntrue\n")
    assert node.wait_state(job_id, "COMPLETED", "FAILED")["state"] == "COMPLETED"
