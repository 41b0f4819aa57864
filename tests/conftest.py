"""Fixtures that start the real things (redis-server, worker processes, supervisord) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Node, RedisServer, Supervisord, require


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
