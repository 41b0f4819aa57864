"""The read paths at two cluster sizes: Redis round trips that do not grow, metrics that do not fan out.

`conductor workers`, `conductor nodes`, `GET /api/v1/nodes`, `GET /metrics` and
`GET /api/v1/jobs?limit=100` are what operators and Prometheus run all day; on a cluster of
hundreds of workers a read that asks Redis once per worker, node or job (N+1 round trips) or a
metric labelled per worker or per job is what makes dashboards unusable. Two clusters of the
same shape but different sizes are written by tests/cluster_fixture.py (conductor's own
functions and scripts); each read runs through its real entry point in this process (the
command through click, the route through the FastAPI app) against a real redis-server, and the
round trips are counted where redis-py sends them. No time is measured here: `make bench`
times the same reads at 1,000 workers and 100,000 jobs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.connection import Connection
from redis.exceptions import ResponseError

import cluster_fixture
from cluster_fixture import Shape
from conductor import cli, keys, metrics, registry, resources
from conductor.api import create_app
from conductor.config import load_settings
from conductor.store import connect
from support import CONDUCTOR, RedisServer, clean_env, clear_settings_env, free_port, require, wait_until, write_config

SHAPES = {
    "smaller": Shape(nodes=2, workers_per_node=4, jobs=120, pending=12),
    "larger": Shape(nodes=6, workers_per_node=12, jobs=1_500, pending=150),
}
READS = ("conductor workers", "conductor nodes", "GET /api/v1/nodes", "GET /metrics", "GET /api/v1/jobs?limit=100")
NAME = re.compile(r"^conductor_[a-z][a-z0-9_]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
BOUNDED_LABELS = {"state", "containment", "kind"}  # enumerations that do not grow with the cluster
UNIT_WORDS = {"seconds", "bytes"}  # base units, as the naming rules want (no milliseconds, no megabytes)


class Cluster:
    """A populated Redis and the settings of a node that reads it."""

    def __init__(self, root: Path, shape: Shape) -> None:
        self.shape = shape
        self.redis = RedisServer(root / "redis").start()
        self.config = write_config(root / "app.properties", NODE_NAME=cluster_fixture.node_name(1),
                                   REDIS_URL=self.redis.url, LOG_LEVEL="WARNING", JOB_ROOT=root / "jobs",
                                   API_HOST="127.0.0.1", API_PORT=free_port())
        cluster_fixture.populate(connect(self.redis.url), connect(self.redis.url, decode=False), shape)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Cluster]]:
    require("redis-server")
    built: dict[str, Cluster] = {}
    try:
        for name, shape in SHAPES.items():
            built[name] = Cluster(tmp_path_factory.mktemp(name), shape)
        yield built
    finally:
        for cluster in built.values():
            cluster.redis.stop()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every send to Redis (a single command or a whole pipeline is one round trip)."""
    sent = [0]
    real = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        real(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return sent


def reader(cluster: Cluster, read: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], str]:
    """The read through its real entry point, in this process: click's command or the FastAPI route."""
    clear_settings_env(monkeypatch)
    kind, what = read.split(" ", 1)
    if kind == "conductor":
        def command() -> str:
            result = CliRunner().invoke(cli.main, [what, "--config", str(cluster.config)], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return result.output
        return command
    client = TestClient(create_app(load_settings(cluster.config)))

    def route() -> str:
        response = client.get(what)
        assert response.status_code == 200, response.text
        return response.text
    return route


@pytest.mark.parametrize("read", READS)
def test_a_read_costs_the_same_round_trips_whatever_the_cluster_size(
        read: str, clusters: dict[str, Cluster], round_trips: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Three times the nodes and the workers and twelve times the jobs: not one round trip more."""
    counted = {}
    for name, cluster in clusters.items():
        perform = reader(cluster, read, monkeypatch)
        perform()  # the first read may load scripts; what is counted is the steady state
        round_trips[0] = 0
        answer = perform()
        counted[name] = round_trips[0]
        assert answer  # the read answered something (the routes' status was checked)
    assert counted["larger"] == counted["smaller"], counted


def scrape(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> str:
    return reader(cluster, "GET /metrics", monkeypatch)()


def series(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(family name, family type, labels) of every sample of an exposition."""
    return [(family.name, family.type, sample.labels)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def test_metrics_grow_only_per_node_never_per_worker_or_job(clusters: dict[str, Cluster],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every label is a bounded enumeration or the node; take the node away and both clusters
    expose exactly the same series, and each node has exactly as many series in both."""
    shapes: dict[str, tuple[set[tuple[str, tuple[tuple[str, str], ...]]], dict[str, int]]] = {}
    for name, cluster in clusters.items():
        found = series(scrape(cluster, monkeypatch))
        nodes = {cluster_fixture.node_name(n) for n in range(1, cluster.shape.nodes + 1)}
        for family, _, labels in found:
            unbounded = set(labels) - BOUNDED_LABELS - {"node", "le"}
            assert not unbounded, f"{family} has labels {unbounded} that may grow with the cluster"
            assert labels.get("node", next(iter(nodes))) in nodes, f"{family}: node label {labels['node']!r}"
        per_node = {node: sum(labels.get("node") == node for _, _, labels in found) for node in nodes}
        assert len(set(per_node.values())) == 1, f"nodes differ in their numbers of series: {per_node}"
        without_node = {(family, tuple(sorted((k, v) for k, v in labels.items() if k != "node")))
                        for family, _, labels in found}
        shapes[name] = without_node, per_node
    assert shapes["larger"][0] == shapes["smaller"][0]
    assert set(shapes["larger"][1].values()) == set(shapes["smaller"][1].values())


def test_metric_names_follow_the_prometheus_naming_rules(clusters: dict[str, Cluster],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One namespace, snake case, base units as suffixes, ``_total`` on counters and only there."""
    text = scrape(clusters["larger"], monkeypatch)
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert NAME.match(family.name), family.name
        assert family.documentation.strip(), f"{family.name} has no help text"
        words = family.name.split("_")
        if family.type == "counter":
            assert all(s.name in (f"{family.name}_total", f"{family.name}_created") for s in family.samples), family.name
        else:
            assert words[-1] != "total", f"{family.name}: only counters end in _total"
        assert not {"milliseconds", "ms", "megabytes", "mb", "kb", "percent"} & set(words), family.name
        for unit in UNIT_WORDS & set(words):
            assert words[-1] == unit or (family.type == "counter" and words[-2] == unit), \
                f"{family.name}: the unit {unit} must be the name's suffix"
        for sample in family.samples:
            for label in sample.labels:
                assert LABEL.match(label) and not label.startswith("__"), f"{family.name}: label {label!r}"


def test_promtool_accepts_a_live_metrics_endpoint(clusters: dict[str, Cluster], tmp_path: Path) -> None:
    """``promtool check metrics`` on what a real `conductor api` serves (when promtool is installed:
    Debian's prometheus package has it; the naming test above checks the same rules without it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    cluster = clusters["larger"]
    with open(tmp_path / "api.log", "ab") as log:
        api = subprocess.Popen([CONDUCTOR, "api", "--config", str(cluster.config)], env=clean_env(),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        port = load_settings(cluster.config).api_port
        import httpx

        def scraped() -> str | None:
            assert api.poll() is None, (tmp_path / "api.log").read_text()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.TransportError:
                return None
            return response.text if response.status_code == 200 else None

        text = wait_until(scraped, what="the API's /metrics")
    finally:
        api.terminate()
        api.wait(timeout=15)
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), \
        checked.stdout + checked.stderr


def test_a_user_limited_to_conductors_keys_gets_the_same_listings(clusters: dict[str, Cluster]) -> None:
    """Redis 7 refuses SORT's GET patterns to an ACL user who may not read every key; such a user
    (limited to conductor's and RQ's key patterns) still gets the same workers and nodes, read
    record by record."""
    cluster = clusters["smaller"]
    admin = cluster.redis.client()
    admin.acl_setuser("limited", enabled=True, passwords=["+limited-secret"], commands=["+@all"],
                      keys=[f"{keys.PREFIX}*", f"{keys.WORKER_PREFIX}*", "rq:*"])
    try:
        limited = connect(cluster.redis.url.replace("redis://", "redis://limited:limited-secret@"))
        with pytest.raises(ResponseError, match="ACL"):
            limited.sort(keys.WORKERS, by="nosort", get=[keys.worker("*") + "->name"])
        everyone = connect(cluster.redis.url)
        assert registry.workers(limited) == registry.workers(everyone)
        assert len(registry.workers(limited)) == cluster.shape.workers
        assert resources.nodes(limited) == resources.nodes(everyone)
        assert sum(node["busy_workers"] for node in resources.nodes(limited)) == cluster.shape.running
        assert metrics.job_times(limited) == metrics.job_times(everyone)
    finally:
        admin.acl_deluser("limited")


@pytest.mark.parametrize("window", [5, 40, metrics.WINDOW, 5_000])
def test_job_time_histograms_count_exactly_the_newest_ended_jobs(
        window: int, clusters: dict[str, Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """The histograms are built from the ``window`` highest-numbered ended jobs, read per state
    with a SORT each: the same jobs and times as reading each of them, whatever the window
    (smaller than one state's share, the default, and more than the cluster's ended jobs)."""
    monkeypatch.setattr(metrics, "WINDOW", window)
    connection = connect(clusters["larger"].redis.url)
    ended = sorted((int(job_id) for state in metrics.FINAL_STATES
                    for job_id in connection.zrange(keys.state(state), 0, -1)), reverse=True)[:window]
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ended:
            pipe.hmget(keys.job(job_id), "submitted_at", "started_at", "ended_at")
        expected = sorted(tuple(value or "" for value in row) for row in pipe.execute())
    assert len(expected) == min(window, clusters["larger"].shape.ended)
    assert sorted(metrics._recent_ended(connection)) == expected
    (wait, run) = metrics.job_times(connection)
    (count,) = [s.value for s in run.samples if s.name.endswith("_count")]
    assert count == sum(1 for _, started, end in expected if started and end)
