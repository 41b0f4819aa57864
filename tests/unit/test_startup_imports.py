"""What a worker process and the job commands load at start.

Every module a worker imports costs each worker its memory for as long as it runs and delays its
start after a crash; every module a command imports delays the user at the shell. So a worker
loads neither the HTTP API nor the renderer's templates, the job commands do not load the
worker's loop, a submission does not load the logger, job containment or the renderer's
templates, and the commands that only read (jobs, show, nodes) do not load RQ either. Each check
runs in a fresh interpreter, the way the process starts; the commands run for real, against a
real Redis, so that what they import on the way (inside their own code) is counted too.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conductor import keys, scripts
from conductor.startup import loading
from conductor.store import connect


def loaded(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``modules``."""
    code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    return set(json.loads(done.stdout))


def test_a_worker_loads_neither_the_api_nor_the_renderer():
    found = loaded("conductor.cli", "conductor.worker", "conductor.config")
    assert "conductor.worker" in found
    unwanted = {"fastapi", "starlette", "uvicorn", "prometheus_client", "jinja2",
                "conductor.converge", "conductor.metrics"}
    assert not unwanted & found, sorted(unwanted & found)


@pytest.mark.parametrize("needed", [("conductor.cli",), ("conductor.cli", "conductor.placement", "conductor.partitions")])
def test_the_job_commands_do_not_load_the_worker_loop(needed):
    found = loaded(*needed)
    unwanted = {"conductor.worker", "conductor.registry", "conductor.runner", "conductor.retention"}
    assert not unwanted & found, sorted(unwanted & found)


def test_reading_the_configuration_does_not_load_the_redis_client():
    found = loaded("conductor.config", "conductor.render")
    assert not {"redis", "rq"} & found, sorted({"redis", "rq"} & found)


def loaded_by_command(*args: str) -> tuple[str, set[str]]:
    """(what ``conductor ARGS`` printed, the modules its process held when it was done)."""
    code = ("import json, sys\nfrom conductor.cli import main\n"
            f"try:\n    main({list(args)!r})\n"
            "finally:\n    print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.fixture
def cluster(tmp_path: Path, redis_server) -> Path:  # type: ignore[no-untyped-def]
    """A configuration naming a real Redis that holds one node with free worker slots."""
    connection = connect(redis_server.url)
    scripts.run(connection, "node_up", "node-a", 4, 8 << 30)
    connection.sadd(keys.node_workers("node-a"), "node-a-1", "node-a-2")
    config = tmp_path / "app.properties"
    config.write_text(f"NODE_NAME=node-a\nTOTAL_CPUS=4\nTOTAL_MEMORY=8G\nREDIS_URL={redis_server.url}\n"
                      f"JOB_ROOT={tmp_path / 'jobs'}\n")
    (tmp_path / "job.sh").write_text("#!/bin/bash\ntrue\n")
    return config


SUBMIT_NEVER_LOADS = {"jinja2", "fastapi", "starlette", "uvicorn", "prometheus_client", "loguru",
                      "conductor.converge", "conductor.cgroups", "conductor.procs",
                      "conductor.accounting", "conductor.metrics", "conductor.worker", "conductor.registry",
                      "conductor.runner", "conductor.logs"}


def test_a_submission_places_its_job_without_the_logger_containment_or_templates(cluster: Path):
    printed, found = loaded_by_command("submit", "--config", str(cluster), str(cluster.parent / "job.sh"))
    job_id = printed.strip()
    assert connect(cluster.read_text().split("REDIS_URL=")[1].split()[0]).lrange(
        f"rq:queue:{keys.queue_name('node-a')}", 0, -1) == [f"conductor-{job_id}"]  # placed and queued
    assert {"conductor.placement", "rq"} <= found
    assert not SUBMIT_NEVER_LOADS & found, sorted(SUBMIT_NEVER_LOADS & found)


@pytest.mark.parametrize("command", [["jobs"], ["show", "1"], ["nodes"]])
def test_the_reading_commands_do_not_load_rq(cluster: Path, command: list[str]):
    loaded_by_command("submit", "--config", str(cluster), str(cluster.parent / "job.sh"))
    printed, found = loaded_by_command(*command, "--config", str(cluster))
    assert "node-a" in printed
    unwanted = SUBMIT_NEVER_LOADS | {"rq", "conductor.placement"}
    assert not unwanted & found, sorted(unwanted & found)


def test_listing_workers_does_not_load_rq(cluster: Path):
    printed, found = loaded_by_command("workers", "--config", str(cluster))
    assert printed.startswith("NAME")
    assert not {"rq", "conductor.placement", "jinja2", "fastapi"} & found


def test_loading_pauses_the_collector_and_restores_it_even_on_an_error():
    assert gc.isenabled()
    with pytest.raises(ImportError):
        with loading():
            assert not gc.isenabled()
            import conductor.no_such_module  # noqa: F401
    assert gc.isenabled()
    gc.disable()
    try:
        with loading():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()
