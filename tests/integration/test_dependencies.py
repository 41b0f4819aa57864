"""Job dependencies (sbatch --dependency) against a real Redis and, end to end, real workers.

The ledger-level tests drive the same Lua scripts a worker runs (``start``, ``finish``) through
the shared :class:`test_ledger.Ledger`; the end-to-end tests run real worker processes.
"""

from __future__ import annotations

import signal

import pytest

from conductor import jobs, keys, placement
from conductor.jobs import JobRejected, JobSubmission
from support import conductor, wait_until
from test_ledger import Ledger

pytestmark = pytest.mark.usefixtures("clean_environment")

BLOCK = "#!/bin/bash\nwhile [ ! -e {release} ]; do sleep 0.05; done\nexit {code}\n"


@pytest.fixture
def ledger(redis_server) -> Ledger:
    return Ledger(redis_server.url)


def submit(ledger: Ledger, dependency: str | None = None, name: str = "job", cpus: int = 1) -> int:
    body = {"job": {"cpus_per_task": cpus, "name": name, "dependency": dependency}, "script": "true\n"}
    return jobs.submit(ledger.c, JobSubmission.model_validate(body))


def run(ledger: Ledger, job_id: int, outcome: str = "COMPLETED") -> None:
    """Place (unless placed already), claim and end ``job_id`` with ``outcome`` as a worker of node-a would."""
    if ledger.job(job_id)["state"] == "PENDING":
        placed = ledger.place()
        assert placed.get(job_id) == "node-a", placed
    worker = next(w for w in ("node-a-1", "node-a-2", "node-a-3", "node-a-4")
                  if ledger.c.hget(f"worker:{w}", "state") == "idle")
    assert ledger.claim(job_id, worker)[0] == "run"
    assert ledger.finish(job_id, outcome, worker, 0 if outcome == "COMPLETED" else 1) == 1


def state(ledger: Ledger, job_id: int) -> tuple[str, str | None]:
    view = ledger.job(job_id)
    return view["state"], view["reason"]


@pytest.mark.parametrize("kind, outcome, released", [
    ("afterok", "COMPLETED", True), ("afterok", "FAILED", False),
    ("afternotok", "FAILED", True), ("afternotok", "COMPLETED", False), ("afternotok", "NODE_FAIL", True),
    ("afterany", "COMPLETED", True), ("afterany", "FAILED", True), ("afterany", "CANCELLED", True),
])
def test_a_dependent_is_released_or_never_satisfied_in_the_parents_end(ledger, kind, outcome, released):
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    child = submit(ledger, f"{kind}:{parent}")
    assert state(ledger, child) == ("PENDING", "Dependency")
    assert ledger.place() == {parent: "node-a"}  # a free slot, yet the child waits
    ledger.finish(parent, outcome, "", 0 if outcome == "COMPLETED" else 1)
    if released:
        assert state(ledger, child) == ("PENDING", None)
        assert ledger.place() == {child: "node-a"}
    else:
        assert state(ledger, child) == ("PENDING", "DependencyNeverSatisfied")
        assert ledger.place() == {}
    ledger.assert_consistent()


def test_after_waits_only_for_the_parent_to_start(ledger):
    ledger.node("node-a", cpus=4, workers=1)
    parent = submit(ledger)
    child = submit(ledger, f"after:{parent}")
    assert state(ledger, child) == ("PENDING", "Dependency")
    assert ledger.place() == {parent: "node-a"}
    assert state(ledger, child) == ("PENDING", None)  # released by the parent's placement, no slot yet
    ledger.finish(parent)
    assert ledger.place() == {child: "node-a"}


