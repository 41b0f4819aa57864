"""Fixtures that start the real things (redis-server, worker processes, supervisord) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Node, RedisServer, Supervisord, clear_settings_env, kill_processes_under, require


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """Whatever a test left running from its own directory (a job script of a worker it killed,
    a worker it did not stop) dies with the test: leftovers would load the machine for the rest of
    the run and make later tests slow and flaky. Runs last, after every other fixture's clean-up."""
    yield
    kill_processes_under(tmp_path)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require("redis-server")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def make_node(tmp_path: Path, redis_server: RedisServer) -> Iterator:
    """Factory for test nodes sharing the test's Redis; every worker is stopped afterwards."""
    nodes: list[Node] = []

    def make(name: str = "node-a", **overrides: object) -> Node:
        directory = tmp_path / name
        directory.mkdir()
        node = Node(directory, redis_server, NODE_NAME=name, **overrides)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[Supervisord]:
    server = Supervisord(tmp_path / "supervisor")
    yield server
    server.stop()


# --- docs/RELIABILITY.md, produced by the test run itself -------------------------------------
# Tests of faults, bad input and security carry @pytest.mark.reliability(CLASS, cases=N); when
# RELIABILITY_REPORT names a file (as `make test` does), the run writes a table of every class
# tried, how many cases, and the outcome.

_outcomes: dict[tuple[str, str], list[tuple[int, str]]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(kind, cases=1): a fault, bad-input or security case for docs/RELIABILITY.md")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    marker = getattr(report, "reliability", None)
    if marker is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes.setdefault(marker[:2], []).append((marker[2], report.outcome))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    outcome = yield
    marker = item.get_closest_marker("reliability")
    if marker is not None:
        kind = marker.args[0]
        name = item.nodeid.split("::", 1)[1].split("[", 1)[0]  # parametrized cases add up
        outcome.get_result().reliability = (kind, name, int(marker.kwargs.get("cases", 1)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    import os

    target = os.environ.get("RELIABILITY_REPORT")
    if not target or not _outcomes:
        return
    lines = [
        "# Reliability: faults, bad input and security cases tried",
        "",
        "Written by the test run (`make test`), not by hand: each row is a test marked",
        "`reliability` in tests/, with the number of cases it tried and how they ended.",
        "",
        "| class | test | cases | result |",
        "|---|---|---|---|",
    ]
    for (kind, name), results in sorted(_outcomes.items()):
        cases = sum(count for count, _ in results)
        verdicts = sorted({outcome for _, outcome in results})
        lines.append(f"| {kind} | `{name}` | {cases} | {', '.join(verdicts)} |")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("\n".join(lines) + "\n")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No conductor setting from the caller's environment (modules use it with ``usefixtures``)."""
    clear_settings_env(monkeypatch)
