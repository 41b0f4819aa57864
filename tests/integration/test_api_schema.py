"""The OpenAPI document of a live `conductor api`, and a schemathesis run against it.

The server is real (a `conductor api` process on a free port, a real redis-server). The node is
declared in Redis but runs no workers, so the generated jobs are accepted and stay PENDING:
schemathesis exercises every route without random text ever being run as a bash script.

schemathesis runs as its command line, as a user would run it against a live server (its pytest
loader, ``schemathesis.pytest.from_fixture``, fails under pytest 9.2: no ``Item._nodeid``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from conductor import resources
from conductor.config import Settings
from conductor.store import connect
from support import BIN, CONDUCTOR, RedisServer, clean_env, free_port, node_config, require, running, wait_until

TOKEN = "schema-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The one rule the document cannot state: a job larger than the largest node is refused (422,
# naming the field) although its body is valid. schemathesis' own advice for such a rule is to
# allow 422 for that one operation; everything else must be exactly as documented. Every check
# schemathesis has runs (its default), over all of its phases; examples are bounded per operation.
CONFIG = """
[generation]
max-examples = 40
database = "none"

[[operations]]
include-name = "POST /api/v1/jobs/submit"
checks.positive_data_acceptance.expected-statuses = ["2xx", "422"]
"""


class ApiProcess:
    """A real `conductor api --config F` process; its log is kept for failure messages."""

    def __init__(self, config: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.with_suffix(".api.log")
        with open(self.log, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([CONDUCTOR, "api", "--config", str(config)], env=clean_env(),
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, what=f"the API on {self.url}:\n{self.output()}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"conductor api exited {self.process.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    require("redis-server")
    directory = tmp_path_factory.mktemp("api-schema")
    port = free_port()
    with running(RedisServer(directory / "redis").start()) as redis:
        config = node_config(directory, redis, NODE_NAME="schema-node", TOTAL_CPUS=32, TOTAL_MEMORY="64G",
                             API_PORT=port, API_TOKEN=TOKEN)
        books = Settings(node_name="schema-node", total_cpus=32, total_memory=64 << 30)
        with closing(connect(redis.url)) as connection:
            resources.node_up(connection, books)  # room for jobs, and no worker to run them
        with running(ApiProcess(config, port)) as server:
            yield server


@pytest.mark.reliability("bad input: schemathesis against the OpenAPI document")
def test_schemathesis_finds_no_server_error_and_no_schema_violation(api: ApiProcess, tmp_path: Path) -> None:
    """The command a user would run against the live document, as a test: exit status 0 or the report."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [str(BIN / "schemathesis"), "--no-color", "--config-file", str(config), "run", f"{api.url}/openapi.json",
         "--workers", "1", "--header", f"Authorization: Bearer {TOKEN}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=clean_env(),
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    assert "Traceback" not in api.output(), api.output()


def test_document_describes_errors_and_the_token(api: ApiProcess) -> None:
    document = httpx.get(f"{api.url}/openapi.json", headers=AUTH).json()
    paths = document["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"201", "401", "422", "503"} <= statuses("/api/v1/jobs/submit", "post")
    assert {"200", "401", "404", "422", "503"} <= statuses("/api/v1/jobs/{job_id}", "get")
    assert {"200", "401", "404", "409", "503"} <= statuses("/api/v1/jobs/{job_id}/cancel", "post")
    assert {"200", "401", "404", "422"} <= statuses("/api/v1/jobs/{job_id}/output", "get")
    assert {"200", "401", "503"} <= statuses("/readyz", "get")
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in paths.items():
        for method, operation in operations.items():
            expected = [] if path == "/healthz" else [{"bearer": []}]
            assert operation.get("security", []) == expected, f"{method} {path}"
    memory = document["components"]["schemas"]["JobSpec"]["properties"]["memory_per_node"]
    assert {branch["type"] for branch in memory["anyOf"]} == {"integer", "string"}  # the seed sends "8G"


def test_document_shows_the_array_and_dependency_syntax(api: ApiProcess) -> None:
    """A new user reading /docs finds sbatch's --array and --dependency syntax, a sweep with a
    collector, and how a task is named in the paths."""
    document = httpx.get(f"{api.url}/openapi.json", headers=AUTH).json()
    spec = document["components"]["schemas"]["JobSpec"]["properties"]
    array = spec["array"]["description"]
    dependency = spec["dependency"]["description"]
    for text in ("0-15:4", "%N", "0-999%4", "MAX_ARRAY_SIZE"):
        assert text in array, text
    for text in ("afterok", "afternotok", "singleton", "'?'", "<array id>_<index>", "DependencyNeverSatisfied"):
        assert text in dependency, text
    submit = document["paths"]["/api/v1/jobs/submit"]["post"]["description"]
    assert '"array": "0-999%4"' in submit and '"dependency": "afterok:1"' in submit
    assert '"script": "#!/bin/bash\\npython3 simulate.py' in submit  # the JSON as it is sent
    job_id = document["paths"]["/api/v1/jobs/{job_id}/cancel"]["post"]["parameters"][0]
    assert job_id["schema"]["pattern"].startswith("^[1-9]") and "_" in job_id["description"]
