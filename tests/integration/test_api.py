"""The HTTP API as a client sees it: a real `conductor api` process on a free port, a real
redis-server and real worker processes, driven with plain HTTP.

One node serves the module (the seed's: 32 CPUs, 64G, four workers) with two API processes in
front of it, one without a token and one with; each test leaves every job ended, so the tests
do not depend on their order. Scripts wait for files the test creates instead of sleeping.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conductor import keys
from support import CONDUCTOR, Node, RedisServer, clean_env, free_port, require, running, wait_until, write_config

NODE = "kunpeng-compute-01"
TOKEN = "s3cret-token"
G = 1 << 30
SEED_JOB = {"account": "test", "partition": "compute-high-mem", "ntasks_per_node": 1, "cpus_per_task": 4,
            "memory_per_node": "8G"}


class Api:
    """A real `conductor api --config F` process, and an HTTP client for it."""

    def __init__(self, config: Path, token: str = "") -> None:
        port = int(_read_key(config, "API_PORT"))
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.with_suffix(".log")
        with open(self.log, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([CONDUCTOR, "api", "--config", str(config)], env=clean_env(),
                                            stdout=log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        wait_until(self._healthy, what=f"the API on {self.url}:\n{self.output()}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"conductor api exited {self.process.returncode}:\n{self.output()}")
        try:
            return self.http.get("/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def submit(self, script: str, **job: Any) -> httpx.Response:
        return self.http.post("/api/v1/jobs/submit", json={"job": job, "script": script})

    def job(self, job_id: int | str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_state(self, job_id: int | str, *states: str) -> dict[str, Any]:
        return wait_until(lambda: (job := self.job(job_id))["state"] in states and job,
                          what=f"job {job_id} to reach {states}")

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def no_server_errors(*apis: Api) -> Iterator[None]:
    """Fail the test whose requests made an API log a traceback (a 500 the test did not look for)."""
    marks = [len(api.output()) for api in apis]
    yield
    for api, mark in zip(apis, marks, strict=True):
        new = api.output()[mark:]
        assert "Traceback" not in new, new


def _read_key(config: Path, key: str) -> str:
    return next(line.split("=", 1)[1] for line in config.read_text().splitlines() if line.startswith(f"{key}="))


def api_config(node: Node, name: str, **values: Any) -> Path:
    """The node's own app.properties (same Redis, NODE_NAME, JOB_ROOT) with other API settings."""
    lines = dict(line.split("=", 1) for line in node.config.read_text().splitlines() if "=" in line)
    lines.update({key: str(value) for key, value in values.items()})
    return write_config(node.directory / f"{name}.properties", **lines)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Api, Api]]:
    require("redis-server")
    directory = tmp_path_factory.mktemp("api")
    (directory / NODE).mkdir()
    with running(RedisServer(directory / "redis").start()) as redis, \
            running(Node(directory / NODE, redis, NODE_NAME=NODE, TOTAL_CPUS=32, TOTAL_MEMORY="64G",
                         WORKER_CONCURRENCY=4)) as node:
        node.start_workers(4)
        with running(Api(api_config(node, "open", API_PORT=free_port()))) as open_api, \
                running(Api(api_config(node, "guarded", API_PORT=free_port(), API_TOKEN=TOKEN), TOKEN)) as guarded:
            yield node, open_api, guarded


@pytest.fixture(autouse=True)
def checked(request: pytest.FixtureRequest) -> Iterator[None]:
    if "cluster" not in request.fixturenames or request.node.get_closest_marker("xfail"):
        yield
        return
    _, open_api, guarded = request.getfixturevalue("cluster")
    with no_server_errors(open_api, guarded):
        yield


@pytest.fixture
def api(cluster: tuple[Node, Api, Api]) -> Iterator[Api]:
    """The open API, with every job ended before and after the test."""
    _, open_api, _ = cluster
    quiet(open_api)
    yield open_api
    quiet(open_api)


def quiet(api: Api) -> None:
    wait_until(lambda: all(j["state"] not in ("PENDING", "RUNNING") for j in api.http.get("/api/v1/jobs").json()),
               what="every job of an earlier test to end")


def waiting_script(release: Path, before: str = "") -> str:
    return f"#!/bin/bash\n{before}while [ ! -e {release} ]; do sleep 0.05; done\necho finished\n"


def stored(node: Node) -> tuple[int, str | None]:
    client = node.redis.client()
    return client.zcard(keys.JOBS), client.get(keys.NEXT_JOB_ID)


