"""What the three RQ baselines share: submission with ``Queue.enqueue`` and RQ's own job records."""

from __future__ import annotations

from pathlib import Path

from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from ..infra import BIN, REPO
from ..system import System, rq_time
from .work import run_script

QUEUE = "bench"


class RqSystem(System):
    """A baseline fed the way a plain RQ user feeds workers: ``queue.enqueue(func, path)``."""

    queue_name = QUEUE

    def start(self) -> None:
        super().start()
        self.queue = Queue(self.queue_name, connection=self.raw)
        self.finished = FinishedJobRegistry(queue=self.queue)
        self.failed = FailedJobRegistry(queue=self.queue)

    def submit(self, script: Path) -> str:
        return str(self.queue.enqueue(run_script, str(script)).id)

    def cli_command(self, script: Path) -> list[str]:
        return [str(BIN / "rq"), "enqueue", "--url", self.redis.url, "--queue", self.queue_name, "--quiet",
                "bench.baselines.work.run_script", str(script)]

    def settled(self) -> int:
        return self.finished.get_job_count(cleanup=False) + self.failed.get_job_count(cleanup=False)

    def outcomes(self, ids: list[str]) -> list[tuple[bool, float | None]]:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(f"rq:job:{job_id}", "status", "ended_at")
            rows = pipe.execute()
        return [(status == "finished", rq_time(ended) if ended else None) for status, ended in rows]

    def program(self, name: str, command: list[str], numprocs: int = 1) -> str:
        """A supervisord program section as RQ's documentation writes it (TERM for a warm shutdown)."""
        lines = [f"[program:{name}]", f"command={' '.join(command)}", f"directory={REPO}",
                 "stopsignal=TERM", "autostart=true", "autorestart=true", "redirect_stderr=true"]
        if numprocs > 1:
            lines += ["process_name=%(program_name)s-%(process_num)s", f"numprocs={numprocs}"]
        return "\n".join(lines) + "\n"

    def write_programs(self, text: str) -> None:
        (self.supervisor.conf_d / f"{self.key}.conf").write_text(text)
