"""The resource ledger against a real redis-server: atomic placement, exactly-once release, reaping.

Workers are simulated the way the registry records them (``registry.register``) and act through
the same Lua scripts a real worker uses (``start`` to claim, ``finish`` to end), so every decision
under test is made by Redis. Ledger snapshots are taken by one read-only Lua script, so each one is
a single atomic view even while many clients write.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from conductor import jobs, keys, nodestate, placement, registry, resources, scripts
from conductor.config import Settings
from conductor.jobs import JobRejected, JobState, JobSubmission
from conductor.store import connect
from support import wait_until

G = 1 << 30
FINAL = {s.value for s in JobState if s.final}

SNAPSHOT = """
local nodes_key, node_prefix, job_prefix, state_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {nodes = {}, states = {}}
for _, name in ipairs(redis.call('SMEMBERS', nodes_key)) do
  local n = redis.call('HMGET', node_prefix .. name, 'total_cpus', 'total_memory', 'allocated_cpus', 'allocated_memory')
  local running = {}
  for _, id in ipairs(redis.call('SMEMBERS', node_prefix .. name .. ':running')) do
    local j = redis.call('HMGET', job_prefix .. id, 'state', 'cpus', 'memory', 'cpu_ids', 'worker', 'node')
    table.insert(running, {id = tonumber(id), state = j[1], cpus = tonumber(j[2]), memory = tonumber(j[3]),
                           cpu_ids = j[4], worker = j[5], node = j[6]})
  end
  out.nodes[name] = {total_cpus = tonumber(n[1]), total_memory = tonumber(n[2]),
                     allocated_cpus = tonumber(n[3]), allocated_memory = tonumber(n[4]),
                     free = redis.call('ZRANGE', node_prefix .. name .. ':free-cpus', 0, -1),
                     workers = redis.call('SMEMBERS', node_prefix .. name .. ':workers'),
                     running = running}
end
for i = 5, #ARGV do
  out.states[ARGV[i]] = redis.call('ZRANGE', state_prefix .. ARGV[i], 0, -1)
end
return cjson.encode(out)
"""


def _list(value: Any) -> list:
    return [] if value == {} else value  # cjson spells an empty table as {}


def snapshot(connection) -> dict[str, Any]:
    """One atomic view of every node's books and every state index."""
    raw = json.loads(connection.eval(SNAPSHOT, 0, keys.NODES, keys.NODE_PREFIX, keys.JOB_PREFIX,
                                     keys.STATE_PREFIX, *[s.value for s in JobState]))
    raw["nodes"] = raw["nodes"] or {}
    for entry in raw["nodes"].values():
        entry["free"] = [int(c) for c in _list(entry["free"])]
        entry["workers"] = _list(entry["workers"])
        entry["running"] = _list(entry["running"])
    raw["states"] = {name: [int(i) for i in _list(ids)] for name, ids in raw["states"].items()}
    return raw


def violations(view: dict[str, Any], strict_slots: bool = True) -> list[str]:
    """Every broken ledger invariant in ``view`` (an empty list when the books are right)."""
    found = []
    running_anywhere: list[int] = []
    for name, node in view["nodes"].items():
        running = node["running"]
        running_anywhere += [job["id"] for job in running]
        cpus = sum(job["cpus"] for job in running)
        memory = sum(job["memory"] for job in running)
        if node["allocated_cpus"] != cpus:
            found.append(f"{name}: allocated_cpus {node['allocated_cpus']} != {cpus} held by RUNNING jobs")
        if node["allocated_memory"] != memory:
            found.append(f"{name}: allocated_memory {node['allocated_memory']} != {memory} held by RUNNING jobs")
        if node["allocated_cpus"] > node["total_cpus"]:
            found.append(f"{name}: {node['allocated_cpus']} CPUs allocated of {node['total_cpus']}")
        if node["allocated_memory"] > node["total_memory"]:
            found.append(f"{name}: {node['allocated_memory']} bytes allocated of {node['total_memory']}")
        held: list[int] = []
        for job in running:
            ids = [int(c) for c in job["cpu_ids"].split(",") if c]
            if job["state"] != "RUNNING" or job["node"] != name:
                found.append(f"{name}: job {job['id']} in the running set is {job['state']} on {job['node']!r}")
            if len(ids) != job["cpus"]:
                found.append(f"{name}: job {job['id']} holds CPUs {ids} for {job['cpus']} CPUs")
            held += ids
        if len(held) != len(set(held)):
            found.append(f"{name}: a CPU is held twice: {sorted(held)}")
        if set(held) & set(node["free"]):
            found.append(f"{name}: CPUs both held and free: {sorted(set(held) & set(node['free']))}")
        if set(held) | set(node["free"]) != set(range(node["total_cpus"])):
            found.append(f"{name}: held {sorted(held)} + free {node['free']} != 0..{node['total_cpus'] - 1}")
        claimed = [job["worker"] for job in running if job["worker"]]
        if len(claimed) != len(set(claimed)):
            found.append(f"{name}: one worker runs two jobs: {claimed}")
        if strict_slots and len(running) > len(node["workers"]):
            found.append(f"{name}: {len(running)} RUNNING jobs but {len(node['workers'])} workers")
    if sorted(running_anywhere) != sorted(view["states"]["RUNNING"]):
        found.append(f"RUNNING index {view['states']['RUNNING']} != jobs in running sets {sorted(running_anywhere)}")
    seen = Counter(i for ids in view["states"].values() for i in ids)
    twice = [i for i, n in seen.items() if n > 1]
    if twice:
        found.append(f"jobs in two state indexes at once: {twice}")
    return found