def metrics(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.http.get("/metrics")
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


# --- the seed's scenario ------------------------------------------------------------------------


def test_seed_four_jobs_run_at_once_on_four_workers(api: Api, tmp_path: Path) -> None:
    release = tmp_path / "release"
    answers = [api.submit(waiting_script(release, f'echo "Job {i} is running"\n'), name=f"concurrent-job-{i}",
                          **SEED_JOB) for i in range(1, 5)]

    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert all(a.json()["state"] in ("PENDING", "RUNNING") for a in answers)
    ids = [a.json()["job_id"] for a in answers]
    wait_until(lambda: all((j := api.job(i))["state"] == "RUNNING" and j["worker"] for i in ids),
               what="all four jobs RUNNING on a worker")
    running_jobs = api.http.get("/api/v1/jobs", params={"state": "RUNNING"}).json()
    assert sorted(j["id"] for j in running_jobs) == sorted(ids)
    assert {j["worker"] for j in running_jobs} == {f"{NODE}-{n}" for n in range(1, 5)}
    (seed_node,) = api.http.get("/api/v1/nodes").json()
    assert (seed_node["allocated_cpus"], seed_node["free_cpus"], seed_node["busy_workers"]) == (16, 16, 4)
    assert seed_node["allocated_memory"] == 32 * G
    workers = api.http.get("/api/v1/workers").json()
    assert sorted(w["job"] for w in workers) == sorted(ids) and {w["state"] for w in workers} == {"busy"}
    scraped = metrics(api)
    assert scraped[("conductor_node_allocated_cpus", (("node", NODE),))] == 16
    assert scraped[("conductor_node_cpus", (("node", NODE),))] == 32
    assert scraped[("conductor_node_workers", (("node", NODE),))] == 4
    assert scraped[("conductor_jobs", (("state", "RUNNING"),))] == 4

    release.touch()
    for job_id in ids:
        assert api.wait_state(job_id, "COMPLETED")["exit_code"] == 0
    first = api.job(ids[0])
    assert (first["name"], first["account"], first["partition"]) == ("concurrent-job-1", "test", "compute-high-mem")
    assert (first["cpus"], first["memory"], first["node"]) == (4, 8 * G, NODE)
    assert all(first[stamp] for stamp in ("submitted_at", "started_at", "ended_at"))
    assert api.http.get(f"/api/v1/jobs/{ids[0]}/output").content == b"Job 1 is running\nfinished\n"
    scraped = metrics(api)
    assert scraped[("conductor_node_allocated_cpus", (("node", NODE),))] == 0
    assert scraped[("conductor_job_run_seconds_count", ())] >= 4
    assert scraped[("conductor_job_wait_seconds_count", ())] >= 4
    assert scraped[("conductor_redis_up", ())] == 1


# --- output, cancel -----------------------------------------------------------------------------


def test_output_of_a_running_job_can_be_tailed_with_offsets(api: Api, tmp_path: Path) -> None:
    step, release = tmp_path / "step", tmp_path / "release"
    script = f'echo "first $SLURM_JOB_ID"\nwhile [ ! -e {step} ]; do sleep 0.05; done\necho second\n'
    job_id = api.submit(waiting_script(release, script)).json()["job_id"]
    expected_first = f"first {job_id}\n".encode()

    def read(offset: int) -> httpx.Response:
        response = api.http.get(f"/api/v1/jobs/{job_id}/output", params={"offset": offset})
        assert response.status_code == 200, response.text
        return response

    head = wait_until(lambda: (r := read(0)).content == expected_first and r, what="the first line")
    assert head.headers["X-Next-Offset"] == str(len(expected_first))
    assert (head.headers["X-Job-State"], head.headers["X-Output-Complete"]) == ("RUNNING", "false")
    step.touch()
    tail = wait_until(lambda: (r := read(len(expected_first))).content and r, what="the second line")
    assert tail.content == b"second\n"
    release.touch()
    api.wait_state(job_id, "COMPLETED")
    end = read(int(tail.headers["X-Next-Offset"]))
    assert (end.content, end.headers["X-Output-Complete"]) == (b"finished\n", "true")
    past = read(10_000)
    assert (past.content, past.headers["X-Next-Offset"], past.headers["X-Output-Complete"]) == (b"", "10000", "true")
    assert api.http.get(f"/api/v1/jobs/{job_id}/output", params={"limit": 6}).content == b"first "


def test_cancel_running_and_pending_jobs_and_409_once_ended(api: Api, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n"
    running_id = api.submit(script, cpus_per_task=4).json()["job_id"]
    job_pids = wait_until(lambda: pids.exists() and len(found := pids.read_text().split()) == 2 and found,
                          what="the job's processes to start")
    pending = api.submit("echo never\n", cpus_per_task=32)  # 4 of 32 CPUs are taken: it must wait
    assert (pending.status_code, pending.json()["state"]) == (201, "PENDING")
    pending_id = pending.json()["job_id"]

    cancelled = api.http.post(f"/api/v1/jobs/{pending_id}/cancel")
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "CANCELLED")
    never_ran = api.http.get(f"/api/v1/jobs/{pending_id}/output")
    assert (never_ran.status_code, never_ran.content, never_ran.headers["X-Output-Complete"]) == (200, b"", "true")
    requested = api.http.post(f"/api/v1/jobs/{running_id}/cancel")
    assert requested.status_code == 200 and requested.json()["state"] in ("RUNNING", "CANCELLED")
    api.wait_state(running_id, "CANCELLED")
    wait_until(lambda: not any(alive(int(pid)) for pid in job_pids), what=f"job processes {job_pids} to be gone")

    again = api.http.post(f"/api/v1/jobs/{running_id}/cancel")
    assert again.status_code == 409 and "already ended (CANCELLED)" in again.json()["detail"]
    assert api.http.post("/api/v1/jobs/987654/cancel").status_code == 404


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that does not reap counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_output_of_another_nodes_job_names_that_node(cluster, api: Api, tmp_path: Path) -> None:
    node = cluster[0]
    (tmp_path / "node-b").mkdir()
    other = Node(tmp_path / "node-b", node.redis, NODE_NAME="node-b", TOTAL_CPUS=2, TOTAL_MEMORY="1G",
                 WORKER_CONCURRENCY=1)
    with running(other):
        other.start_worker(1)
        job_id = api.submit("echo elsewhere\n", cpus_per_task=1, memory_per_node="1G").json()["job_id"]
        job = api.wait_state(job_id, "COMPLETED")
        assert job["node"] == "node-b"  # best fit: the small node
        response = api.http.get(f"/api/v1/jobs/{job_id}/output")
    assert response.status_code == 404
    assert "on node node-b" in response.json()["detail"] and f"runs on node {NODE}" in response.json()["detail"]


# --- bad requests -------------------------------------------------------------------------------

BAD_BODIES = {
    "zero CPUs": ({"job": {"cpus_per_task": 0}, "script": "true"}, ["body", "job", "cpus_per_task"]),
    "negative CPUs": ({"job": {"ntasks_per_node": -2}, "script": "true"}, ["body", "job", "ntasks_per_node"]),
    "more CPUs than any node": ({"job": {"cpus_per_task": 33}, "script": "true"}, ["body", "job", "cpus_per_task"]),
    "more memory than any node": ({"job": {"memory_per_node": "65G"}, "script": "true"},
                                  ["body", "job", "memory_per_node"]),
    "unparseable memory": ({"job": {"memory_per_node": "lots"}, "script": "true"},
                           ["body", "job", "memory_per_node"]),
    "empty script": ({"job": {}, "script": ""}, ["body", "script"]),
    "blank script": ({"job": {}, "script": "  \n "}, ["body", "script"]),
    "missing script": ({"job": {}}, ["body", "script"]),
    "wrong type": ({"job": {"cpus_per_task": "four"}, "script": "true"}, ["body", "job", "cpus_per_task"]),
    "unknown field": ({"job": {"nodes": 2}, "script": "true"}, ["body", "job", "nodes"]),
    "newline in name": ({"job": {"name": "a\nb"}, "script": "true"}, ["body", "job", "name"]),
    "bad time limit": ({"job": {"time_limit": "soon"}, "script": "true"}, ["body", "job", "time_limit"]),
    "not an object": ([1, 2], ["body"]),
    "memory as a fraction": ({"job": {"memory_per_node": 1.5}, "script": "true"}, ["body", "job", "memory_per_node"]),
    "time limit as a list": ({"job": {"time_limit": []}, "script": "true"}, ["body", "job", "time_limit"]),
}
KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case])) if case in KNOWN_BUGS else case
    for case in BAD_BODIES], ids=list(BAD_BODIES))