def test_all_of_and_any_of(ledger):
    ledger.node("node-a", cpus=4, workers=4)
    first, second = submit(ledger), submit(ledger)
    both = submit(ledger, f"afterok:{first},afterok:{second}")
    either = submit(ledger, f"afterok:{first}?afterok:{second}")
    also_both = submit(ledger, f"afterok:{first}:{second}")
    run(ledger, first)
    assert state(ledger, both) == ("PENDING", "Dependency")
    assert state(ledger, also_both) == ("PENDING", "Dependency")
    assert state(ledger, either) == ("PENDING", None)
    ledger.finish(either, "CANCELLED")
    run(ledger, second, "FAILED")
    assert state(ledger, both) == ("PENDING", "DependencyNeverSatisfied")
    assert state(ledger, also_both) == ("PENDING", "DependencyNeverSatisfied")
    ledger.assert_consistent()


def test_a_dependency_on_a_job_already_ended_is_decided_at_submit(ledger):
    ledger.node("node-a", cpus=4, workers=1)
    done = submit(ledger)
    run(ledger, done)
    assert state(ledger, submit(ledger, f"afterok:{done}")) == ("PENDING", None)
    assert state(ledger, submit(ledger, f"afternotok:{done}")) == ("PENDING", "DependencyNeverSatisfied")


def test_singleton_waits_for_earlier_jobs_of_the_same_name_and_account(ledger):
    ledger.node("node-a", cpus=4, workers=4)
    first = submit(ledger, name="nightly")
    other = submit(ledger, name="other")
    second = submit(ledger, "singleton", name="nightly")
    lone = submit(ledger, "singleton", name="lone")
    assert ledger.place() == {first: "node-a", other: "node-a", lone: "node-a"}
    assert state(ledger, second) == ("PENDING", "Dependency")
    ledger.finish(first, "FAILED", "", 1)
    assert ledger.place() == {second: "node-a"}


def test_a_dependency_on_an_unknown_job_is_refused_and_nothing_is_stored(ledger):
    ledger.node("node-a", cpus=4, workers=1)
    before = ledger.c.dbsize()
    with pytest.raises(JobRejected) as refused:
        submit(ledger, "afterok:4242")
    assert refused.value.field == "job.dependency" and "4242" in refused.value.reason
    with pytest.raises(JobRejected):
        submit(ledger, "afterok:1_3")
    assert ledger.c.dbsize() == before


def test_a_chain_is_released_link_by_link(ledger):
    ledger.node("node-a", cpus=4, workers=1)
    chain = [submit(ledger)]
    for _ in range(5):
        chain.append(submit(ledger, f"afterok:{chain[-1]}"))
    for job_id in chain:
        run(ledger, job_id)
    assert all(ledger.job(job_id)["state"] == "COMPLETED" for job_id in chain)
    ledger.assert_consistent()


def test_a_parent_stored_by_an_older_release_still_releases_its_dependents(ledger):
    """Guards a rolling upgrade: a job stored before jobs carried ``has_dependents`` (an older
    release's record, which lacks the field) still releases its dependents when it ends."""
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    child = submit(ledger, f"afterok:{parent}")
    ledger.c.hdel(keys.job(parent), "has_dependents")  # as an older release stored it
    run(ledger, parent)
    assert state(ledger, child) == ("PENDING", None)
    assert ledger.place() == {child: "node-a"}


def test_after_with_a_delay_waits_that_many_minutes_after_the_parent_started(ledger):
    """after:ID+10: the child is released by the maintenance pass once ten minutes have passed
    since the parent started (time passing is simulated by moving the parent's start and the
    child's timer back by ten minutes, as the clock would)."""
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    child = submit(ledger, f"after:{parent}+10")
    assert ledger.job(child)["dependency"] == f"after:{parent}+10"
    assert ledger.place() == {parent: "node-a"}  # the parent starts: the ten minutes begin
    started = float(ledger.c.hget(keys.job(parent), "started_at"))
    assert ledger.c.zscore(keys.DEPENDENCY_TIMERS, child) == pytest.approx(started + 600)
    assert placement.place(ledger.c, ledger.rq, full=True) == []  # not yet due
    assert state(ledger, child) == ("PENDING", "Dependency")
    ledger.c.hset(keys.job(parent), "started_at", f"{started - 600:.6f}")
    ledger.c.zadd(keys.DEPENDENCY_TIMERS, {child: started - 600})
    assert placement.place(ledger.c, ledger.rq, full=True) == [(child, "node-a")]
    assert ledger.c.zcard(keys.DEPENDENCY_TIMERS) == 0
    ledger.assert_consistent()


