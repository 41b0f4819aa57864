"""A deployed conductor node is what its configuration says: see conftest.py for how to run these.

Each test looks at the host as an operator would (files, users, systemctl or supervisorctl, ps,
Redis through the host's own conductor installation) and says what is wrong in its message.
"""

from __future__ import annotations

import json
import re

import pytest

WORKER_UNIT = re.compile(r"^conductor-worker@(\d+)\.service$")
WORKER_PROGRAM = re.compile(r"^conductor-worker-(\d+)$")

# Run on the host by its conductor's Python (which has the redis client): the node's
# worker:<NODE>-<i> records, read with the node's own REDIS_URL (TLS, password) from its app.properties.
READ_RECORDS = r"""
import json, re, sys
from redis import Redis
values = {}
for raw in open(sys.argv[1], encoding="utf-8"):
    line = re.split(r"\s#", raw, maxsplit=1)[0].strip()
    if line and not line.startswith("#") and "=" in line:
        key, _, value = line.partition("=")
        values[key.strip().upper()] = value.strip()
node = values["NODE_NAME"]
redis = Redis.from_url(values.get("REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True, socket_timeout=10)
records = {}
for key in redis.scan_iter(match=f"worker:{node}-*", count=1000):
    record = redis.hgetall(key)
    if record.get("node") == node:
        records[key] = record
print(json.dumps(records))
"""


def worker_processes(host, expected) -> list[dict]:
    """Every ``conductor worker --index N`` process of this installation: pid, user, index."""
    found = []
    for line in host.check_output("ps -eo pid=,user:32=,args=").splitlines():
        pid, user, args = line.strip().split(None, 2)
        argv = args.split()
        if expected.conductor in argv and "worker" in argv and "--index" in argv:
            position = argv.index("--index") + 1
            found.append({"pid": int(pid), "user": user, "index": int(argv[position]), "args": args})
    return found


def test_package_is_importable_in_the_virtual_environment(host, expected):
    result = expected.run(host, expected.python, "-c",
                          "import importlib.metadata as m, conductor.worker, conductor.render; print(m.version('conductor'))")
    assert result.rc == 0, f"conductor is not importable with {expected.python}: {result.stderr}"
    assert host.file(expected.conductor).is_file
    assert host.file(expected.conductor).mode & 0o111, f"{expected.conductor} is not executable"


def test_configuration_file_is_root_owned_and_not_world_readable(host, expected):
    config = host.file(expected.config)
    assert config.is_file
    assert config.user == "root"
    assert config.group == expected.user, f"{expected.config} should be readable by group {expected.user}"
    assert config.mode == 0o640, f"{expected.config} has mode {config.mode:o}, expected 640 (it may hold secrets)"
    directory = host.file(expected.config.rsplit("/", 1)[0])
    assert directory.user == "root" and not directory.mode & 0o002


def test_configuration_has_the_expected_values(host, expected):
    values = expected.properties
    assert values.get("NODE_NAME") == expected.node
    assert int(values.get("WORKER_CONCURRENCY", "1")) == expected.concurrency
    assert values.get("API_ENABLED", "false").lower() == str(expected.api).lower()
    assert values.get("SERVICE_USER", "conductor") != "root"
    result = expected.run(host, expected.conductor, "check", "--config", expected.config)
    assert result.rc == 0, f"conductor check rejects {expected.config}: {result.stderr}"


def test_service_user_is_a_system_user_without_login(host, expected):
    user = host.user(expected.user)
    assert user.exists, f"the service user {expected.user} does not exist"
    assert user.uid != 0 and user.name != "root"
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    job_root = host.file(expected.job_root)
    assert job_root.is_directory
    assert job_root.user == expected.user
    assert not job_root.mode & 0o007, f"JOB_ROOT {expected.job_root} is open to others ({job_root.mode:o})"


