"""What a worker process and the job commands load at start.

Every module a worker imports costs each worker its memory for as long as it runs and delays its
start after a crash; every module a command imports delays the user at the shell. So a worker
loads neither the HTTP API nor the renderer's templates, and the job commands do not load the
worker's loop. Each check runs in a fresh interpreter, the way the process starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


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