def test_after_with_a_delay_already_over_is_met_at_once_and_a_whole_array_is_refused(ledger):
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    ledger.place()
    started = float(ledger.c.hget(keys.job(parent), "started_at"))
    ledger.c.hset(keys.job(parent), "started_at", f"{started - 120:.6f}")  # started two minutes ago
    assert state(ledger, submit(ledger, f"after:{parent}+1")) == ("PENDING", None)
    array = jobs.submit(ledger.c, JobSubmission.model_validate({"job": {"array": "0-3"}, "script": "true\n"}))
    with pytest.raises(JobRejected, match="not supported on a whole array"):
        submit(ledger, f"after:{array}+5")
    assert submit(ledger, f"after:{array}_1+5")


# --- KILL_INVALID_DEPEND (Slurm's kill_invalid_depend) ---------------------------------------------


def submit_killing(ledger: Ledger, dependency: str, array: str | None = None, name: str = "job") -> int:
    body = {"job": {"name": name, "dependency": dependency, "array": array}, "script": "true\n"}
    return jobs.submit(ledger.c, JobSubmission.model_validate(body), kill_invalid_depend=True)


def test_under_kill_invalid_depend_a_dependency_never_met_cancels_the_job_and_its_chain(ledger):
    """In the parent's very end: the dependent is CANCELLED with reason DependencyNeverSatisfied,
    its own afterok dependent after it; a job submitted without the setting is held as before,
    and an afterany dependent of the cancelled one runs."""
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    child = submit_killing(ledger, f"afterok:{parent}")
    grandchild = submit_killing(ledger, f"afterok:{child}")
    held = submit(ledger, f"afterok:{parent}")
    cleanup = submit(ledger, f"afterany:{child}")
    run(ledger, parent, "FAILED")
    assert state(ledger, child) == ("CANCELLED", "DependencyNeverSatisfied")
    assert state(ledger, grandchild) == ("CANCELLED", "DependencyNeverSatisfied")
    assert state(ledger, held) == ("PENDING", "DependencyNeverSatisfied")
    assert state(ledger, cleanup) == ("PENDING", None)
    assert ledger.place() == {cleanup: "node-a"}
    ledger.assert_consistent()


def test_under_kill_invalid_depend_a_dependency_already_impossible_is_cancelled_at_submit(ledger):
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    run(ledger, parent, "FAILED")
    child = submit_killing(ledger, f"afterok:{parent}")
    assert state(ledger, child) == ("CANCELLED", "DependencyNeverSatisfied")
    assert ledger.place() == {}
    ledger.assert_consistent()


def test_under_kill_invalid_depend_an_array_whose_dependency_fails_is_cancelled_whole(ledger):
    """Every task shares the array's dependency: its materialised task and the part not yet
    materialised are cancelled in the same step, so a job waiting on the whole array is decided."""
    ledger.node("node-a", cpus=4, workers=2)
    parent = submit(ledger)
    array = submit_killing(ledger, f"afterok:{parent}", array="0-999%4", name="sweep")
    after_all = submit(ledger, f"afterany:{array}")
    run(ledger, parent, "FAILED")
    assert state(ledger, array) == ("CANCELLED", "DependencyNeverSatisfied")
    assert jobs.array_remainders(ledger.c, [array]) == {}
    assert ledger.c.zcard(keys.state("CANCELLED")) == 1  # no task beyond the first was materialised
    assert state(ledger, after_all) == ("PENDING", None)
    assert ledger.place() == {after_all: "node-a"}
    ledger.assert_consistent()


# --- end to end: real workers ------------------------------------------------------------------------