def test_systemd_units_are_enabled_and_active(host, expected):
    if expected.mode != "systemd":
        pytest.skip(f"mode is {expected.mode}")
    target = host.service("conductor-workers.target")
    assert target.is_enabled, "conductor-workers.target is not enabled (workers would not start at boot)"
    assert target.is_running, "conductor-workers.target is not active"
    wants = host.check_output("systemctl show -p Wants --value conductor-workers.target").split()
    assert sorted(u for u in wants if WORKER_UNIT.match(u)) == sorted(
        f"conductor-worker@{i}.service" for i in range(1, expected.concurrency + 1))
    for index in range(1, expected.concurrency + 1):
        unit = f"conductor-worker@{index}.service"
        state = host.check_output(f"systemctl show -p ActiveState --value {unit}")
        assert state == "active", f"{unit} is {state}: systemctl status {unit}"
    listed = host.check_output("systemctl list-units --all --plain --no-legend 'conductor-worker@*.service'")
    for line in listed.splitlines():
        name, _load, active, *_ = line.split()
        match = WORKER_UNIT.match(name)
        if match and int(match.group(1)) > expected.concurrency:
            assert active != "active", f"{name} runs above WORKER_CONCURRENCY={expected.concurrency}"
    enabled_above = host.run(f"find /etc/systemd/system -name 'conductor-worker@*.service' -type l").stdout.split()
    assert not [p for p in enabled_above if int(WORKER_UNIT.match(p.rsplit("/", 1)[1]).group(1)) > expected.concurrency]
    api = host.service("conductor-api.service")
    if expected.api:
        assert api.is_enabled and api.is_running, "API_ENABLED=true but conductor-api.service is not enabled and running"
    else:
        assert not api.is_running, "API_ENABLED=false but conductor-api.service runs"


def test_supervisord_programs_are_running(host, expected):
    if expected.mode != "supervisord":
        pytest.skip(f"mode is {expected.mode}")
    supervisor = host.service("supervisor")
    assert supervisor.is_enabled and supervisor.is_running, "supervisor.service is not enabled and running"
    status = host.run("supervisorctl status")
    assert status.rc in (0, 3), status.stderr
    states = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if line.strip()}
    workers = {name: state for name, state in states.items() if WORKER_PROGRAM.match(name)}
    assert workers == {f"conductor-worker-{i}": "RUNNING" for i in range(1, expected.concurrency + 1)}, status.stdout
    if expected.api:
        assert states.get("conductor-api") == "RUNNING", status.stdout
    else:
        assert "conductor-api" not in states, status.stdout


def test_exactly_worker_concurrency_worker_processes(host, expected):
    processes = worker_processes(host, expected)
    indices = sorted(p["index"] for p in processes)
    assert indices == list(range(1, expected.concurrency + 1)), (
        f"expected one worker process for each index 1..{expected.concurrency}, found {indices}:\n"
        + "\n".join(p["args"] for p in processes))


def test_no_worker_runs_as_root(host, expected):
    processes = worker_processes(host, expected)
    assert processes, "no worker process found"
    for process in processes:
        assert process["user"] == expected.user, f"worker {process['index']} runs as {process['user']}: {process['args']}"
    for line in host.check_output("ps -eo user:32=,args=").splitlines():
        user, args = line.strip().split(None, 1)
        if f"{expected.conductor} api" in args:
            assert user == expected.user, f"the API runs as {user}"


def test_every_worker_is_registered_in_redis_by_its_process(host, expected):
    result = expected.run(host, expected.python, "-c", READ_RECORDS, expected.config)
    assert result.rc == 0, f"cannot read the worker records through the host: {result.stderr}"
    records = json.loads(result.stdout)
    by_index = {int(record["index"]): record for record in records.values()}
    assert sorted(records) == sorted(f"worker:{expected.node}-{i}" for i in range(1, expected.concurrency + 1)), (
        f"worker records of node {expected.node}: {sorted(records)}")
    pids = {p["index"]: p["pid"] for p in worker_processes(host, expected)}
    for index, record in by_index.items():
        assert int(record["pid"]) == pids.get(index), (
            f"worker:{expected.node}-{index} was registered by pid {record['pid']}, "
            f"but worker {index} runs as pid {pids.get(index)}")


def test_conductor_verify_agrees(host, expected):
    """The node's own check, `conductor verify`, finds nothing wrong and sees the same worker processes."""
    result = expected.run(host, expected.conductor, "verify", "--json", "--mode", expected.mode,
                          "--config", expected.config, "--expect", str(expected.concurrency))
    assert result.rc == 0, f"conductor verify on the host: {result.stderr}"
    found = json.loads(result.stdout)
    assert found["ok"] and found["problems"] == []
    pids = {str(p["index"]): p["pid"] for p in worker_processes(host, expected)}
    assert found["workers"] == pids