def pending_index_violations(connection) -> list[str]:
    """Every way the per-class index of placeable jobs disagrees with ``state:PENDING`` (less the
    jobs held by an unmet dependency)."""
    found = []
    indexed: list[int] = []
    for name in connection.smembers(keys.PENDING_CLASSES):
        cpus, memory, partition = name.split(":", 2)
        members = [int(i) for i in connection.zrange(keys.pending_class(cpus, memory, partition), 0, -1)]
        if not members:
            found.append(f"class {name} is listed but empty")
        for job_id in members:
            if connection.hmget(keys.job(job_id), "cpus", "memory", "partition") != [cpus, memory, partition]:
                found.append(f"job {job_id} is indexed in class {name} but is not of it")
        indexed += members
    pending = [int(i) for i in connection.zrange(keys.state("PENDING"), 0, -1)
               if connection.hget(keys.job(i), "dependency_state") not in ("waiting", "never")]
    if sorted(indexed) != pending:
        found.append(f"indexed pending jobs {sorted(indexed)} != PENDING {pending}")
    return found


pytestmark = pytest.mark.usefixtures("clean_environment")


def node_settings(url: str, name: str, cpus: int, memory: int = 16 * G) -> Settings:
    return Settings(node_name=name, total_cpus=cpus, total_memory=memory, redis_url=url,
                    heartbeat_interval=1, heartbeat_ttl=3600, worker_concurrency=1)


class Ledger:
    """A Redis with nodes declared and workers registered, and the calls a worker would make."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.c = connect(url)
        self.rq = connect(url, decode=False)
        self.settings: dict[str, Settings] = {}

    def node(self, name: str, cpus: int, memory: int = 16 * G, workers: int = 0) -> Settings:
        node = self.settings[name] = node_settings(self.url, name, cpus, memory)
        resources.node_up(self.c, node)
        for index in range(1, workers + 1):
            registry.register(self.c, node, index)
        return node

    def submit(self, cpus: int = 1, memory: str | int = 0, name: str = "job") -> int:
        body = {"job": {"cpus_per_task": cpus, "memory_per_node": memory, "name": name}, "script": "true\n"}
        return jobs.submit(self.c, JobSubmission.model_validate(body))

    def place(self) -> dict[int, str]:
        return dict(placement.place(self.c, self.rq))

    def claim(self, job_id: int, worker: str) -> list:
        node = worker.rsplit("-", 1)[0]
        return scripts.run(self.c, "start", job_id, worker, node)  # type: ignore[return-value]

    def finish(self, job_id: int, state: str = "COMPLETED", worker: str = "", code: object = 0) -> int:
        return int(scripts.run(self.c, "finish", job_id, state, code, "", worker))  # type: ignore[arg-type]

    def kill(self, worker: str) -> list[int]:
        """The worker's record expires (SIGKILL, no heartbeat) and its process is gone (these records
        name the test's own, live process); someone reaps it."""
        self.c.delete(keys.worker(worker))
        self.c.hdel(keys.node_worker_processes(worker.rsplit("-", 1)[0]), worker)
        return registry.reap_dead(self.c)

    def job(self, job_id: int) -> dict[str, Any]:
        found = jobs.get(self.c, job_id)
        assert found is not None
        return found

    def books(self, node: str) -> dict[str, Any]:
        return {n["name"]: n for n in resources.nodes(self.c)}[node]

    def free_cpus(self, node: str) -> list[int]:
        return [int(c) for c in self.c.zrange(keys.node_free_cpus(node), 0, -1)]

    def assert_consistent(self, strict_slots: bool = True) -> None:
        assert violations(snapshot(self.c), strict_slots) == []
        assert pending_index_violations(self.c) == []


@pytest.fixture
def ledger(redis_server) -> Ledger:
    return Ledger(redis_server.url)


# --- the burst: many submitters, placers and workers at once ----------------------------------------

SUBMITTER = r"""
import random, sys
from conductor import jobs, placement
from conductor.jobs import JobSubmission
from conductor.store import connect
url, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c, rq = connect(url), connect(url, decode=False)
rng = random.Random(seed)
for _ in range(count):
    body = {"job": {"cpus_per_task": rng.randint(1, 6), "memory_per_node": rng.choice([0, "1G", "2G", "4G"]),
                    "name": f"proc-{seed}"}, "script": "true\n"}
    jobs.submit(c, JobSubmission.model_validate(body))
    placement.place(c, rq)
"""