def test_afterok_afternotok_afterany_with_real_workers(make_node, tmp_path):
    """Each dependent runs only after the outcome it names, from the CLI; the others are held."""
    node = make_node(TOTAL_CPUS=4, WORKER_CONCURRENCY=2)
    node.start_workers(2)
    ok = node.submit(BLOCK.format(release=tmp_path / "go", code=0))
    bad = node.submit(BLOCK.format(release=tmp_path / "go", code=3))
    children = {
        (kind, parent): node.submit("#!/bin/bash\necho dependent ran\n", f"--dependency={kind}:{parent}")
        for kind in ("afterok", "afternotok", "afterany") for parent in (ok, bad)
    }
    assert all(node.job(child)["reason"] == "Dependency" for child in children.values())
    (tmp_path / "go").touch()
    node.wait_state(ok, "COMPLETED")
    node.wait_state(bad, "FAILED")
    for (kind, parent), child in children.items():
        runs = {"afterok": parent == ok, "afternotok": parent == bad, "afterany": True}[kind]
        if runs:
            assert node.wait_state(child, "COMPLETED")["exit_code"] == 0, (kind, parent)
        else:
            wait_until(lambda c=child: node.job(c)["reason"] == "DependencyNeverSatisfied",
                       what=f"{kind}:{parent} to be never satisfied")
            assert node.job(child)["state"] == "PENDING"
    shown = conductor("show", str(children[("afterok", bad)]), "--json", config=node.config).stdout
    assert '"dependency": "afterok:' in shown


def test_a_worker_sigkill_mid_chain_makes_afterok_dependents_never_satisfied(make_node, tmp_path):
    """A chain whose running link dies with its worker (NODE_FAIL): the afterok dependent is
    DependencyNeverSatisfied, the afternotok one runs, and nothing of the chain is stranded."""
    node = make_node(TOTAL_CPUS=4, WORKER_CONCURRENCY=2, HEARTBEAT_INTERVAL=1, HEARTBEAT_TTL=3)
    node.start_workers(2)
    first = node.submit("#!/bin/bash\ntrue\n")
    node.wait_state(first, "COMPLETED")
    pids = tmp_path / "pids"
    middle = node.submit(f"#!/bin/bash\nsleep 300 & echo $! > {pids}\nwait\n", f"--dependency=afterok:{first}")
    last = node.submit("#!/bin/bash\ntrue\n", f"--dependency=afterok:{middle}")
    rescue = node.submit("#!/bin/bash\ntrue\n", f"--dependency=afternotok:{middle}")
    wait_until(pids.exists, what="the middle link to start")
    owner = node.workers[int(node.wait_state(middle, "RUNNING")["worker"].rsplit("-", 1)[1])]
    owner.signal(signal.SIGKILL)
    owner.wait()
    node.wait_state(middle, "NODE_FAIL")
    wait_until(lambda: node.job(last)["reason"] == "DependencyNeverSatisfied", what="afterok never satisfied")
    assert node.job(last)["state"] == "PENDING"
    assert node.wait_state(rescue, "COMPLETED")["exit_code"] == 0
    assert conductor("cancel", str(last), config=node.config).returncode == 0
    assert node.wait_state(last, "CANCELLED")


def test_a_dependency_on_an_unknown_job_is_refused_by_the_cli(make_node):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_workers(1)
    refused = conductor("submit", "--dependency=afterok:999", "-", config=node.config,
                        input="#!/bin/bash\ntrue\n", check=False)
    assert refused.returncode == 2
    assert "dependency" in refused.stderr and "999" in refused.stderr


def test_kill_invalid_depend_from_app_properties_cancels_the_dependent_of_a_failed_job(make_node, tmp_path):
    """The setting as an operator sets it: `conductor submit` on a node with KILL_INVALID_DEPEND=true."""
    node = make_node(TOTAL_CPUS=4, WORKER_CONCURRENCY=1, KILL_INVALID_DEPEND="true")
    node.start_workers(1)
    bad = node.submit("#!/bin/bash\nexit 3\n")
    child = node.submit("#!/bin/bash\necho never\n", f"--dependency=afterok:{bad}")
    node.wait_state(bad, "FAILED")
    assert node.wait_state(child, "CANCELLED")["reason"] == "DependencyNeverSatisfied"
    assert node.job(child)["started_at"] is None