@pytest.mark.reliability("bad input: malformed HTTP job bodies (422, nothing stored)")
def test_bad_bodies_get_422_naming_the_field_and_store_nothing(cluster, case: str) -> None:
    node, api = cluster[0], cluster[1]
    body, loc = BAD_BODIES[case]
    before = stored(node)
    response = api.http.post("/api/v1/jobs/submit", json=body)
    assert response.status_code == 422, response.text
    assert [item["loc"] for item in response.json()["detail"]] == [loc]
    assert stored(node) == before


@pytest.mark.reliability("bad input: oversized, non-UTF-8 and malformed HTTP bodies")
def test_oversized_undecodable_and_malformed_bodies_get_422(cluster) -> None:
    node, api = cluster[0], cluster[1]
    before = stored(node)
    big = json.dumps({"job": {}, "script": "x" * (3 << 20)}).encode()
    headers = {"Content-Type": "application/json"}
    too_large = api.http.post("/api/v1/jobs/submit", content=big, headers=headers)
    assert too_large.status_code == 422
    assert "at most 2097152 bytes" in too_large.json()["detail"][0]["msg"]
    chunked = api.http.post("/api/v1/jobs/submit", content=iter([big[:1 << 20], big[1 << 20:]]), headers=headers)
    assert chunked.status_code == 422 and chunked.json()["detail"][0]["type"] == "body_too_large"
    not_utf8 = api.http.post("/api/v1/jobs/submit", content=b'{"script": "\xff"}', headers=headers)
    assert not_utf8.status_code == 422 and "not UTF-8" in not_utf8.json()["detail"][0]["msg"]
    truncated = api.http.post("/api/v1/jobs/submit", content=b'{"job": ', headers=headers)
    assert truncated.status_code == 422 and truncated.json()["detail"][0]["loc"][0] == "body"
    assert stored(node) == before


