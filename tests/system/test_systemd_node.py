"""conductor on a real systemd host: install.sh, the units, jobs under the sandbox, SIGKILL, warm stop,
scaling and the hardening score, as the issue's users would try them.

All tests share one booted host (session fixture); each starts from the state it needs
(``systemd_node.ensure``), so they can run alone or in any order.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from systemd_node import CONFIG, HOLD, JOB_ROOT, PREFIX, USER, SystemdNode

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

UNITS = [f"conductor-worker@{i}.service" for i in range(1, 5)]


def test_install_brings_up_four_workers_as_the_service_user(systemd_node: SystemdNode):
    node = systemd_node
    assert "all 4 workers of node" in node.first_install  # type: ignore[attr-defined]
    node.ensure(4)
    assert [node.active(unit) for unit in UNITS] == ["active"] * 4
    assert node.systemctl("is-enabled", "conductor-workers.target").stdout.strip() == "enabled"
    status = node.systemctl("status", "conductor-worker@2.service", check=False)
    assert status.returncode == 0 and "active (running)" in status.stdout

    pids = node.wait_registered(range(1, 5))
    service_uid = int(node.host.run("id", "-u", USER).stdout)
    assert service_uid != 0
    assert {node.uid(pid) for pid in pids.values()} == {service_uid}
    workers = node.host.run("ps", "-o", "user:32=,args=", "-C", "conductor").stdout.splitlines()
    assert len(workers) == 4 and all(line.split()[0] == USER for line in workers), workers

    # Each heartbeats on its own.
    before = {i: float(node.record(i)["last_heartbeat"]) for i in range(1, 5)}
    node.eventually(lambda: all(float(node.record(i).get("last_heartbeat") or 0) > before[i] for i in before),
                    "every worker to heartbeat again")

    # What install.sh laid down: secrets not world-readable, job directories the service user's.
    assert node.host.run("stat", "-c", "%a %U %G", CONFIG).stdout.split() == ["640", "root", USER]
    assert node.host.run("stat", "-c", "%a %U", JOB_ROOT).stdout.split() == ["750", USER]
    assert node.host.run("stat", "-c", "%U", f"{PREFIX}/bin/conductor").stdout.strip() == "root"


def test_instances_start_by_hand_and_through_the_target(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    # PartOf=: the instances stop with the target; ordered after it, so stop returns when they have.
    node.systemctl("stop", "conductor-workers.target")
    assert [node.active(unit) for unit in UNITS] == ["inactive"] * 4
    assert [node.record(i) for i in range(1, 5)] == [{}] * 4  # a clean stop unregisters

    node.host.sh("systemctl start conductor-worker@{1..4}")
    node.wait_registered(range(1, 5))

    node.systemctl("stop", "conductor-workers.target")
    assert [node.active(unit) for unit in UNITS] == ["inactive"] * 4
    node.systemctl("start", "conductor-workers.target")
    node.wait_registered(range(1, 5))
    listed = node.systemctl("list-units", "--plain", "--no-legend", "conductor-worker@*").stdout
    assert sorted(line.split()[0] for line in listed.splitlines()) == UNITS


def test_jobs_run_and_complete_inside_the_sandbox(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    script = (
        "#!/bin/bash\n"
        "echo user=$(id -un) job=$SLURM_JOB_ID worker=$CONDUCTOR_WORKER\n"
        "grep Cpus_allowed_list /proc/self/status\n"
        "bash -c 'echo child-ran' & wait\n"  # jobs may fork
        "echo data > result.txt && echo wrote-job-dir\n"  # and write in their job directory
        "touch /etc/conductor-was-here 2>/dev/null || echo etc-read-only\n"  # but not the system
        "touch /opt/conductor/x 2>/dev/null || echo prefix-read-only\n"
    )
    ids = [node.submit(script, "--name", f"sandbox-{i}", "--cpus-per-task", "1") for i in range(4)]
    for job_id in ids:
        job = node.wait_state(job_id, "COMPLETED", "FAILED")
        output = node.output(job_id)
        assert (job["state"], job["exit_code"]) == ("COMPLETED", 0), output
        assert f"user={USER} job={job_id} worker={job['worker']}" in output
        for line in ("child-ran", "wrote-job-dir", "etc-read-only", "prefix-read-only"):
            assert line in output.splitlines(), output
        # The worker bound the job to its CPUs with sched_setaffinity, inside the sandbox.
        allowed = output.split("Cpus_allowed_list:")[1].split()[0]
        assert allowed == ",".join(map(str, job["cpu_ids"])), output
    assert {node.job(i)["node"] for i in ids} == {node.name}
    node.eventually(lambda: node.ledger()["allocated_cpus"] == 0, "all CPUs released")


def test_sigkill_of_a_worker_restarts_it_and_settles_its_job(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    job_id = node.submit(HOLD, "--name", "killed", "--cpus-per-task", "1")
    job = node.wait_state(job_id, "RUNNING")
    index = int(job["worker"].rsplit("-", 1)[1])
    unit = f"conductor-worker@{index}.service"
    node.eventually(lambda: node.job_field(job_id, "pgid"), "the job's process group to be recorded")
    pgid = int(node.job_field(job_id, "pgid") or 0)
    node.eventually(lambda: len(node.group_processes(pgid)) >= 2, "the job and its background child")
    old_pid = node.main_pid(index)
    restarts = int(node.show(unit, "NRestarts")["NRestarts"])

    killed_at = time.monotonic()
    node.host.run("kill", "-KILL", str(old_pid))
    new_pids = node.eventually(
        lambda: (pid := node.main_pid(index)) not in (0, old_pid) and node.registered_pid(index) == pid and pid,
        f"worker {index} to be restarted by systemd and registered again")
    print(f"\nworker {index}: SIGKILL -> restarted and registered again in {time.monotonic() - killed_at:.2f} s")

    # Restarted by systemd once, and the new process registered at its first try.
    assert int(node.show(unit, "NRestarts")["NRestarts"]) == restarts + 1
    assert node.active(unit) == "active" and new_pids != old_pid
    ended = node.wait_state(job_id, "NODE_FAIL")
    assert "died" in (ended["reason"] or ""), ended
    # Nothing of the job is left: the host's own clean-up kills it, on the new worker's start or
    # on the heartbeat after the job was settled (whichever comes first).
    node.eventually(lambda: node.group_processes(pgid) == [], "nothing of the job to be left")
    node.eventually(lambda: node.ledger()["allocated_cpus"] == 0, "the job's CPUs to be free again")


def test_stopping_a_busy_worker_lets_its_job_finish(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    job_id = node.submit(HOLD, "--name", "finish-me", "--cpus-per-task", "1")
    job = node.wait_state(job_id, "RUNNING")
    index = int(job["worker"].rsplit("-", 1)[1])
    unit = f"conductor-worker@{index}.service"
    node.eventually(lambda: "started" in node.output(job_id), "the job to start")
    pid = node.main_pid(index)

    node.systemctl("stop", "--no-block", unit)
    node.eventually(lambda: node.show(unit, "SubState")["SubState"] == "stop-sigterm", "the stop to begin")
    node.eventually(lambda: "stop requested" in node.host.run(
        "journalctl", "--no-pager", "-o", "cat", f"_PID={pid}", check=False).stdout,
        "the worker to receive SIGTERM")
    # KillMode=mixed: the SIGTERM went to the worker alone; the job keeps running.
    assert node.job(job_id)["state"] == "RUNNING"
    assert node.show(unit, "ActiveState")["ActiveState"] == "deactivating"

    node.release(job_id)
    done = node.wait_state(job_id, "COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED")
    assert (done["state"], done["exit_code"]) == ("COMPLETED", 0), node.output(job_id)
    assert "released" in node.output(job_id)
    node.eventually(lambda: node.active(unit) == "inactive", f"{unit} to stop after the job")
    assert node.show(unit, "Result")["Result"] == "success"
    assert node.record(index) == {}
    node.systemctl("start", unit)
    node.wait_registered([index])


def test_scale_down_then_up_touches_only_the_changed_instances(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    pids = node.wait_registered(range(1, 5))

    # The same configuration again changes nothing.
    output = node.install(4)
    assert "unchanged /etc/systemd/system/conductor-worker@.service" in output
    assert "unchanged /etc/systemd/system/conductor-workers.target" in output
    assert node.wait_registered(range(1, 5)) == pids

    # 4 -> 2: 3 and 4 stop and are disabled (even one an operator had enabled by hand).
    node.systemctl("enable", "conductor-worker@4.service")
    node.install(2)
    assert [node.active(u) for u in UNITS] == ["active", "active", "inactive", "inactive"]
    for unit in UNITS[2:]:
        assert node.systemctl("is-enabled", unit, check=False).stdout.strip() == "disabled"
    assert sorted(node.show("conductor-workers.target", "Wants")["Wants"].split()) == UNITS[:2]
    assert node.record(3) == {} and node.record(4) == {}
    assert node.wait_registered([1, 2]) == {1: pids[1], 2: pids[2]}

    # 2 -> 3: only 3 starts; 1 and 2 keep their processes.
    node.install(3)
    after = node.wait_registered([1, 2, 3])
    assert (after[1], after[2]) == (pids[1], pids[2])
    assert node.active(UNITS[3]) == "inactive"
    assert sorted(node.show("conductor-workers.target", "Wants")["Wants"].split()) == UNITS[:3]


def test_hardening_score_measured_on_the_host(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    result = node.host.run("systemd-analyze", "security", "--no-pager", "conductor-worker@1.service")
    figure = float(re.search(r"Overall exposure level for conductor-worker@1\.service: (\d+\.\d+)",
                             result.stdout).group(1))  # type: ignore[union-attr]
    print(f"\nsystemd-analyze security conductor-worker@1.service on the host: {figure}")
    assert figure <= 2.0, result.stdout
    gate = node.host.run("systemd-analyze", "security", "--threshold=20", "--no-pager",
                         "conductor-worker@1.service", check=False)
    assert gate.returncode == 0, gate.stdout


def test_jobs_run_as_job_user_in_the_sandbox_and_are_stopped_without_cap_kill(systemd_node: SystemdNode):
    """JOB_USER under the rendered unit (CAP_SETUID/CAP_SETGID only, `@setuid capset`): jobs run as
    conductor-job with no capability and cannot read app.properties; a cancel still ends every
    process of the job, which the worker signals as conductor-job (it holds no CAP_KILL)."""
    node = systemd_node
    try:
        node.install(2, JOB_USER="conductor-job")
        node.systemctl("start", "conductor-workers.target")
        node.wait_registered(range(1, 3))
        shown = node.show("conductor-worker@1.service", "CapabilityBoundingSet", "AmbientCapabilities")
        assert shown == {"CapabilityBoundingSet": "cap_setgid cap_setuid", "AmbientCapabilities": "cap_setgid cap_setuid"}
        scored = node.host.run("systemd-analyze", "security", "--no-pager", "conductor-worker@1.service").stdout
        figure = float(re.search(r"Overall exposure level for conductor-worker@1\.service: (\d+\.\d+)",
                                 scored).group(1))  # type: ignore[union-attr]
        print(f"\nsystemd-analyze security conductor-worker@1.service on the host, JOB_USER set: {figure}")
        assert figure <= 2.0, scored
        script = ("#!/bin/bash\nid -un\ngrep CapEff /proc/self/status\n"
                  f"cat {CONFIG} > /dev/null 2>&1 || echo no-config\necho data > mine && echo wrote-job-dir\n")
        job_id = node.submit(script, "--cpus-per-task", "1")
        job = node.wait_state(job_id, "COMPLETED", "FAILED")
        output = node.output(job_id)
        assert job["state"] == "COMPLETED", f"{job}\n{output}\n{node.journal()}"
        assert output.splitlines()[0] == "conductor-job", output
        for line in ("CapEff:\t0000000000000000", "no-config", "wrote-job-dir"):
            assert line in output.splitlines(), output

        job_id = node.submit("#!/bin/bash\nsleep 600 &\nsleep 601\n", "--cpus-per-task", "1")
        node.wait_state(job_id, "RUNNING")
        node.eventually(lambda: node.job_field(job_id, "pgid"), "the job's process group to be recorded")
        pgid = int(node.job_field(job_id, "pgid") or 0)
        node.eventually(lambda: len(node.group_processes(pgid)) >= 2, "the job and its background child")
        node.host.run(f"{PREFIX}/bin/conductor", "cancel", "--config", CONFIG, str(job_id))
        node.wait_state(job_id, "CANCELLED")
        node.eventually(lambda: node.group_processes(pgid) == [], "every process of the cancelled job to be gone")
    finally:
        node.install(4)


def test_supervisord_mode_and_back(systemd_node: SystemdNode):
    node = systemd_node
    node.ensure(4)
    node.install(4, mode="supervisord")
    assert node.host.run("ls", "/etc/systemd/system").stdout.count("conductor") == 0
    assert all(node.active(unit) == "inactive" for unit in UNITS)
    status = node.host.run("supervisorctl", "status", check=False).stdout
    running = dict(re.findall(r"^conductor-worker-(\d+)\s+RUNNING\s+pid (\d+)", status, re.MULTILINE))
    assert sorted(running) == ["1", "2", "3", "4"], status
    node.eventually(lambda: all(node.registered_pid(int(i)) == int(pid) for i, pid in running.items()),
                    "the supervisord workers to register")
    job_id = node.submit("#!/bin/bash\necho ok\n")
    assert node.wait_state(job_id, "COMPLETED", "FAILED")["state"] == "COMPLETED"

    node.install(4)  # and back to systemd: supervisord's programs are removed
    assert "conductor-worker" not in node.host.run("supervisorctl", "status", check=False).stdout
    node.wait_registered(range(1, 5))


def test_containment_is_none_where_the_hosts_cgroups_are_read_only(systemd_node: SystemdNode):
    """The unit delegates its cgroup subtree; in these hosts the controllers are read-only, so the
    workers say why in the journal and report `none`, and JOB_CONTAINMENT=required refuses to start."""
    node = systemd_node
    node.ensure(4)
    unit = node.systemctl("cat", "conductor-worker@.service").stdout
    assert "Delegate=cpu cpuset memory pids" in unit.splitlines(), unit
    node.eventually(lambda: node.ledger()["containment"] == "none", "the node to report containment none")
    assert "jobs run without containment" in node.journal(400)
    job_id = node.submit("#!/bin/bash\necho still-runs\n")
    job = node.wait_state(job_id, "COMPLETED", "FAILED")
    assert job["state"] == "COMPLETED" and job["max_rss"] is None and job["oom_killed"] is None, job
    refused = node.host.run("runuser", "-u", USER, "--", "env", "JOB_CONTAINMENT=required",
                            f"{PREFIX}/bin/conductor", "worker", "--index", "9", "--config", CONFIG, check=False)
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "JOB_CONTAINMENT=required but jobs cannot be contained" in refused.stdout + refused.stderr

def test_apply_check_reports_and_changes_nothing_then_apply_and_verify(systemd_node: SystemdNode):
    """`conductor apply --check` on the installed host: what a new WORKER_CONCURRENCY would do, done by nothing."""
    node = systemd_node
    node.ensure(4)
    pids = node.wait_registered(range(1, 5))
    conductor = f"{PREFIX}/bin/conductor"
    same = json.loads(node.host.run(conductor, "apply", "--mode", "systemd", "--check", "--json", "--config", CONFIG).stdout)
    assert same == {"changed": [], "started": [], "stopped": [], "restarted": []}

    installed = node.host.run("cat", CONFIG).stdout
    node.host.run("tee", "/root/five.properties", input=node.config_text(5))
    planned = json.loads(node.host.run(conductor, "apply", "--mode", "systemd", "--check", "--json",
                                       "--config", "/root/five.properties").stdout)
    assert planned["started"] == ["conductor-worker@5.service"], planned
    assert planned["stopped"] == [] and planned["restarted"] == [], planned
    assert f"{CONFIG} (0640 root:{USER})" in planned["changed"]
    assert "/etc/systemd/system/conductor-workers.target" in planned["changed"]
    # Nothing changed: the installed file, the target, the running workers.
    assert node.host.run("cat", CONFIG).stdout == installed
    assert len(node.show("conductor-workers.target", "Wants")["Wants"].split()) == 4
    assert node.active("conductor-worker@5.service") == "inactive"
    assert node.wait_registered(range(1, 5)) == pids

    result = node.host.run(conductor, "verify", "--json", "--config", CONFIG)
    found = json.loads(result.stdout)
    assert found["ok"] and found["workers"] == {str(i): pid for i, pid in pids.items()}
    node.systemctl("stop", "conductor-worker@3.service")
    broken = node.host.run(conductor, "verify", "--config", CONFIG, check=False)
    assert broken.returncode == 1
    assert "conductor-worker@3.service is inactive, not active" in broken.stderr
    assert f"worker:{node.name}-3 is not registered in Redis" in broken.stderr
    node.systemctl("start", "conductor-worker@3.service")
    node.wait_registered(range(1, 5))
