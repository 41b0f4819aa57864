"""The system tier: real systemd hosts (systemd-nspawn), booted once per session, always stopped.

Needs root, systemd-nspawn (Debian: systemd-container), debootstrap and nsenter; without them
every test here is skipped with the reason. The first run builds the hosts' root file system
(debootstrap, a minute or two; cached under /var/cache/conductor-test), later runs reuse it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hosts
import pytest
from support import RedisServer, require
from systemd_node import SOURCE, WHEELHOUSE, SystemdNode

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ansible-playbook", default=None, metavar="PATH",
        help="the ansible-playbook the Ansible tests run as an operator would: an operator's own (installed "
             "with pip or apt), without this environment's bin directory on PATH. Default: this environment's")


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = hosts.unavailable()
    if reason:
        pytest.skip(f"system tier (real systemd hosts) skipped: {reason}")


@pytest.fixture(scope="session")
def machine_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on the machine's 127.0.0.1, which the hosts reach over the shared network."""
    require("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("system-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of this checkout and its dependencies, built by deploy/wheelhouse.sh (hosts have no index)."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    result = subprocess.run([str(ROOT / "deploy/wheelhouse.sh"), str(directory)], check=False,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"deploy/wheelhouse.sh failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return directory


@pytest.fixture(scope="session")
def node_host(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path,
              machine_redis: RedisServer) -> Iterator[hosts.Host]:
    """One booted systemd host with the checkout and the wheelhouse bound in read-only.

    It depends on the machine's Redis so that Redis outlives it: the workers in the host
    unregister from Redis when the host powers off.
    """
    workdir = tmp_path_factory.mktemp("hosts")
    name = f"cnd-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    binds = [hosts.Bind(ROOT, SOURCE), hosts.Bind(wheelhouse, WHEELHOUSE)]
    try:
        with hosts.booted([name], workdir, binds) as (host,):
            print(f"\nsystem tier: host {name} ready after {time.monotonic() - started:.1f} s "
                  f"(root file system {host.root})")
            yield host
    finally:  # the overlays hold a venv each; the console logs stay for a look after a failure
        for upper in workdir.glob("*/upper"):
            shutil.rmtree(upper, ignore_errors=True)


@pytest.fixture(scope="session")
def systemd_node(node_host: hosts.Host, machine_redis: RedisServer) -> SystemdNode:
    """The node, installed once with deploy/install.sh and WORKER_CONCURRENCY=4."""
    node = SystemdNode(node_host, machine_redis, cpus=len(os.sched_getaffinity(0)))
    started = time.monotonic()
    node.first_install = node.install(4)  # type: ignore[attr-defined]
    print(f"system tier: first install.sh took {time.monotonic() - started:.1f} s")
    return node