def test_a_sweep_and_its_collector_over_http_cancel_one_task_and_the_whole_array(api: Api, tmp_path: Path) -> None:
    """A new user's sweep over HTTP: a 1,000-task array with a %4 limit and an afterok collector.
    Tasks are named <array>_<index> in the path (as squeue and scancel write them); one task is
    cancelled before it was materialised and one while it runs, then the whole array, which
    leaves the collector PENDING with reason DependencyNeverSatisfied."""
    release = tmp_path / "release"
    sweep = api.submit(waiting_script(release), name="sweep", array="0-999%4")
    assert sweep.status_code == 201, sweep.text
    array = sweep.json()["job_id"]
    collector = api.submit("echo collected\n", name="collect", dependency=f"afterok:{array}").json()["job_id"]
    assert api.job(collector)["pending_reason"] == "Dependency"
    first = api.wait_state(f"{array}_0", "RUNNING")
    assert (first["id"], first["array_job_id"], first["array_task_id"]) == (array, array, 0)
    unmade = api.http.get(f"/api/v1/jobs/{array}_500")
    assert unmade.status_code == 404 and "not materialised" in unmade.json()["detail"]

    one = api.http.post(f"/api/v1/jobs/{array}_500/cancel")
    assert one.status_code == 200, one.text
    assert (one.json()["state"], one.json()["array_job_id"], one.json()["array_task_id"]) == ("CANCELLED", array, 500)
    assert api.http.post(f"/api/v1/jobs/{array}_500/cancel").status_code == 409
    second = api.wait_state(f"{array}_1", "RUNNING")
    stopping = api.http.post(f"/api/v1/jobs/{array}_1/cancel")
    assert stopping.status_code == 200 and stopping.json()["job_id"] == second["id"]
    assert api.wait_state(second["id"], "CANCELLED")["array_task_id"] == 1

    whole = api.http.post(f"/api/v1/jobs/{array}/cancel")
    assert whole.status_code == 200 and whole.json()["array_job_id"] == array, whole.text
    wait_until(lambda: not [j for j in api.http.get("/api/v1/jobs", params={"limit": 1000}).json()
                            if j["array_job_id"] == array and j["state"] in ("PENDING", "RUNNING")],
               what="every task of the array to end")
    again = api.http.post(f"/api/v1/jobs/{array}/cancel")
    assert again.status_code == 409 and "every task of the array has ended" in again.json()["detail"]
    assert api.job(collector)["pending_reason"] == "DependencyNeverSatisfied"
    assert api.http.post(f"/api/v1/jobs/{collector}/cancel").json()["state"] == "CANCELLED"
    release.touch()


