"""Baseline: the seed's own design, a Python parent forking N RQ workers with multiprocessing.

Written from ../shared/SEED.md as its note describes it, so conductor is measured against the
design it replaces. The parent validates WORKER_CONCURRENCY, logs the "SCNS-Conductor Worker
Service" banner, warns when concurrency exceeds TOTAL_CPUS, runs one worker in-process when
concurrency is 1 and otherwise forks N children, forwards SIGTERM/SIGINT, waits 5 s and kills
stragglers, and (``--restart``) restarts crashed children. Each child runs the note's per-worker
routine: ping Redis, clean up a dead RQ worker of its name, register ``worker:<NODE>-<i>``,
heartbeat on a thread, run RQ's default (forking) ``Worker`` without a scheduler, unregister.

Run as ``python -m bench.baselines.seed_parent --redis-url URL --concurrency N ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

log = logging.getLogger("scns.worker")
HOST = socket.gethostname()
STOP_GRACE = 5.0  # the note: wait 5 s after forwarding the signal, then kill stragglers
VERSION = "seed"


@dataclass(frozen=True)
class Config:
    """The note's app.properties keys, given on the command line here."""

    redis_url: str
    node_name: str
    concurrency: int
    total_cpus: int
    queue: str
    burst: bool
    restart: bool
    heartbeat_interval: float
    heartbeat_ttl: float
    log_level: str


def parse(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--node-name", default=HOST)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--total-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--queue", default="default")
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--restart", action="store_true", help="restart crashed children")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--heartbeat-ttl", type=float, default=15.0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    return Config(args.redis_url, args.node_name, args.concurrency, args.total_cpus, args.queue, args.burst,
                  args.restart, args.heartbeat_interval, args.heartbeat_ttl, args.log_level.upper())


class Heartbeat(threading.Thread):
    """Refreshes ``worker:<NODE>-<i>`` (last heartbeat, state, current job) and its expiry."""

    def __init__(self, connection: Redis, key: str, worker: Worker, config: Config) -> None:
        super().__init__(name=f"heartbeat-{key}", daemon=True)
        self.connection, self.key, self.worker, self.config = connection, key, worker, config
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.config.heartbeat_interval):
            try:
                job = self.worker.get_current_job_id()
                self.connection.hset(self.key, mapping={
                    "last_heartbeat": f"{time.time():.6f}", "state": "busy" if job else "idle", "job": job or ""})
                self.connection.expire(self.key, int(self.config.heartbeat_ttl))
            except (RedisError, OSError) as error:  # keep beating through a Redis hiccup
                log.error("heartbeat failed: %s", error)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_up_stale(connection: Redis, name: str, config: Config) -> None:
    """Register the death of a previous RQ worker of this name that is dead or stale (the note's step)."""
    previous = Worker.find_by_key(Worker.redis_worker_namespace_prefix + f"worker-{name}", connection=connection)
    if previous is None or previous.death_date is not None:
        return
    beat = previous.last_heartbeat.timestamp() if previous.last_heartbeat else 0.0
    gone = previous.hostname == HOST and not pid_alive(previous.pid)
    if gone or time.time() - beat > config.heartbeat_ttl:
        log.warning("cleaning up stale RQ worker %s (pid %s)", previous.name, previous.pid)
        previous.register_death()


def register(connection: Redis, key: str, name: str, index: int, config: Config) -> None:
    now = f"{time.time():.6f}"
    connection.hset(key, mapping={
        "node": config.node_name, "index": index, "pid": os.getpid(), "host": HOST, "state": "idle", "job": "",
        "started_at": now, "last_heartbeat": now, "version": VERSION, "name": name})
    connection.expire(key, int(config.heartbeat_ttl))


def run_worker(config: Config, index: int) -> int:
    """The note's per-worker routine; returns the exit status."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # the parent's forwarding handlers must not apply here
    logging.basicConfig(level=config.log_level, format=f"%(asctime)s %(levelname)s [Worker-{index}] %(message)s",
                        force=True)
    connection = Redis.from_url(config.redis_url)
    try:
        connection.ping()
    except (RedisError, OSError) as error:
        log.error("Redis does not answer: %s", error)
        return 1
    name = f"{config.node_name}-{index}"
    key = f"worker:{name}"
    clean_up_stale(connection, name, config)
    register(connection, key, name, index, config)
    worker = Worker([Queue(config.queue, connection=connection)], name=f"worker-{name}", connection=connection)
    heartbeat = Heartbeat(connection, key, worker, config)
    heartbeat.start()
    log.info("worker %s registered (pid %d)", name, os.getpid())
    try:
        worker.work(burst=config.burst, logging_level=config.log_level, with_scheduler=False)
    finally:
        heartbeat.stopped.set()
        connection.delete(key)
        connection.close()
        log.info("worker %s stopped", name)
    return 0


def _child(config: Config, index: int) -> None:
    sys.exit(run_worker(config, index))


class Parent:
    """Forks the N children, restarts crashed ones on request, and stops them all on a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.context = get_context("fork")
        self.children: dict[int, BaseProcess] = {}
        self.stopping = False

    def spawn(self, index: int) -> None:
        child = self.context.Process(target=_child, args=(self.config, index), name=f"Worker-{index}")
        child.start()
        self.children[index] = child
        log.info("started worker %d (pid %s)", index, child.pid)

    def forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.pid and child.is_alive():
                os.kill(child.pid, signum)

    def run(self) -> int:
        for index in range(1, self.config.concurrency + 1):
            self.spawn(index)
        signal.signal(signal.SIGTERM, self.forward)
        signal.signal(signal.SIGINT, self.forward)
        while self.children and not self.stopping:
            wait([child.sentinel for child in self.children.values()], timeout=1.0)
            self.collect()
        self.shutdown()
        return 0

    def collect(self) -> None:
        """Notice children that died; restart them unless stopping (or not asked to)."""
        for index, child in list(self.children.items()):
            if child.is_alive():
                continue
            child.join()
            log.warning("worker %d (pid %s) exited with %s", index, child.pid, child.exitcode)
            del self.children[index]
            if self.config.restart and not self.stopping:
                self.spawn(index)

    def shutdown(self) -> None:
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children.values():
            child.join(max(deadline - time.monotonic(), 0))
        for child in self.children.values():
            if child.is_alive():
                log.warning("killing worker %s (pid %s): still running after %.0f s", child.name, child.pid,
                            STOP_GRACE)
                child.kill()
                child.join()


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s [parent] %(message)s")
    if config.concurrency < 1:
        log.error("WORKER_CONCURRENCY must be >= 1, got %d", config.concurrency)
        return 2
    log.info("SCNS-Conductor Worker Service: node %s, %d CPUs, concurrency %d", config.node_name,
             config.total_cpus, config.concurrency)
    if config.concurrency > config.total_cpus:
        log.warning("WORKER_CONCURRENCY=%d exceeds TOTAL_CPUS=%d", config.concurrency, config.total_cpus)
    if config.concurrency == 1:
        return run_worker(config, 1)
    return Parent(config).run()


if __name__ == "__main__":
    sys.exit(main())
