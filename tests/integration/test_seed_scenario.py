"""The seed's own verification: four 4-CPU jobs on a 32-CPU node with four workers run at once."""

from __future__ import annotations

from support import conductor, wait_until

SCRIPT = '#!/bin/bash\necho "Job $SLURM_JOB_ID is running"\nwhile [ ! -e release ]; do sleep 0.05; done\n'


def test_four_jobs_run_at_once_on_four_workers(make_node, tmp_path):
    node = make_node("kunpeng-compute-01", TOTAL_CPUS=32, TOTAL_MEMORY="64G", WORKER_CONCURRENCY=4)
    node.start_workers(4)
    ids = [node.submit(SCRIPT.replace("release", str(tmp_path / "release")), "--account", "test",
                       "--name", f"concurrent-job-{i}", "--partition", "compute-high-mem",
                       "--ntasks-per-node", "1", "--cpus-per-task", "4", "--mem", "8G") for i in range(1, 5)]

    running = wait_until(lambda: all(node.job(i)["state"] == "RUNNING" and node.job(i)["worker"] for i in ids),
                         what="all four jobs RUNNING with a worker")
    assert running
    workers = {node.job(i)["worker"] for i in ids}
    assert workers == {f"kunpeng-compute-01-{n}" for n in range(1, 5)}
    nodes = {n["name"]: n for n in __import__("json").loads(conductor("nodes", "--json", config=node.config).stdout)}
    assert nodes["kunpeng-compute-01"]["allocated_cpus"] == 16
    assert nodes["kunpeng-compute-01"]["free_cpus"] == 16
    assert nodes["kunpeng-compute-01"]["allocated_memory"] == 32 << 30
    assert nodes["kunpeng-compute-01"]["busy_workers"] == 4
    cpu_sets = [set(node.job(i)["cpu_ids"]) for i in ids]
    assert all(len(s) == 4 for s in cpu_sets) and len(set().union(*cpu_sets)) == 16

    (tmp_path / "release").touch()
    for job_id in ids:
        assert node.wait_state(job_id, "COMPLETED")["exit_code"] == 0
    logs = "".join(w.output() for w in node.workers.values())
    for n in range(1, 5):
        assert f"[Worker-{n}] Executing job" in logs
    assert conductor("nodes", "--json", config=node.config).stdout.count('"allocated_cpus": 0') == 1