def test_a_job_id_with_an_underscore_is_an_array_task_never_a_grouped_number(api: Api) -> None:
    """`123_4` names task 4 of array 123; read as an integer with digit grouping it would be job
    1234, which must never be shown or cancelled in its place."""
    job_id = api.submit("true\n").json()["job_id"]
    api.wait_state(job_id, "COMPLETED")
    text = str(job_id)
    grouped = f"{text[0]}_{text[1:]}" if len(text) > 1 and text[1] != "0" else f"{job_id}_1"
    for path in (f"/api/v1/jobs/{grouped}", f"/api/v1/jobs/{grouped}/output"):
        assert api.http.get(path).status_code == 404, path
    assert api.http.post(f"/api/v1/jobs/{grouped}/cancel").status_code == 404
    for bad in ("1_2_3", "1__2", "_1", "01", "1_01"):
        response = api.http.get(f"/api/v1/jobs/{bad}")
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["path", "job_id"], bad


def test_unknown_jobs_get_404_and_bad_queries_422(cluster) -> None:
    api = cluster[1]
    for path in ("/api/v1/jobs/987654", "/api/v1/jobs/987654/output"):
        response = api.http.get(path)
        assert response.status_code == 404 and response.json()["detail"] == "job 987654 does not exist"
    for path, params, loc in (("/api/v1/jobs", {"state": "SLEEPING"}, ["query", "state"]),
                              ("/api/v1/jobs", {"limit": 0}, ["query", "limit"]),
                              ("/api/v1/jobs/abc", {}, ["path", "job_id"]),
                              ("/api/v1/jobs/1/output", {"offset": -1}, ["query", "offset"])):
        response = api.http.get(path, params=params)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == loc, response.text


def test_jobs_are_listed_newest_first_and_paged(api: Api, tmp_path: Path) -> None:
    ids = [api.submit("true\n", name=f"page-{i}").json()["job_id"] for i in range(3)]
    for job_id in ids:
        api.wait_state(job_id, "COMPLETED")
    page = api.http.get("/api/v1/jobs", params={"state": "COMPLETED", "limit": 2})
    assert [j["id"] for j in page.json()] == ids[::-1][:2]
    assert int(page.headers["X-Total-Count"]) >= 3
    following = api.http.get("/api/v1/jobs", params={"state": "COMPLETED", "limit": 1, "offset": 2}).json()
    assert [j["id"] for j in following] == [ids[0]]


# --- the token ----------------------------------------------------------------------------------

GUARDED = ("/readyz", "/metrics", "/openapi.json", "/api/v1/jobs", "/api/v1/nodes", "/api/v1/workers",
           "/api/v1/partitions")


