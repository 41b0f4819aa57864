"""A soak under chaos: random jobs, workers SIGKILLed at random, one Redis restart.

`make test` runs it small; `make soak` runs 2,000 jobs (SOAK_JOBS). Afterwards every job is in
exactly one final state and the node's books balance.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from redis.exceptions import BusyLoadingError as RedisBusyLoading
from redis.exceptions import ConnectionError as RedisConnectionError

from conductor import keys
from conductor.jobs import JobState
from support import RedisServer, Supervisord, conductor, node_config, wait_until

FINAL = [s.value for s in JobState if s.final]


@pytest.mark.reliability("fault: soak, random SIGKILLs and a Redis restart", cases=int(os.environ.get("SOAK_JOBS", "60")))
def test_soak_every_job_final_and_books_balanced(tmp_path):
    count = int(os.environ.get("SOAK_JOBS", "60"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "7")))
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    supervisord = Supervisord(tmp_path / "supervisor")
    try:
        config = node_config(tmp_path, redis, TOTAL_CPUS=8, WORKER_CONCURRENCY=4, LOG_LEVEL="WARNING")
        conductor("render", "supervisord", "--out", str(supervisord.conf_d), config=config)
        supervisord.start()
        client = redis.client()
        wait_until(lambda: len(client.smembers(keys.node_workers("node-a"))) == 4, what="four workers")
        submitted = [_submit(config, rng) for _ in range(count)]
        restarted = False
        deadline = time.monotonic() + 120 + count * 0.5
        while not _all_final(client, submitted):
            assert time.monotonic() < deadline, f"jobs not final: {_unfinished(client, submitted)}"
            _chaos(client, rng)
            if not restarted and _final_count(client) >= count // 2:
                redis.stop()
                redis.start()
                restarted = True
            time.sleep(rng.uniform(0.2, 0.6))  # the pace of the chaos, not a synchronisation
        assert restarted
        _assert_books(client, submitted)
    finally:
        supervisord.stop()
        redis.stop()


def _submit(config, rng: random.Random) -> int:
    duration = rng.choice(["0", "0.05", "0.2", "0.5"])
    code = rng.choice([0, 0, 0, 1, 2])
    options = ["--cpus-per-task", str(rng.randint(1, 4)), "--mem", f"{rng.randint(0, 4)}G"]
    if rng.random() < 0.1:
        options += ["--time-limit", "0:01"]
        duration = "5"
    return int(conductor("submit", *options, "-", config=config,
                         input=f"#!/bin/bash\nsleep {duration}\nexit {code}\n").stdout)


def _chaos(client, rng: random.Random) -> None:
    if rng.random() < 0.3:
        pids = [int(p) for p in (client.hget(keys.worker(n), "pid") for n in client.smembers(keys.WORKERS)) if p]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _states(client, ids: list[int]) -> list[str | None]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job(job_id), "state")
        return pipe.execute()


def _all_final(client, ids: list[int]) -> bool:
    try:
        return all(state in FINAL for state in _states(client, ids))
    except (RedisConnectionError, RedisBusyLoading):  # Redis is restarting; ask again next round
        return False


def _final_count(client) -> int:
    return sum(client.zcard(keys.state(s)) for s in FINAL)


def _unfinished(client, ids: list[int]) -> list[tuple[int, str | None]]:
    return [(i, s) for i, s in zip(ids, _states(client, ids)) if s not in FINAL]


def _assert_books(client, ids: list[int]) -> None:
    states = _states(client, ids)
    assert all(s in FINAL for s in states)
    memberships = {s: set(map(int, client.zrange(keys.state(s), 0, -1))) for s in [x.value for x in JobState]}
    for job_id, state in zip(ids, states):
        assert [s for s, members in memberships.items() if job_id in members] == [state]
    ledger = client.hmget(keys.node("node-a"), "allocated_cpus", "allocated_memory")
    assert (int(ledger[0]), int(ledger[1])) == (0, 0)
    assert client.zcard(keys.node_free_cpus("node-a")) == 8
    assert client.scard(keys.node_running("node-a")) == 0
