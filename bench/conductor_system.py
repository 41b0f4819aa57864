"""conductor itself, run through its real path: rendered supervisord programs, submit, placement.

Jobs go in as a user of the Python API sends them (``jobs.submit`` then ``placement.place``, what
``conductor submit`` does), through HTTP when ``conductor.api`` exists, or through the CLI. A job
counts as done when conductor's own job record reaches a final state.
"""

from __future__ import annotations

import getpass
import http.client
import importlib.util
import json
import os
import subprocess
from functools import cache
from pathlib import Path

from conductor import jobs, keys, placement
from conductor.jobs import JobSpec, JobState, JobSubmission

from .infra import BIN, BenchError, clean_env, free_port, wait_until
from .system import System

NODE = "bench-node"
TOTAL_CPUS = 32  # the seed's example node: room for N one-CPU jobs at once whatever the host has
FINAL_STATES = [keys.state(state) for state in JobState if state.final]


def has_api() -> bool:
    """Whether the HTTP API is installed (its dependencies are an optional extra)."""
    return importlib.util.find_spec("conductor.api") is not None


@cache
def script_text(script: Path) -> str:
    return script.read_text()


class ConductorSystem(System):
    key = "conductor"
    label = "conductor"

    def __init__(self, root: Path, workers: int) -> None:
        super().__init__(root, workers)
        self.config = root / "app.properties"
        self.api_port = free_port() if has_api() else None
        self.http: http.client.HTTPConnection | None = None
        self.api_problem = "" if has_api() else "conductor.api does not exist in this checkout yet"

    def properties(self) -> dict[str, object]:
        """The node's app.properties: quiet logs, private paths, root allowed only when we are root."""
        root_user = os.geteuid() == 0
        values: dict[str, object] = {
            "NODE_NAME": NODE, "TOTAL_CPUS": TOTAL_CPUS, "TOTAL_MEMORY": "64G",
            "WORKER_CONCURRENCY": self.workers, "REDIS_URL": self.redis.url, "LOG_LEVEL": "WARNING",
            "JOB_ROOT": self.root / "jobs", "INSTALL_PREFIX": BIN.parent, "WORKER_STOP_TIMEOUT": 15,
            "SERVICE_USER": "root" if root_user else getpass.getuser(),
            "ALLOW_ROOT_JOBS": "true" if root_user else "false",
        }
        if self.api_port is not None:
            values.update({"API_ENABLED": "true", "API_HOST": "127.0.0.1", "API_PORT": self.api_port})
        return values

    def configure(self) -> None:
        self.config.write_text("".join(f"{key}={value}\n" for key, value in self.properties().items()))
        self.render(self.config, self.supervisor.conf_d)

    @staticmethod
    def render(config: Path, out: Path) -> None:
        """``conductor render supervisord``: the node's programs exactly as an operator gets them."""
        subprocess.run([str(BIN / "conductor"), "render", "supervisord", "--config", str(config),
                        "--out", str(out)], check=True, capture_output=True, env=clean_env(), timeout=60)

    def start(self) -> None:
        super().start()
        if self.api_port is not None:
            try:
                wait_until(self._api_answers, 30, "conductor's HTTP API to answer", interval=0.05)
            except BenchError as error:
                self.api_problem = f"{error}; supervisord log: {self._api_log()}"
                return
            self.http = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)

    def _api_answers(self) -> bool:
        probe = http.client.HTTPConnection("127.0.0.1", self.api_port or 0, timeout=1)
        try:
            probe.request("GET", "/healthz")
            return probe.getresponse().status == 200
        except OSError:
            return False
        finally:
            probe.close()

    def _api_log(self) -> str:
        logs = sorted(self.supervisor.directory.glob("conductor-api*.log"))
        return logs[-1].read_text(errors="replace")[-500:] if logs else "(none)"

    def auxiliary(self, program: str) -> bool:
        return program == "conductor-api"

    def submit(self, script: Path) -> str:
        submission = JobSubmission(job=JobSpec(name=script.name), script=script_text(script))
        job_id = jobs.submit(self.connection, submission)
        placement.place(self.connection, self.raw, needs=submission.job.cpus)
        return str(job_id)

    def submit_http(self, script: Path) -> None:
        """POST the seed's request body to ``/api/v1/jobs/submit`` on a kept-alive connection."""
        if self.http is None:
            raise BenchError("conductor's HTTP API is not running")
        body = json.dumps({"job": {"name": script.name}, "script": script_text(script)})
        self.http.request("POST", "/api/v1/jobs/submit", body=body, headers={"Content-Type": "application/json"})
        response = self.http.getresponse()
        answer = response.read()
        if response.status >= 300:
            raise BenchError(f"POST /api/v1/jobs/submit answered {response.status}: {answer[:200]!r}")

    def cli_command(self, script: Path) -> list[str]:
        return [str(BIN / "conductor"), "submit", "--config", str(self.config), str(script)]

    def settled(self) -> int:
        with self.connection.pipeline(transaction=False) as pipe:
            for key in FINAL_STATES:
                pipe.zcard(key)
            return sum(pipe.execute())

    def outcomes(self, ids: list[str]) -> list[tuple[bool, float | None]]:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "state", "ended_at")
            rows = pipe.execute()
        return [(state == JobState.COMPLETED, float(ended) if ended else None) for state, ended in rows]

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        super().stop()