def test_burst_of_200_concurrent_submissions_never_over_allocates(ledger, tmp_path):
    ledger.node("node-a", cpus=8, memory=16 * G, workers=3)
    ledger.node("node-b", cpus=6, memory=8 * G, workers=2)
    stop = threading.Event()
    problems: list[str] = []
    settled: Counter[int] = Counter()
    lock = threading.Lock()
    snapshots = [0]

    def checker() -> None:
        connection = connect(ledger.url)
        while not stop.is_set():
            found = violations(snapshot(connection))
            snapshots[0] += 1
            if found:
                problems.extend(found)
                return

    def placer() -> None:
        connection, rq = connect(ledger.url), connect(ledger.url, decode=False)
        while not stop.wait(0.002):
            placement.place(connection, rq)

    def worker(node: str, index: int) -> None:
        """What a worker does with its queue: claim, run (instantly), finish, place more."""
        connection, rq = connect(ledger.url), connect(ledger.url, decode=False)
        name = f"{node}-{index}"
        queue = f"rq:queue:{keys.queue_name(node)}"
        while not stop.is_set():
            item = rq.blpop([queue], timeout=0.2)
            if item is None:
                continue
            job_id = int(item[1].decode().removeprefix("conductor-"))
            reply = scripts.run(connection, "start", job_id, name, node)
            if reply[0] != "run":
                continue
            if scripts.run(connection, "finish", job_id, "COMPLETED", 0, "", name):
                with lock:
                    settled[job_id] += 1
            placement.place(connection, rq)

    def submitter(seed: int, count: int) -> None:
        connection, rq = connect(ledger.url), connect(ledger.url, decode=False)
        rng = random.Random(seed)
        for _ in range(count):
            body = {"job": {"cpus_per_task": rng.randint(1, 6), "memory_per_node": rng.choice([0, "1G", "2G", "4G"]),
                            "name": f"thread-{seed}"}, "script": "true\n"}
            jobs.submit(connection, JobSubmission.model_validate(body))
            placement.place(connection, rq)

    background = [threading.Thread(target=checker), threading.Thread(target=placer),
                  threading.Thread(target=placer)]
    background += [threading.Thread(target=worker, args=(node, i))
                   for node, count in (("node-a", 3), ("node-b", 2)) for i in range(1, count + 1)]
    for thread in background:
        thread.start()
    try:
        processes = [subprocess.Popen([sys.executable, "-c", SUBMITTER, ledger.url, str(seed), "25"])
                     for seed in range(100, 104)]
        submitters = [threading.Thread(target=submitter, args=(seed, 25)) for seed in range(4)]
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join()
        assert [p.wait(timeout=120) for p in processes] == [0, 0, 0, 0]
        assert ledger.c.zcard(keys.JOBS) == 200
        wait_until(lambda: problems or ledger.c.zcard(keys.state("COMPLETED")) == 200, timeout=120,
                   what="all 200 jobs to complete")
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=30)

    assert problems == []
    assert snapshots[0] > 0
    assert sorted(int(i) for i in ledger.c.zrange(keys.JOBS, 0, -1)) == list(range(1, 201))
    assert settled == Counter({job_id: 1 for job_id in range(1, 201)})
    final = snapshot(ledger.c)
    assert violations(final) == []
    for name, total in (("node-a", 8), ("node-b", 6)):
        assert final["nodes"][name]["allocated_cpus"] == 0
        assert final["nodes"][name]["allocated_memory"] == 0
        assert sorted(final["nodes"][name]["free"]) == list(range(total))
    names = Counter(ledger.job(i)["name"].split("-")[0] for i in range(1, 201))
    assert names == Counter({"thread": 100, "proc": 100})


# --- placement ------------------------------------------------------------------------------------


