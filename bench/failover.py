"""Redis failover under a job stream: how long a SIGKILLed primary stops the cluster, and what it costs.

Each round starts the same Sentinel cluster the failover tests use (tests/support.py: a primary,
two replicas so that the new primary still has one to confirm submissions, three sentinels with
their ``down-after-milliseconds``), one node with workers connected through the sentinels, and a
client submitting short jobs steadily, each placed at once, as in
tests/integration/test_failover.py. Once jobs run, the primary is SIGKILLed, and from that moment:

- *promoted*: until the sentinels name the replica they promoted (polled every 50 ms);
- *workers back*: until every worker has written a heartbeat to the new primary (workers beat
  every ``HEARTBEAT_INTERVAL``, 0.5 s here, which bounds the figure's precision);
- *new job started*: until the first job *submitted after the kill* ran its first instruction
  (the script stamps itself with ``$EPOCHREALTIME``).

Before the stream starts, a trivial job's submission is timed from Python in alternation through
the sentinels (acknowledged only once ``WAIT 1`` says a replica holds it) and through a plain
connection to the same primary (no wait): the price of surviving the primary's death, paid on
every submission (the workers run those jobs meanwhile, as they would any).

Then the stream stops and every accepted job (an id ``jobs.submit`` returned) must end: *lost*
counts accepted ids the ledger does not hold or that did not end COMPLETED, *run twice* the jobs
whose script ran more than once. Sentinel itself waits ``down-after-milliseconds`` before it even
suspects the primary: that setting is the floor under every figure but the last two.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conductor import jobs, keys, placement
from conductor.config import load_settings
from conductor.jobs import JobState, JobSubmission
from conductor.store import UNREACHABLE, NotReplicated, connect

from .infra import BenchError
from .scenarios import percentile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Node, SentinelCluster, running, wait_until  # noqa: E402  (tests/ shares its real parts)

WORKERS = 2
SUBMIT_PER_SECOND = 10.0
SETTLE_SECONDS = 90.0  # how long the accepted jobs get to end after the stream stops


@dataclass(frozen=True)
class FailoverRound:
    promoted: float  # seconds from SIGKILL of the primary
    workers_back: float
    new_job_started: float
    accepted: int
    refused: int  # submissions refused (unreachable, or no replica confirmed) and retried
    lost: int
    twice: int
    down_after_ms: int  # Sentinel's: it waits this long before it even suspects the primary
    submit_waited: list[float]  # seconds per jobs.submit through the sentinels (WAIT 1)
    submit_plain: list[float]  # the same, alternating, on a plain connection to the same primary


@dataclass(frozen=True)
class Failover:
    rounds: list[FailoverRound]

    def median(self, field: str) -> float:
        return statistics.median(getattr(r, field) for r in self.rounds)

    def spread(self, field: str) -> tuple[float, float]:
        values = [getattr(r, field) for r in self.rounds]
        return min(values), max(values)


class Stream:
    """Submits a job every ``pause`` seconds and places it, retrying refused submissions, as a client
    would while Redis fails over; remembers when each id was accepted."""

    def __init__(self, config: Path, script: str, per_second: float) -> None:
        self.settings = load_settings(config)
        self.submission = JobSubmission.model_validate({"job": {"name": "failover"}, "script": script})
        self.pause = 1.0 / per_second
        self.accepted: list[tuple[int, float]] = []  # (job id, time.time() when submit returned)
        self.refused = 0
        self.unexpected: list[BaseException] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run_reporting, daemon=True)

    def _run_reporting(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the round instead of a silently dead thread
            self.unexpected.append(error)

    def _run(self) -> None:
        connection, raw = connect(self.settings), connect(self.settings, decode=False)
        while not self.stopped.wait(self.pause):
            try:
                job_id = jobs.submit(connection, self.submission)
            except (NotReplicated, *UNREACHABLE):
                self.refused += 1
                continue
            self.accepted.append((job_id, time.time()))
            try:
                placement.place(connection, raw)
            except UNREACHABLE:
                pass  # the workers' heartbeats place it once Redis answers again

    def start(self) -> Stream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)


def _starts(runs: Path) -> dict[int, list[float]]:
    """Job id -> the times its script started, from the lines each run appends."""
    found: dict[int, list[float]] = {}
    for line in runs.read_text().splitlines() if runs.exists() else []:
        job_id, at = line.split()
        found.setdefault(int(job_id), []).append(float(at))
    return found


def submit_cost(config: Path, url: str, samples: int) -> tuple[list[float], list[float]]:
    """Seconds per submission with WAIT 1 and without, alternating."""
    submission = JobSubmission.model_validate({"job": {"name": "wait-cost"}, "script": "#!/bin/bash\ntrue\n"})
    waited, plain = connect(load_settings(config)), connect(url)
    times: dict[int, list[float]] = {id(waited): [], id(plain): []}
    for _ in range(samples):
        for connection in (waited, plain):
            began = time.perf_counter()
            jobs.submit(connection, submission)
            times[id(connection)].append(time.perf_counter() - began)
    return times[id(waited)], times[id(plain)]


def one_round(directory: Path, submits: int) -> FailoverRound:
    """One cluster, one failover; see the module docstring for what each figure spans."""
    runs = directory / "runs"
    script = f'#!/bin/bash\necho "$SLURM_JOB_ID $EPOCHREALTIME" >> {runs}\nsleep 0.1\n'
    with running(SentinelCluster(directory / "redis").start()) as cluster:
        node = Node(directory, cluster.primary, WORKER_CONCURRENCY=WORKERS, HEARTBEAT_TTL=5,
                    REDIS_SENTINELS=cluster.addresses, REDIS_SENTINEL_MASTER=cluster.MASTER)
        with running(node):
            workers = node.start_workers(WORKERS)
            submit_waited, submit_plain = submit_cost(node.config, cluster.primary.url, submits)
            names = [load_settings(node.config).worker_name(w.index) for w in workers]
            with running(Stream(node.config, script, SUBMIT_PER_SECOND).start()) as stream:
                wait_until(lambda: len(_starts(runs)) >= 10 or stream.unexpected, timeout=60,
                           what="the stream to run jobs")
                killed_at = time.time()
                victim = cluster.kill_primary()
                wait_until(lambda: cluster.primary_port() != victim.port, timeout=60, interval=0.05,
                           what="the sentinels to promote a replica")
                promoted = time.time() - killed_at
                primary = cluster.current().client()

                def beats() -> list[float] | None:
                    values = [primary.hget(keys.worker(name), "last_heartbeat") for name in names]
                    return values if all(v and float(v) > killed_at for v in values) else None  # type: ignore[arg-type]

                workers_back = max(float(v) for v in wait_until(beats, timeout=60, interval=0.05,
                                                                 what="every worker to beat on the new primary"))

                def new_start() -> float | None:
                    after = {job_id for job_id, at in stream.accepted if at > killed_at}
                    found = [min(times) for job_id, times in _starts(runs).items() if job_id in after]
                    return min(found) if found else None

                started = wait_until(new_start, timeout=60, interval=0.05,
                                     what="a job submitted after the kill to start")
                accepted_then = len(stream.accepted)
                wait_until(lambda: len(stream.accepted) >= accepted_then + 10 or stream.unexpected, timeout=60,
                           what="submissions to flow again")
            if stream.unexpected:
                raise BenchError(f"the submitting client failed during the failover: {stream.unexpected[0]!r}")
            ids = [job_id for job_id, _ in stream.accepted]
            connection = connect(load_settings(node.config))

            def unfinished() -> list[int]:
                states = [connection.hget(keys.job(i), "state") for i in ids]
                return [i for i, s in zip(ids, states) if s is None or not JobState(s).final]

            deadline = time.monotonic() + SETTLE_SECONDS
            while unfinished() and time.monotonic() < deadline:
                time.sleep(0.1)
            views = [jobs.get(connection, i) for i in ids]
            lost = sum(1 for v in views if v is None or v["state"] != "COMPLETED")
            twice = sum(1 for times in _starts(runs).values() if len(times) > 1)
    return FailoverRound(promoted, workers_back - killed_at, started - killed_at, len(ids), stream.refused,
                         lost, twice, cluster.down_after_ms, submit_waited, submit_plain)


def measure(directory: Path, rounds: int, submits: int, say: Callable[[str], None]) -> Failover:
    found = []
    for i in range(rounds):
        found.append(one_round(directory / f"round-{i}", submits))
        r = found[-1]
        say(f"failover round {i + 1}: promoted {r.promoted:.2f} s, workers back {r.workers_back:.2f} s, "
            f"new job started {r.new_job_started:.2f} s; {r.accepted} accepted, {r.lost} lost, {r.twice} run twice")
    return Failover(found)


def table(found: Failover) -> str:
    def cell(field: str) -> str:
        low, high = found.spread(field)
        spread = f" ({low:.2f}-{high:.2f})" if len(found.rounds) > 1 else ""
        return f"{found.median(field):.2f} s{spread}"

    total = sum(r.accepted for r in found.rounds)
    waited = [t for r in found.rounds for t in r.submit_waited]
    plain = [t for r in found.rounds for t in r.submit_plain]

    def ms(values: list[float]) -> str:
        return f"{1000 * percentile(values, 0.5):.2f} / {1000 * percentile(values, 0.99):.2f} ms"

    return "\n".join([
        "| SIGKILL of the primary -> | seconds, median (range) |",
        "|---|---|",
        f"| sentinels promote the replica | {cell('promoted')} |",
        f"| every worker beats on the new primary | {cell('workers_back')} |",
        f"| a job submitted after the kill starts | {cell('new_job_started')} |",
        "",
        "| `jobs.submit` from Python, p50 / p99 | without WAIT | with WAIT 1 (sentinels) |",
        "|---|---|---|",
        f"| {len(waited)} each, alternating, same primary | {ms(plain)} | {ms(waited)} |",
        "",
        f"{len(found.rounds)} round(s), down-after-milliseconds {found.rounds[0].down_after_ms}; "
        f"{total} jobs accepted, {sum(r.refused for r in found.rounds)} submissions refused and retried; "
        f"**jobs lost: {sum(r.lost for r in found.rounds)}, run twice: {sum(r.twice for r in found.rounds)}**.",
    ])
