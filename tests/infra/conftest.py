"""Expected state of a deployed conductor node, for the testinfra tests next to this file.

Run against any deployed host, as an operator would::

    pytest tests/infra --hosts='ansible://compute' --ansible-inventory=ansible/inventory/cluster.ini
    pytest tests/infra --hosts=ssh://root@node1,ssh://root@node2 [--ssh-config=F] [--sudo]
    pytest tests/infra --hosts=local://            # on the node itself, as root

What a host should look like comes, for each item, from the first of:

1. the options below (``--conductor-concurrency 4`` ...), which apply to every host;
2. with the Ansible backend, the host's inventory variables (``conductor_worker_concurrency``,
   ``conductor_node_name`` (default: the inventory name), ``conductor_mode``, ...): what the
   playbook was asked to deploy;
3. the host's own /etc/conductor/app.properties (and, for the mode, the files installed).

So the tests check both that the host runs what its configuration says and, given an inventory
or options, that the configuration is the one intended.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import pytest

from conductor.config import parse_properties_text

CONFIG = "/etc/conductor/app.properties"
UNIT_DIR = "/etc/systemd/system"
SUPERVISOR_CONF = "/etc/supervisor/conf.d/conductor.conf"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conductor", "expected state of deployed conductor nodes (tests/infra)")
    group.addoption("--conductor-config", default=CONFIG, help=f"app.properties on the hosts (default {CONFIG})")
    group.addoption("--conductor-mode", choices=("systemd", "supervisord"),
                    help="expected mode (default: inventory conductor_mode, else what is installed)")
    group.addoption("--conductor-concurrency", type=int,
                    help="expected WORKER_CONCURRENCY (default: inventory, else the host's app.properties)")
    group.addoption("--conductor-node-name",
                    help="expected NODE_NAME, for a single host (default: inventory, else app.properties)")
    group.addoption("--conductor-api", choices=("true", "false"),
                    help="whether the API should run (default: inventory, else app.properties)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --hosts these tests would silently check the machine running pytest: skip them instead."""
    if config.getoption("hosts", None):
        return
    skip = pytest.mark.skip(reason="tests/infra check deployed hosts: pass --hosts=ssh://HOST,... "
                                   "(or ansible://GROUP with --ansible-inventory, or local:// on a node)")
    for item in items:
        if "tests/infra/" in str(item.path).replace("\\", "/") + "/":
            item.add_marker(skip)


def parse_properties(text: str, origin: str = CONFIG) -> dict[str, str]:
    """A host's app.properties read by conductor's own rules (KEY=VALUE, ``#`` comments), so the
    checks and the node can never disagree about what the file says."""
    return {key.upper(): value for key, (value, _) in parse_properties_text(text, origin).items()}


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on", "t", "y"}


@dataclass(frozen=True)
class Expected:
    """What one deployed node should look like."""

    config: str
    properties: dict[str, str]
    node: str
    concurrency: int
    mode: str
    api: bool
    user: str
    prefix: str
    job_root: str

    @property
    def conductor(self) -> str:
        return f"{self.prefix}/bin/conductor"

    @property
    def python(self) -> str:
        return f"{self.prefix}/bin/python"

    def run(self, host, *argv: str):
        """Run ``argv`` on ``host`` with a clean environment (conductor reads nothing but the file)."""
        return host.run("env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 " + shlex.join(argv))


def _inventory(host) -> dict[str, Any]:
    if getattr(host.backend, "NAME", "") != "ansible":
        return {}
    variables = dict(host.ansible.get_variables())
    # A templated value ("{{ ... }}") is the role's business: fall back to the host's file.
    return {k: v for k, v in variables.items() if not (isinstance(v, str) and "{{" in v)}


@pytest.fixture(scope="module")
def expected(host, request: pytest.FixtureRequest) -> Expected:
    option = request.config.getoption
    path = option("--conductor-config")
    config_file = host.file(path)
    if not config_file.exists:
        pytest.fail(f"{path} does not exist on {host.backend.get_pytest_id()}: conductor is not deployed there "
                    "(or pass --sudo to read it as root)")
    properties = parse_properties(config_file.content_string, path)
    inventory = _inventory(host)

    def pick(opt: str, var: str, key: str, default: Any = None) -> Any:
        if option(opt) is not None:
            return option(opt)
        if var in inventory:
            return inventory[var]
        return properties.get(key, default)

    node = option("--conductor-node-name") or inventory.get("conductor_node_name") \
        or inventory.get("inventory_hostname") or properties.get("NODE_NAME")
    mode = option("--conductor-mode") or inventory.get("conductor_mode")
    if mode is None:
        if host.file(f"{UNIT_DIR}/conductor-workers.target").exists:
            mode = "systemd"
        elif host.file(SUPERVISOR_CONF).exists:
            mode = "supervisord"
        else:
            pytest.fail("neither conductor-workers.target nor supervisord's conductor.conf is installed")
    return Expected(
        config=path,
        properties=properties,
        node=str(node),
        concurrency=int(pick("--conductor-concurrency", "conductor_worker_concurrency", "WORKER_CONCURRENCY", 1)),
        mode=str(mode),
        api=_flag(pick("--conductor-api", "conductor_api_enabled", "API_ENABLED", "false")),
        user=str(inventory.get("conductor_service_user") or properties.get("SERVICE_USER") or "conductor"),
        prefix=str(inventory.get("conductor_install_prefix") or properties.get("INSTALL_PREFIX") or "/opt/conductor"),
        job_root=str(inventory.get("conductor_job_root") or properties.get("JOB_ROOT") or "/var/lib/conductor/jobs"),
    )