@pytest.mark.reliability("security: API bearer token")
def test_token_is_required_everywhere_but_healthz(cluster) -> None:
    node, guarded = cluster[0], cluster[2]
    bare = httpx.Client(base_url=guarded.url, timeout=30)
    assert bare.get("/healthz").status_code == 200
    for path in GUARDED:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            response = bare.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert bare.get(path, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200, path
        assert guarded.http.get(path).status_code == 200, path
    before = stored(node)
    refused = bare.post("/api/v1/jobs/submit", content=b"{not json", headers={"Content-Type": "application/json"})
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["detail"]
    assert bare.post("/api/v1/jobs/submit", json={"job": {}, "script": "true"}).status_code == 401
    assert stored(node) == before
    accepted = guarded.submit("true\n")
    assert accepted.status_code == 201
    guarded.wait_state(accepted.json()["job_id"], "COMPLETED")
    bare.close()


def test_without_a_token_nothing_asks_for_one(cluster) -> None:
    api = cluster[1]
    assert api.http.get("/readyz").json() == {"status": "ready"}
    document = api.http.get("/openapi.json").json()
    assert "securitySchemes" not in document.get("components", {})


# --- drain, resume, partitions -----------------------------------------------------------------


@pytest.mark.reliability("security: API bearer token", cases=2)
def test_drain_and_resume_over_http(cluster) -> None:
    """POST /nodes/{name}/drain|resume need the token; a drained node takes no job (PENDING with
    PartitionNodesDrained), shows DRAINED with its reason in /nodes and the metrics; resume runs it."""
    node, _, guarded = cluster
    quiet(guarded)
    bare = httpx.Client(base_url=guarded.url, timeout=30)
    for path in (f"/api/v1/nodes/{NODE}/drain", f"/api/v1/nodes/{NODE}/resume"):
        assert bare.post(path, json={"reason": "x"}).status_code == 401
    bare.close()
    assert not node.redis.client().exists(keys.node_drain(NODE))
    assert guarded.http.post("/api/v1/nodes/nowhere/drain", json={"reason": "x"}).status_code == 404
    empty = guarded.http.post(f"/api/v1/nodes/{NODE}/drain", json={"reason": " "})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "reason"]
    try:
        drained = guarded.http.post(f"/api/v1/nodes/{NODE}/drain", json={"reason": "kernel update"})
        assert drained.status_code == 200, drained.text
        assert (drained.json()["state"], drained.json()["reason"]) == ("DRAINED", "kernel update")
        assert drained.json()["drained_by"].startswith("api@")
        answer = guarded.submit("true\n", partition="compute-high-mem")
        assert answer.status_code == 201 and answer.json()["state"] == "PENDING"
        job_id = answer.json()["job_id"]
        assert guarded.job(job_id)["pending_reason"] == "PartitionNodesDrained"
        scraped = metrics(guarded)
        assert scraped[("conductor_node_state", (("node", NODE), ("state", "DRAINED")))] == 1
        assert scraped[("conductor_node_state", (("node", NODE), ("state", "IDLE")))] == 0
        rows = guarded.http.get("/api/v1/partitions").json()
        assert [row["name"] for row in rows] == ["*"]  # every node of this cluster serves every partition
        assert NODE in rows[0]["node_names"] and rows[0]["states"]["DRAINED"] == 1 and rows[0]["free_cpus"] == 0
    finally:
        resumed = guarded.http.post(f"/api/v1/nodes/{NODE}/resume")
    assert resumed.status_code == 200 and resumed.json()["reason"] is None
    assert guarded.wait_state(job_id, "COMPLETED")["pending_reason"] is None


@pytest.mark.reliability("bad input: HTTP 422 naming the field")
def test_a_partition_no_node_serves_is_a_422(redis_server: RedisServer, tmp_path: Path) -> None:
    """With NODE_PARTITIONS set, a job for another partition is refused at job.partition and not
    stored; one for the node's partition runs there."""
    (tmp_path / "gpu-node").mkdir()
    with running(Node(tmp_path / "gpu-node", redis_server, NODE_NAME="gpu-node", NODE_PARTITIONS="gpu",
                      WORKER_CONCURRENCY=1)) as node:
        node.start_workers(1)
        with running(Api(api_config(node, "api", API_PORT=free_port()))) as api, no_server_errors(api):
            before = stored(node)
            refused = api.submit("true\n", partition="compute-high-mem")
            assert refused.status_code == 422, refused.text
            issue = refused.json()["detail"][0]
            assert issue["loc"] == ["body", "job", "partition"] and "gpu" in issue["msg"], issue
            assert stored(node) == before
            accepted = api.submit("true\n", partition="gpu")
            assert accepted.status_code == 201
            assert api.wait_state(accepted.json()["job_id"], "COMPLETED")["node"] == "gpu-node"


# --- Redis unreachable --------------------------------------------------------------------------


def test_unreachable_redis_gives_503_and_healthz_stays_up(tmp_path: Path) -> None:
    nobody = free_port()  # nothing listens here
    config = write_config(tmp_path / "app.properties", NODE_NAME="lonely", TOTAL_CPUS=2, TOTAL_MEMORY="1G",
                          REDIS_URL=f"redis://127.0.0.1:{nobody}/0", JOB_ROOT=tmp_path / "jobs",
                          API_PORT=free_port(), SERVICE_USER=os.environ.get("USER", "root"),
                          ALLOW_ROOT_JOBS=True)  # the API runs no jobs; root needs saying so
    with running(Api(config)) as api, no_server_errors(api):
        assert api.http.get("/healthz").status_code == 200
        for method, path, body in (("GET", "/readyz", None), ("GET", "/api/v1/jobs", None),
                                   ("GET", "/api/v1/jobs/1", None), ("GET", "/api/v1/nodes", None),
                                   ("POST", "/api/v1/jobs/1/cancel", None),
                                   ("POST", "/api/v1/jobs/submit", {"job": {}, "script": "true"})):
            response = api.http.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert f"Redis at redis://127.0.0.1:{nobody}/0 is unreachable" in response.json()["detail"]
        assert metrics(api)[("conductor_redis_up", ())] == 0