def test_a_job_larger_than_the_free_cpus_waits_and_is_placed_once_they_are_released(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    first = ledger.submit(cpus=6)
    assert ledger.place() == {first: "node-a"}
    big = ledger.submit(cpus=4)
    assert ledger.place() == {}
    assert ledger.job(big)["state"] == "PENDING"
    assert ledger.books("node-a")["allocated_cpus"] == 6

    assert ledger.claim(first, "node-a-1")[0] == "run"
    assert ledger.finish(first, worker="node-a-1") == 1
    assert ledger.place() == {big: "node-a"}
    assert ledger.job(big)["state"] == "RUNNING"
    assert len(ledger.job(big)["cpu_ids"]) == 4
    ledger.assert_consistent()


def test_a_job_larger_than_the_free_memory_waits(ledger):
    ledger.node("node-a", cpus=8, memory=8 * G, workers=2)
    first = ledger.submit(cpus=1, memory="6G")
    second = ledger.submit(cpus=1, memory="4G")
    assert ledger.place() == {first: "node-a"}
    assert ledger.job(second)["state"] == "PENDING"
    ledger.finish(first)
    assert ledger.place() == {second: "node-a"}
    assert ledger.books("node-a")["allocated_memory"] == 4 * G


def test_a_job_waits_for_a_free_worker_even_when_cpus_fit(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    first, second = ledger.submit(cpus=1), ledger.submit(cpus=1)
    assert ledger.place() == {first: "node-a"}
    assert ledger.job(second)["state"] == "PENDING"
    ledger.assert_consistent()
    ledger.finish(first)
    assert ledger.place() == {second: "node-a"}


def test_nothing_is_placed_on_a_node_without_workers(ledger):
    ledger.node("node-a", cpus=8, workers=0)
    job = ledger.submit(cpus=1)
    assert ledger.place() == {}
    assert ledger.job(job)["state"] == "PENDING"


def test_best_fit_prefers_the_node_with_the_fewest_free_cpus_that_fits(ledger):
    ledger.node("node-a", cpus=8, workers=4)
    ledger.node("node-b", cpus=4, workers=4)
    small = ledger.submit(cpus=3)  # fits both: goes where the smallest hole is
    large = ledger.submit(cpus=6)  # fits node-a only
    placed = ledger.place()
    assert placed == {small: "node-b", large: "node-a"}
    assert ledger.job(small)["node"] == "node-b" and ledger.job(large)["node"] == "node-a"
    ledger.assert_consistent()


def test_best_fit_breaks_ties_by_node_name(ledger):
    ledger.node("node-b", cpus=4, workers=1)
    ledger.node("node-a", cpus=4, workers=1)
    job = ledger.submit(cpus=2)
    assert ledger.place() == {job: "node-a"}


def test_best_fit_counts_cpus_freed_by_earlier_placements_in_the_same_pass(ledger):
    ledger.node("node-a", cpus=8, workers=4)
    ledger.node("node-b", cpus=6, workers=4)
    ids = [ledger.submit(cpus=3) for _ in range(4)]
    placed = ledger.place()
    # 3 -> b (6 free: smallest hole) leaves b 3; 3 -> b (3 free) leaves b 0; then a, a.
    assert placed == {ids[0]: "node-b", ids[1]: "node-b", ids[2]: "node-a", ids[3]: "node-a"}
    ledger.assert_consistent()


def test_a_jobs_end_files_its_node_in_the_open_node_index_with_its_new_free_cpus(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    job = ledger.submit(cpus=3)
    assert ledger.place() == {job: "node-a"}
    assert ledger.c.zscore(keys.OPEN_NODES_BY_FREE_CPUS, "node-a") == 5  # one slot left, 5 CPUs
    other = ledger.submit(cpus=1)
    assert ledger.place() == {other: "node-a"}
    assert ledger.c.zscore(keys.OPEN_NODES_BY_FREE_CPUS, "node-a") is None  # no slot left: not listed
    ledger.claim(job, "node-a-1")
    assert ledger.finish(job, worker="node-a-1") == 1
    assert ledger.c.zscore(keys.OPEN_NODES_BY_FREE_CPUS, "node-a") == 7
    ledger.assert_consistent()


def test_a_submitters_pass_is_skipped_only_while_no_open_node_has_the_cpus_and_the_job_is_placed_later(ledger):
    """place(needs=...) after a submission: no pass (no script) while no open node has the CPUs;
    whoever frees them places the job, and with room the submitter's own pass places it."""
    ledger.node("node-a", cpus=8, workers=1)
    first = ledger.submit(cpus=2)
    assert dict(placement.place(ledger.c, ledger.rq, needs=2)) == {first: "node-a"}
    waiting = ledger.submit(cpus=2)
    ledger.c.config_resetstat()
    assert placement.place(ledger.c, ledger.rq, needs=2) == []
    assert "cmdstat_evalsha" not in ledger.c.info("commandstats")  # one read, no placement pass
    assert ledger.job(waiting)["state"] == "PENDING"
    ledger.claim(first, "node-a-1")
    assert ledger.finish(first, worker="node-a-1") == 1
    assert ledger.place() == {waiting: "node-a"}  # the end made room: its worker's pass places it
    ledger.assert_consistent()


def test_a_class_emptied_by_a_pass_leaves_the_class_list_and_one_still_holding_jobs_stays(ledger):
    ledger.node("node-a", cpus=8, workers=3)
    a, b, c = ledger.submit(cpus=2), ledger.submit(cpus=2), ledger.submit(cpus=3)
    assert ledger.place() == {a: "node-a", b: "node-a", c: "node-a"}
    assert ledger.c.smembers(keys.PENDING_CLASSES) == set()
    ledger.node("node-b", cpus=4, workers=1)
    d, e = ledger.submit(cpus=2), ledger.submit(cpus=2)
    assert ledger.place() == {d: "node-b"}
    assert ledger.c.smembers(keys.PENDING_CLASSES) == {"2:0:default"}  # e still waits in it
    assert ledger.job(e)["state"] == "PENDING"
    ledger.assert_consistent()


def test_a_node_drained_while_in_the_open_node_index_is_skipped_and_resumed_again(ledger):
    ledger.node("node-a", cpus=4, workers=2)
    ledger.node("node-b", cpus=8, workers=2)
    placement.place(ledger.c, ledger.rq, full=True)  # both listed
    nodestate.drain(ledger.c, "node-a", "maintenance", "test")
    first = ledger.submit(cpus=1)
    assert ledger.place() == {first: "node-b"}  # node-a (the best fit) is drained
    assert ledger.c.zscore(keys.OPEN_NODES_BY_FREE_CPUS, "node-a") is None
    nodestate.resume(ledger.c, "node-a")
    second = ledger.submit(cpus=1)
    assert ledger.place() == {second: "node-a"}
    ledger.assert_consistent()


def test_a_stale_score_in_the_open_node_index_is_corrected_before_the_node_is_used(ledger):
    ledger.node("node-a", cpus=2, workers=1)
    ledger.node("node-b", cpus=8, workers=1)
    placement.place(ledger.c, ledger.rq, full=True)
    ledger.c.zadd(keys.OPEN_NODES_BY_FREE_CPUS, {"node-a": 6})  # says it has room for 6 CPUs: it has 2
    job = ledger.submit(cpus=4)
    assert ledger.place() == {job: "node-b"}
    assert ledger.c.zscore(keys.OPEN_NODES_BY_FREE_CPUS, "node-a") == 2
    ledger.assert_consistent()


def test_pending_jobs_are_placed_oldest_first(ledger):
    ledger.node("node-a", cpus=4, workers=4)
    ids = [ledger.submit(cpus=2) for _ in range(3)]
    assert ledger.place() == {ids[0]: "node-a", ids[1]: "node-a"}
    assert ledger.job(ids[2])["state"] == "PENDING"


def test_placed_jobs_get_distinct_concrete_cpus_and_land_in_the_nodes_rq_queue(ledger):
    ledger.node("node-a", cpus=8, workers=3)
    ids = [ledger.submit(cpus=c) for c in (3, 2, 3)]
    ledger.place()
    cpu_sets = [set(ledger.job(i)["cpu_ids"]) for i in ids]
    assert [len(s) for s in cpu_sets] == [3, 2, 3]
    assert set().union(*cpu_sets) == set(range(8))
    assert ledger.free_cpus("node-a") == []
    queued = ledger.rq.lrange(f"rq:queue:{keys.queue_name('node-a')}", 0, -1)
    assert sorted(queued) == sorted(f"conductor-{i}".encode() for i in ids)


def test_a_small_job_behind_hundreds_of_large_ones_is_placed(ledger):
    """Guards against head-of-line starvation: placement used to look only at the 256 oldest
    pending jobs, so 300 waiting 4-CPU jobs on a node with 3 free CPUs kept a later 1-CPU job
    PENDING next to an idle worker."""
    ledger.node("node-a", cpus=8, workers=2)
    first = ledger.submit(cpus=5)
    assert ledger.place() == {first: "node-a"}
    large = [ledger.submit(cpus=4) for _ in range(300)]
    small = ledger.submit(cpus=1)
    assert ledger.place() == {small: "node-a"}
    ledger.assert_consistent()
    ledger.finish(first)
    ledger.finish(small)
    assert ledger.place() == {large[0]: "node-a", large[1]: "node-a"}  # oldest first once they fit
    ledger.assert_consistent()


def test_jobs_of_many_classes_are_placed_oldest_first_among_those_that_fit(ledger):
    """The per-class index keeps the old order: of the jobs that fit, the oldest goes first."""
    ledger.node("node-a", cpus=4, memory=8 * G, workers=3)
    ids = [ledger.submit(cpus=c, memory=m) for c, m in [(4, 4 * G), (3, 0), (1, G), (1, 0)]]
    assert ledger.place() == {ids[0]: "node-a"}  # 4 CPUs: nothing else fits beside it
    ledger.finish(ids[0])
    assert ledger.place() == {ids[1]: "node-a", ids[2]: "node-a"}
    ledger.assert_consistent()


def test_the_pending_index_is_rebuilt_when_a_node_comes_up(ledger):
    """A Redis written by a release without the per-class index: the first worker to start
    indexes the pending jobs, so none is stranded by an upgrade."""
    ledger.node("node-a", cpus=4, workers=0)
    ids = [ledger.submit(cpus=1), ledger.submit(cpus=2)]
    for name in ledger.c.smembers(keys.PENDING_CLASSES):
        ledger.c.delete(keys.pending_class(*name.split(":", 2)))
    ledger.c.delete(keys.PENDING_CLASSES)
    ledger.node("node-a", cpus=4, workers=2)
    ledger.assert_consistent()
    assert ledger.place() == {ids[0]: "node-a", ids[1]: "node-a"}


# --- finish, cancel ---------------------------------------------------------------------------------


def test_finish_releases_exactly_once(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    job = ledger.submit(cpus=4, memory="2G")
    ledger.place()
    ledger.claim(job, "node-a-1")
    assert ledger.finish(job, worker="node-a-1") == 1
    assert ledger.books("node-a")["allocated_cpus"] == 0
    other = ledger.submit(cpus=4, memory="2G")
    ledger.place()
    taken = ledger.job(other)["cpu_ids"]

    assert ledger.finish(job, "FAILED", worker="node-a-1", code=1) == 0  # a second report changes nothing
    assert ledger.finish(job, "FAILED", worker="", code=1) == 0
    job_view = ledger.job(job)
    assert (job_view["state"], job_view["exit_code"]) == ("COMPLETED", 0)
    books = ledger.books("node-a")
    assert (books["allocated_cpus"], books["allocated_memory"]) == (4, 2 * G)
    assert not set(taken) & set(ledger.free_cpus("node-a"))  # the other job's CPUs were not freed
    ledger.assert_consistent()


def test_finish_by_another_worker_is_refused(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    job = ledger.submit(cpus=2)
    ledger.place()
    ledger.claim(job, "node-a-1")
    assert ledger.finish(job, worker="node-a-2") == 0
    assert ledger.job(job)["state"] == "RUNNING"
    assert ledger.books("node-a")["allocated_cpus"] == 2


def test_a_job_is_claimed_by_one_worker_only(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    job = ledger.submit(cpus=2)
    ledger.place()
    assert ledger.claim(job, "node-a-1")[0] == "run"
    assert ledger.claim(job, "node-a-2") == ["skip", "job is already run by node-a-1"]
    record = ledger.c.hgetall(keys.worker("node-a-1"))
    assert (record["state"], record["job"]) == ("busy", str(job))
    ledger.finish(job, worker="node-a-1")
    record = ledger.c.hgetall(keys.worker("node-a-1"))
    assert (record["state"], record["job"]) == ("idle", "")


def test_cancel_of_a_pending_job(ledger):
    ledger.node("node-a", cpus=8, workers=0)
    job = ledger.submit(cpus=2)
    assert jobs.cancel(ledger.c, job, "changed my mind") == "cancelled"
    view = ledger.job(job)
    assert (view["state"], view["reason"]) == ("CANCELLED", "changed my mind")
    assert view["ended_at"] is not None
    registry.register(ledger.c, ledger.settings["node-a"], 1)
    assert ledger.place() == {}


def test_cancel_of_a_running_but_unclaimed_job_releases_it_and_no_worker_runs_it(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    job = ledger.submit(cpus=4, memory="1G")
    ledger.place()
    assert jobs.cancel(ledger.c, job) == "cancelled"
    assert ledger.job(job)["state"] == "CANCELLED"
    books = ledger.books("node-a")
    assert (books["allocated_cpus"], books["allocated_memory"]) == (0, 0)
    assert sorted(ledger.free_cpus("node-a")) == list(range(8))
    assert ledger.claim(job, "node-a-1") == ["skip", "job is CANCELLED"]
    ledger.assert_consistent()


def test_cancel_of_a_claimed_job_signals_its_worker_and_keeps_the_books_until_it_ends(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    job = ledger.submit(cpus=4)
    ledger.place()
    ledger.claim(job, "node-a-1")
    assert jobs.cancel(ledger.c, job) == "signalled"
    assert ledger.c.lrange(keys.job_control(job), 0, -1) == ["cancel"]
    assert ledger.job(job)["state"] == "RUNNING"
    assert ledger.books("node-a")["allocated_cpus"] == 4
    assert ledger.finish(job, "CANCELLED", worker="node-a-1", code="") == 1
    assert ledger.books("node-a")["allocated_cpus"] == 0
    assert not ledger.c.exists(keys.job_control(job))


def test_cancel_of_an_ended_or_unknown_job(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    job = ledger.submit(cpus=1)
    ledger.place()
    ledger.finish(job)
    assert jobs.cancel(ledger.c, job) == "final:COMPLETED"
    assert ledger.job(job)["state"] == "COMPLETED"
    assert jobs.cancel(ledger.c, 999) == "missing"


# --- reaping dead workers ---------------------------------------------------------------------------


def test_reap_settles_the_dead_workers_job_node_fail_once(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    job = ledger.submit(cpus=4, memory="1G")
    ledger.place()
    ledger.claim(job, "node-a-1")
    assert ledger.kill("node-a-1") == [job]
    view = ledger.job(job)
    assert view["state"] == "NODE_FAIL"
    assert "node-a-1" in view["reason"]
    books = ledger.books("node-a")
    assert (books["allocated_cpus"], books["allocated_memory"], books["workers"]) == (0, 0, 1)
    assert not ledger.c.sismember(keys.WORKERS, "node-a-1")
    assert registry.reap_dead(ledger.c) == []  # nothing left to reap: not settled twice
    assert registry.reap(ledger.c, "node-a-1", "node-a") == []
    assert ledger.finish(job, worker="node-a-1") == 0  # a late report from the dead worker is dropped
    assert ledger.job(job)["state"] == "NODE_FAIL"
    ledger.assert_consistent()


def test_reap_requeues_unclaimed_jobs_when_the_node_has_no_worker_left(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    claimed, unclaimed = ledger.submit(cpus=2), ledger.submit(cpus=3)
    ledger.place()
    ledger.claim(claimed, "node-a-1")
    assert ledger.kill("node-a-2") == []
    # One worker left, busy with the claimed job: the unclaimed one gives way until a worker is free.
    assert ledger.job(unclaimed)["state"] == "PENDING"
    assert ledger.kill("node-a-1") == [claimed]
    assert ledger.job(claimed)["state"] == "NODE_FAIL"
    view = ledger.job(unclaimed)
    assert (view["state"], view["node"], view["cpu_ids"], view["started_at"]) == ("PENDING", None, [], None)
    books = ledger.books("node-a")
    assert (books["allocated_cpus"], books["workers"]) == (0, 0)
    ledger.assert_consistent()

    registry.register(ledger.c, ledger.settings["node-a"], 1)  # supervisord restarts it
    assert ledger.place() == {unclaimed: "node-a"}
    assert ledger.claim(unclaimed, "node-a-1")[0] == "run"


def test_reap_leaves_no_more_running_jobs_than_workers(ledger):
    ledger.node("node-a", cpus=8, workers=2)
    claimed, unclaimed = ledger.submit(cpus=2), ledger.submit(cpus=2)
    ledger.place()
    ledger.claim(claimed, "node-a-2")  # node-a-2 is busy; node-a-1 was about to take the other job
    ledger.kill("node-a-1")
    ledger.assert_consistent(strict_slots=True)


def test_reap_leaves_a_worker_that_registered_again_alone(ledger):
    ledger.node("node-a", cpus=8, workers=1)
    job = ledger.submit(cpus=2)
    ledger.place()
    ledger.claim(job, "node-a-1")
    assert registry.reap(ledger.c, "node-a-1", "node-a") == []  # its record exists: it is alive
    assert ledger.job(job)["state"] == "RUNNING"
    assert ledger.c.sismember(keys.node_workers("node-a"), "node-a-1")


# --- node_up: the books rebuilt from the running jobs --------------------------------------------------


def test_node_up_after_more_cpus_rebuilds_the_free_set_around_running_jobs(ledger):
    settings = ledger.node("node-a", cpus=4, workers=3)
    job = ledger.submit(cpus=3)
    ledger.place()
    held = set(ledger.job(job)["cpu_ids"])
    resources.node_up(ledger.c, settings.model_copy(update={"total_cpus": 8}))
    books = ledger.books("node-a")
    assert (books["total_cpus"], books["allocated_cpus"], books["free_cpus"]) == (8, 3, 5)
    assert set(ledger.free_cpus("node-a")) == set(range(8)) - held
    bigger = ledger.submit(cpus=5)
    assert ledger.place() == {bigger: "node-a"}
    ledger.assert_consistent()


def test_node_up_heals_books_that_drifted(ledger):
    settings = ledger.node("node-a", cpus=8, workers=2)
    job = ledger.submit(cpus=3, memory="1G")
    ledger.place()
    ledger.c.hset(keys.node("node-a"), mapping={"allocated_cpus": 7, "allocated_memory": 0})
    ledger.c.zadd(keys.node_free_cpus("node-a"), {str(c): c for c in ledger.job(job)["cpu_ids"]})
    resources.node_up(ledger.c, settings)
    books = ledger.books("node-a")
    assert (books["allocated_cpus"], books["allocated_memory"]) == (3, G)
    ledger.assert_consistent()


def test_node_up_with_fewer_cpus_never_over_allocates(ledger):
    settings = ledger.node("node-a", cpus=8, workers=3)
    low, high = ledger.submit(cpus=4), ledger.submit(cpus=4)
    ledger.place()
    assert sorted(ledger.job(high)["cpu_ids"]) == [4, 5, 6, 7]
    ledger.finish(low)
    resources.node_up(ledger.c, settings.model_copy(update={"total_cpus": 4}))  # high still runs on 4..7
    ledger.submit(cpus=4)
    ledger.place()
    books = ledger.books("node-a")
    assert books["allocated_cpus"] <= books["total_cpus"]


# --- a stateful model over submit / place / claim / finish / cancel / reap ----------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of everything that touches the books, against a real Redis.

    After every step: the ledger invariants hold, final states never change, and the model of
    which worker runs which job agrees with Redis.
    """

    url = ""
    NODES = {"node-a": (6, 8 * G), "node-b": (4, 4 * G)}

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(self.url)
        self.ledger.c.flushall()
        self.totals = dict(self.NODES)
        self.live: dict[str, str] = {}  # worker name -> node
        self.busy: dict[str, int] = {}  # worker name -> the job it runs
        self.final: dict[int, str] = {}  # job id -> its final state, once known
        self.submitted: list[int] = []

    @initialize()
    def declare_nodes(self) -> None:
        for name, (cpus, memory) in self.totals.items():
            self.ledger.node(name, cpus, memory, workers=2)
            self.live.update({f"{name}-1": name, f"{name}-2": name})

    def _worker_settings(self, node: str) -> Settings:
        cpus, memory = self.totals[node]
        return node_settings(self.url, node, cpus, memory)

    @rule(node=st.sampled_from(sorted(NODES)), index=st.integers(1, 3))
    def start_worker(self, node: str, index: int) -> None:
        name = f"{node}-{index}"
        if name in self.live:
            return
        registry.register(self.ledger.c, self._worker_settings(node), index)
        self.live[name] = node

    @rule(cpus=st.integers(1, 7), memory=st.sampled_from([0, G, 2 * G, 4 * G, 16 * G]), then_place=st.booleans())
    def submit(self, cpus: int, memory: int, then_place: bool) -> None:
        """As `conductor submit` does: store the job, then (usually) run a placement pass."""
        fits = cpus <= max(c for c, _ in self.totals.values()) and memory <= max(m for _, m in self.totals.values())
        if fits:
            self.submitted.append(self.ledger.submit(cpus, memory))
            if then_place:
                self.place()
        else:
            before = self.ledger.c.dbsize()
            with pytest.raises(JobRejected):
                self.ledger.submit(cpus, memory)
            assert self.ledger.c.dbsize() == before

    @rule()
    def place(self) -> None:
        before = snapshot(self.ledger.c)
        placed = self.ledger.place()
        after = snapshot(self.ledger.c)
        for job_id, node in placed.items():
            assert job_id in before["states"]["PENDING"]
        for name, node in after["nodes"].items():
            count = sum(1 for target in placed.values() if target == name)
            slots = len(before["nodes"][name]["workers"]) - len(before["nodes"][name]["running"])
            assert count <= max(slots, 0), f"{name}: placed {count} jobs into {slots} free slots"
        # greedy: every job still pending fits on no node that has a free slot left
        for job_id in after["states"]["PENDING"]:
            job = self.ledger.c.hmget(keys.job(job_id), "cpus", "memory")
            cpus, memory = int(job[0]), int(job[1])
            for name, node in after["nodes"].items():
                has_slot = len(node["workers"]) > len(node["running"])
                fits = len(node["free"]) >= cpus and node["total_memory"] - node["allocated_memory"] >= memory
                assert not (has_slot and fits), f"job {job_id} fits {name} but stayed PENDING"

    def _claimable(self) -> list[tuple[int, str]]:
        view = snapshot(self.ledger.c)
        return sorted(
            (job["id"], worker)
            for worker, node in self.live.items() if worker not in self.busy
            for job in view["nodes"][node]["running"] if not job["worker"]
        )

    @precondition(lambda self: self._claimable())
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        job_id, worker = data.draw(st.sampled_from(self._claimable()))
        assert self.ledger.claim(job_id, worker)[0] == "run"
        self.busy[worker] = job_id

    @precondition(lambda self: self.busy)
    @rule(data=st.data(), outcome=st.sampled_from(["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]),
          then_place=st.booleans())
    def finish(self, data: st.DataObject, outcome: str, then_place: bool) -> None:
        """As a worker does at the end of a job: report it (here twice), then run a placement pass."""
        worker = data.draw(st.sampled_from(sorted(self.busy)))
        job_id = self.busy.pop(worker)
        node = self.live[worker]
        cpus = int(self.ledger.c.hget(keys.job(job_id), "cpus"))
        allocated = self.ledger.books(node)["allocated_cpus"]
        assert self.ledger.finish(job_id, outcome, worker) == 1
        assert self.ledger.books(node)["allocated_cpus"] == allocated - cpus
        assert self.ledger.finish(job_id, outcome, worker) == 0  # reported twice: released once
        assert self.ledger.books(node)["allocated_cpus"] == allocated - cpus
        self.final[job_id] = outcome
        if then_place:
            self.place()

    @precondition(lambda self: self.submitted)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.submitted))
        state, worker = self.ledger.c.hmget(keys.job(job_id), "state", "worker")
        answer = jobs.cancel(self.ledger.c, job_id)
        if job_id in self.final:
            assert answer == f"final:{self.final[job_id]}"
        elif state == "PENDING" or not worker:
            assert answer == "cancelled"
            self.final[job_id] = "CANCELLED"
        else:
            assert answer == "signalled"  # its worker ends it: see finish

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def kill_worker(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.live)))
        node = self.live.pop(worker)
        job_id = self.busy.pop(worker, None)
        ended = self.ledger.kill(worker)
        assert ended == ([] if job_id is None else [job_id])
        if job_id is not None:  # a cancel signalled to the dead worker is honoured by the reaper
            cancelled = self.ledger.c.hexists(keys.job(job_id), "cancel_reason")
            self.final[job_id] = "CANCELLED" if cancelled else "NODE_FAIL"
        if node not in self.live.values():
            assert self.ledger.c.scard(keys.node_running(node)) == 0

    @rule(node=st.sampled_from(sorted(NODES)), more=st.integers(0, 2))
    def node_restarts_with_more_cpus(self, node: str, more: int) -> None:
        cpus, memory = self.totals[node]
        self.totals[node] = (cpus + more, memory)
        resources.node_up(self.ledger.c, self._worker_settings(node))

    @invariant()
    def books_balance(self) -> None:
        # strict_slots=False: see test_reap_leaves_no_more_running_jobs_than_workers (a known bug)
        assert violations(snapshot(self.ledger.c), strict_slots=False) == []
        assert pending_index_violations(self.ledger.c) == []

    @invariant()
    def model_agrees(self) -> None:
        for job_id in self.submitted:
            state, worker = self.ledger.c.hmget(keys.job(job_id), "state", "worker")
            if job_id in self.final:
                assert state == self.final[job_id]
            else:
                assert state in ("PENDING", "RUNNING")
        for worker, job_id in self.busy.items():
            assert self.ledger.c.hget(keys.job(job_id), "worker") == worker
            assert self.ledger.c.hmget(keys.worker(worker), "state", "job") == ["busy", str(job_id)]
        for worker in set(self.live) - set(self.busy):
            assert self.ledger.c.hget(keys.worker(worker), "state") == "idle"


def test_ledger_state_machine(redis_server):
    LedgerMachine.url = redis_server.url
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(max_examples=40, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
