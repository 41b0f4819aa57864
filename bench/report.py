"""docs/BENCHMARKS.md and docs/bench.png, written from one run's results and nothing else."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

from . import read_paths
from . import cli_timing, failover
from .placement_cost import NODES, SLOTS
from .run import Results
from .scenarios import percentile

CONDUCTOR = "conductor"
THROUGHPUT_TARGET = 1.5  # x rq worker-pool at the same N
OVERSUBSCRIBED_TARGET = 0.9  # N=4 against N=2 on a 2-core machine: more workers than cores must not cost much
MAKESPAN_TARGET = 1.05  # actual / ideal
P50_TARGET, P99_TARGET = 0.010, 0.050  # seconds
PLACEMENT_GROWTH_LIMIT = 2.0  # cost at the largest backlog / cost at the smallest
REDIS_COMMANDS_TARGET = 40  # Redis commands per trivial job, end to end
REDIS_CPU_TARGET = 0.5  # x rq worker-pool's Redis CPU per job
CLUSTER_FLAT_LIMIT = 1.25  # Redis CPU per job at the largest cluster / at one node
BREAKDOWN_ROWS = 20
CLI_TARGET = 0.5  # `conductor submit` (and jobs/show/nodes) / `rq enqueue`, start to exit
CONTAINMENT_TARGET = 0.10  # throughput lost to job containment (1 - on / off)


@dataclass(frozen=True)
class Row:
    """One figure for every system; ``higher`` says which direction is better."""

    figure: str
    values: dict[str, float | None]
    show: Callable[[float], str]
    higher: bool = False
    target: str = ""


def _ms(value: float) -> str:
    return f"{1000 * value:.1f} ms"


def _advantage(row: Row, baseline: str) -> str:
    """How many times better conductor is than ``baseline`` on this row (>1: conductor better)."""
    mine, theirs = row.values.get(CONDUCTOR), row.values.get(baseline)
    if mine is None or theirs is None or mine <= 0 or theirs <= 0:
        return "—"
    return f"{(mine / theirs if row.higher else theirs / mine):.2f}x"


def rows(results: Results) -> list[Row]:
    """The main table: throughput, makespan, latency, CPU, memory, restart."""
    systems = results.systems
    found: list[Row] = []
    for n in results.size.worker_counts:
        found.append(Row(f"throughput, {results.size.throughput_jobs} x `true`, N={n} (jobs/s)",
                         {k: s.throughput[n].rate for k, s in systems.items() if n in s.throughput},
                         lambda v: f"{v:.0f}", higher=True, target=f">= {THROUGHPUT_TARGET}x rq worker-pool"))
    size = results.size
    found.append(Row(f"makespan, {size.makespan_jobs} x `sleep {size.makespan_sleep:g}`, N={size.detail_workers} "
                     "(actual / ideal)",
                     {k: s.makespan.ratio for k, s in systems.items() if s.makespan},
                     lambda v: f"{v:.3f}", target=f"<= {MAKESPAN_TARGET}"))
    for path, title in (("python", "Python API"), ("cli", "command line"), ("http", "HTTP")):
        samples = {k: s.latency[path] for k, s in systems.items() if s.latency.get(path)}
        if not samples:
            continue
        for q, name, goal in ((0.5, "p50", P50_TARGET), (0.99, "p99", P99_TARGET)):
            target = f"< {1000 * goal:.0f} ms" if path != "cli" else ""
            count = max(len(v) for v in samples.values())
            found.append(Row(f"latency submit -> first instruction, {title}, {name} ({count} jobs)",
                             {k: percentile(v, q) for k, v in samples.items()}, _ms, target=target))
    found += cpu_rows(results)
    found.append(Row(f"memory: PSS per idle worker, N={size.detail_workers} (pool/parent included)",
                     {k: s.pss for k, s in systems.items() if s.pss}, lambda v: f"{v / (1 << 20):.1f} MiB"))
    found.append(Row(f"SIGKILL of a worker -> replacement registered (median of {size.restarts})",
                     {k: statistics.median(r.registered for r in s.restart) for k, s in systems.items() if s.restart},
                     _ms))
    found.append(Row("... of which until the replacement process started (supervisor's or parent's reaction)",
                     {k: statistics.median(r.spawned for r in s.restart) for k, s in systems.items() if s.restart},
                     _ms))
    return found


def cpu_rows(results: Results) -> list[Row]:
    """CPU per trivial job at the detail N: the total (workers, their children and Redis), then where it went."""
    n = results.size.detail_workers
    runs = {k: s.throughput[n] for k, s in results.systems.items() if n in s.throughput}
    parts = (
        ("CPU per trivial job: workers + their children + redis-server", lambda t: t.cpu_total),
        ("... worker-side processes themselves", lambda t: t.cpu_own),
        ("... children they reaped (bash jobs; RQ work-horses)", lambda t: t.cpu_children),
        ("... redis-server", lambda t: t.cpu_redis),
        ("... the submitting client (not in the total)", lambda t: t.cpu_client),
    )
    return [Row(f"{title}, N={n}", {k: part(t) / t.jobs for k, t in runs.items()}, _ms)
            for title, part in parts]


def _cell(row: Row, key: str) -> str:
    value = row.values.get(key)
    return "—" if value is None else row.show(value)


def table(results: Results) -> str:
    keys = list(results.systems)
    baselines = keys[1:]
    header = ["figure", "target", *(results.systems[k].label for k in keys),
              *(f"conductor vs {results.systems[k].label}" for k in baselines)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(results):
        cells = [row.figure, row.target] + [_cell(row, k) for k in keys]
        cells += [_advantage(row, k) for k in baselines]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_job(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def redis_table(results: Results) -> str:
    """Per system at the same N, each on a fresh Redis: commands, Redis CPU and the implied ceiling."""
    costs = {k: s.redis_cost for k, s in results.systems.items() if s.redis_cost}
    pool = costs.get("rq-worker-pool")
    lines = ["| system | jobs | commands per job | Redis CPU per job | ceiling: jobs/s per Redis core "
             "| Redis CPU vs rq worker-pool | failures |", "|---|---|---|---|---|---|---|"]
    for key, cost in costs.items():
        ratio = f"{cost.cpu_per_job / pool.cpu_per_job:.2f}x" if pool and pool.redis_cpu > 0 else "—"
        lines.append(f"| {results.systems[key].label} | {cost.jobs} | {cost.commands_per_job:.1f} "
                     f"| {1e6 * cost.cpu_per_job:.0f} µs | {_per_job(cost.ceiling, 0)} | {ratio} | {cost.failures} |")
    return "\n".join(lines)


def cluster_table(results: Results) -> str:
    per_node = results.size.cluster_workers_per_node
    lines = ["| nodes | workers | jobs | commands per job | Redis CPU per job | ceiling: jobs/s per Redis core "
             "| jobs/s | failures |", "|---|---|---|---|---|---|---|---|"]
    for nodes, cost in results.cluster:
        lines.append(f"| {nodes} | {nodes * per_node} | {cost.jobs} | {cost.commands_per_job:.1f} "
                     f"| {1e6 * cost.cpu_per_job:.0f} µs | {_per_job(cost.ceiling, 0)} "
                     f"| {cost.jobs / cost.seconds:.0f} | {cost.failures} |")
    return "\n".join(lines)


def breakdown_table(results: Results) -> str:
    """Which commands a job costs: calls and time inside each command per job, conductor's largest first."""
    costs = {k: s.redis_cost for k, s in results.systems.items() if s.redis_cost}
    mine = costs.get(CONDUCTOR)
    if mine is None:
        return "(not measured)"
    names = sorted(set().union(*(cost.calls for cost in costs.values())),
                   key=lambda name: (-mine.calls.get(name, 0), name))
    labels = [results.systems[k].label for k in costs]
    header = "| command | " + " | ".join(f"{label}: calls | {label}: µs" for label in labels) + " |"
    lines = [header, "|---|" + "---|---|" * len(costs)]
    for name in names[:BREAKDOWN_ROWS]:
        cells = [f"{cost.calls.get(name, 0) / cost.jobs:.2f} | {cost.usec.get(name, 0) / cost.jobs:.1f}"
                 for cost in costs.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rest = names[BREAKDOWN_ROWS:]
    if rest:
        cells = [f"{sum(cost.calls.get(n, 0) for n in rest) / cost.jobs:.2f} | "
                 f"{sum(cost.usec.get(n, 0) for n in rest) / cost.jobs:.1f}" for cost in costs.values()]
        lines.append(f"| {len(rest)} others | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def placement_table(results: Results) -> str:
    header = (f"| PENDING backlog | fill every free slot ({NODES * SLOTS} jobs): µs per job | of which Lua in Redis "
              "| one slot freed, one job placed: µs | of which Lua in Redis "
              "| one small job behind a backlog that fits no node: µs | of which Lua in Redis "
              "| submit of a 10,000-task array: ms |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for cost in results.placement:
        lines.append(f"| {cost.backlog:,} | {cost.full_us:.0f} | {cost.full_lua_us:.0f} | {cost.single_us:.0f} "
                     f"| {cost.single_lua_us:.0f} | {cost.behind_us:.0f} | {cost.behind_lua_us:.0f} | {cost.array_submit_ms:.1f} |")
    return "\n".join(lines)


def _verdict(ok: bool, detail: str) -> str:
    return f"**{'met' if ok else 'missed'}**: {detail}"


def targets(results: Results) -> list[str]:
    """Each target, met or missed, and by how much."""
    systems = results.systems
    mine, pool = systems[CONDUCTOR], systems.get("rq-worker-pool")
    found = []
    for n in results.size.worker_counts:
        if pool and n in pool.throughput and n in mine.throughput:
            ratio = mine.throughput[n].rate / pool.throughput[n].rate
            found.append(f"Throughput N={n} >= {THROUGHPUT_TARGET}x rq worker-pool: " + _verdict(
                ratio >= THROUGHPUT_TARGET, f"{ratio:.2f}x" + (
                    "" if ratio >= THROUGHPUT_TARGET else f", {100 * (1 - ratio / THROUGHPUT_TARGET):.0f}% short")))
    if 2 in mine.throughput and 4 in mine.throughput:
        ratio = mine.throughput[4].rate / mine.throughput[2].rate
        found.append(f"Throughput N=4 >= {OVERSUBSCRIBED_TARGET}x N=2 (more workers than cores here): " + _verdict(
            ratio >= OVERSUBSCRIBED_TARGET, f"{ratio:.2f}x ({mine.throughput[4].rate:.0f} against "
                                            f"{mine.throughput[2].rate:.0f} jobs/s)"))
    if mine.makespan:
        ratio = mine.makespan.ratio
        found.append(f"Makespan within {100 * (MAKESPAN_TARGET - 1):.0f}% of ideal: " + _verdict(
            ratio <= MAKESPAN_TARGET, f"{mine.makespan.seconds:.2f} s for an ideal {mine.makespan.ideal:g} s "
                                      f"({100 * (ratio - 1):+.1f}%)"))
    for path in ("python", "http"):
        samples = mine.latency.get(path)
        if samples:
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            found.append(f"Latency ({path}) p50 < {1000 * P50_TARGET:.0f} ms and p99 < {1000 * P99_TARGET:.0f} ms: "
                         + _verdict(p50 < P50_TARGET and p99 < P99_TARGET,
                                    f"p50 {_ms(p50)}, p99 {_ms(p99)}"))
    found += placement_targets(results)
    found += redis_targets(results)
    if results.reads is not None:
        found += read_paths.targets(results.reads)
    found += cli_targets(results)
    if results.containment is not None:
        cost = results.containment
        found.append(f"Job containment at most {100 * CONTAINMENT_TARGET:.0f}% slower than none: " + _verdict(
            cost.slowdown <= CONTAINMENT_TARGET, f"{100 * cost.slowdown:.1f}% ({cost.on.rate:.0f} against "
                                                 f"{cost.off.rate:.0f} jobs/s)"))
    return found


def redis_targets(results: Results) -> list[str]:
    mine = results.systems[CONDUCTOR].redis_cost
    pool = results.systems["rq-worker-pool"].redis_cost if "rq-worker-pool" in results.systems else None
    found = []
    if mine is not None:
        found.append(f"Redis commands per job <= {REDIS_COMMANDS_TARGET}: " + _verdict(
            mine.commands_per_job <= REDIS_COMMANDS_TARGET, f"{mine.commands_per_job:.1f}" + (
                "" if mine.commands_per_job <= REDIS_COMMANDS_TARGET
                else f", {mine.commands_per_job / REDIS_COMMANDS_TARGET:.2f}x the target")))
    if mine is not None and pool is not None and pool.redis_cpu > 0:
        ratio = mine.cpu_per_job / pool.cpu_per_job
        found.append(f"Redis CPU per job <= {REDIS_CPU_TARGET}x rq worker-pool's: " + _verdict(
            ratio <= REDIS_CPU_TARGET, f"{ratio:.2f}x ({1e6 * mine.cpu_per_job:.0f} µs against "
                                       f"{1e6 * pool.cpu_per_job:.0f} µs; ceiling {_per_job(mine.ceiling, 0)} "
                                       "jobs/s per Redis core)"))
    if len(results.cluster) >= 2 and results.cluster[0][1].redis_cpu > 0:
        (first, small), (last, large) = results.cluster[0], results.cluster[-1]
        growth = large.cpu_per_job / small.cpu_per_job
        found.append(f"Redis CPU per job flat from {first} to {last} nodes (<= {CLUSTER_FLAT_LIMIT}x): " + _verdict(
            growth <= CLUSTER_FLAT_LIMIT, f"{growth:.2f}x ({1e6 * small.cpu_per_job:.0f} -> "
                                          f"{1e6 * large.cpu_per_job:.0f} µs; commands "
                                          f"{small.commands_per_job:.1f} -> {large.commands_per_job:.1f})"))
    return found


def cli_targets(results: Results) -> list[str]:
    """Each conductor command against `rq enqueue` timed in the same turns."""
    anchor = results.cli.get("rq enqueue")
    if anchor is None:
        return []
    found = []
    for name, timing in results.cli.items():
        if name == "rq enqueue" or name.startswith("floor"):
            continue
        ratio = timing.wall_median / anchor.wall_median
        found.append(f"`{name}` <= {CLI_TARGET}x `rq enqueue`, start to exit: " + _verdict(
            ratio <= CLI_TARGET, f"{ratio:.2f}x ({_ms(timing.wall_median)} vs {_ms(anchor.wall_median)}, "
                                 f"CPU {_ms(timing.cpu_median)} vs {_ms(anchor.cpu_median)})"))
    return found


def placement_targets(results: Results) -> list[str]:
    if len(results.placement) < 2:
        return []
    first, last = results.placement[0], results.placement[-1]
    grew = last.backlog / first.backlog
    found = []
    for name, pick in (("filling passes", lambda c: c.full_us), ("one-slot passes", lambda c: c.single_us),
                       ("a small job behind jobs that fit no node", lambda c: c.behind_us)):
        growth = pick(last) / pick(first)
        found.append(f"Placement cost per job not growing linearly with the backlog ({name}): " + _verdict(
            growth <= PLACEMENT_GROWTH_LIMIT,
            f"{growth:.2f}x from {first.backlog:,} to {last.backlog:,} PENDING jobs ({grew:.0f}x the backlog)"))
    return found


METHOD = """\
Every system runs on this machine, in this run, under its own private `redis-server`
(`--save '' --appendonly no`, a free port) and its own private supervisord, and is started fresh
for each N:

- **conductor**: `conductor render supervisord` from an app.properties with `TOTAL_CPUS=32`
  (so N one-CPU jobs fit at once on any host), `LOG_LEVEL=WARNING`, default heartbeats and,
  when running as root, `ALLOW_ROOT_JOBS=true`. Jobs go through the real path: `jobs.submit`
  then `placement.place` (what `conductor submit` does), a worker claims it, the runner writes
  the script into the job directory and runs `bash script.sh` in its own process group, and
  `finish.lua` records the final state. A job counts as done at `ended_at` of conductor's record.
- **seed parent (multiprocessing)**: `bench/baselines/seed_parent.py`, the seed's design as
  SEED.md describes it: one Python parent forking N children with multiprocessing, each
  registering and heart-beating `worker:<NODE>-<i>` and running RQ's default forking `Worker`
  (no scheduler); crashed children are restarted. The seed's resource bookkeeping per job is
  not modelled, which can only flatter this baseline.
- **rq worker-pool**: `rq worker-pool -n N` as one supervisord program.
- **N x rq worker**: RQ's documented supervisord recipe, one program with `numprocs=N`.

The baselines are fed with `Queue.enqueue(run_script, path)` and run
`bench/baselines/work.py:run_script`, which runs `bash` on the same script file with
`subprocess`; a job counts as done at `ended_at` of RQ's job record (status `finished`).
All systems log at WARNING.

- **Throughput**: after a warm-up, one client submits all jobs back to back through the
  system's Python path; time from the first submit to the last final state (best of the runs).
- **Makespan**: the same, with `sleep` jobs, divided by the ideal ceil(jobs/N) x sleep.
- **Latency**: one job at a time onto idle workers, at most one per period; the script's first
  instruction writes bash's `$EPOCHREALTIME` (a clock read without a fork) to a file; latency is
  that time minus the time just before the submit call. The command-line path starts an
  interpreter per job (`conductor submit` vs `rq enqueue`) and is shown for information.
- **CPU per job**: utime+stime from `/proc/<pid>/stat` of the system's long-lived processes
  (conductor workers; the pool or parent and its workers; the rq workers), plus cutime+cstime
  of the children they reaped (every bash job, and RQ's forked work-horses), plus redis-server,
  read before and after the throughput run at the detail N. One `bash true.sh` alone costs
  {job_cpu}, part of every system's figure.
- **Memory**: PSS (`/proc/<pid>/smaps_rollup`) of those processes while idle, divided by N.
- **Restart**: SIGKILL one registered worker; time until a new process registers as an RQ
  worker (its `birth`). conductor and N x rq worker are restarted by supervisord, the pool and
  the seed parent restart their own children.
- **Redis cost per job**: at N={redis_workers}, after the throughput run, on the same fresh Redis:
  {redis_jobs} trivial jobs submitted back to back and drained, end to end (submit, placement,
  claim, run, finish, and what the workers do meanwhile). Commands are the difference of
  `INFO commandstats` before and after (commands a Lua script calls count, as Redis counts
  them), less the commands the benchmark itself sent while waiting for the jobs (its clients
  count what they send); Redis CPU is utime+stime of redis-server from `/proc/<pid>/stat`. The
  ceiling is 1 / Redis CPU per job: the job rate one Redis core could serve at that cost.
- **Cluster-shaped run**: for {cluster_nodes} nodes, a fresh Redis and supervisord with
  {cluster_per_node} conductor worker(s) per node, each node its own NODE_NAME and app.properties
  (rendered by `conductor render supervisord`), all on this machine; the same {redis_jobs}
  trivial jobs drained and measured as above.
- **Placement**: 50 fake nodes (conductor's `node_up` script, 4 worker slots each, 32 CPUs)
  and a backlog of PENDING one-CPU jobs stored with conductor's `submit` script; the real
  `placement.place` is timed, filling all 200 free slots, and in the steady state where one job
  ended and one is placed; the backlog is topped up after each pass. Then, on a fresh Redis, a
  backlog of the same size of 33-CPU jobs that fit no node, a 100,000-task array of them and
  10,000 jobs held by a dependency, and one 1-CPU job submitted behind it all and placed (the
  head-of-line case); then the submit of a 10,000-task array (`jobs.submit`, one round trip). Redis's SLOWLOG gives the Lua script's own time.
- **Read paths at cluster size**: tests/cluster_fixture.py writes a cluster into Redis with
  conductor's own functions and scripts (`node_up`, `registry.register` with a long TTL, `submit`,
  `record` for ended jobs, `placement.place` and `start` for running ones; one running job per
  two workers, pending jobs asking a whole node). A large cluster and a small anchor are read
  in alternation; see bench/read_paths.py.
- **Command line**: `conductor submit SCRIPT` and `rq enqueue` (storing one job and exiting), and
  `conductor jobs`, `show ID`, `nodes`, each a fresh process timed from its start to its exit
  (wall clock and the child's user + system CPU), in turns so that load from other processes
  falls on all alike, median of the turns. 16 nodes with 4 worker slots each hold 10,000
  COMPLETED jobs; each timed submit is placed at once (so it pays for the enqueue into RQ) and
  its job ended again before the next turn. Before anything is measured, conductor's modules are
  compiled to bytecode, as pip does when it installs a package (RQ's always are): without it,
  every conductor process of the run would compile them again where PYTHONDONTWRITEBYTECODE is set.
"""


def read_paths_section(results: Results) -> str:
    if results.reads is None:
        return ""
    reads = results.reads
    return f"""## Read paths at cluster size

{reads.large} (large, written into Redis in {reads.build_seconds:.0f} s) against {reads.small}
(small), each in its own redis-server with its own `conductor api`, measured in alternation.
`conductor workers` / `nodes` are the whole command, interpreter start-up included; the GETs are
one request each on a kept-alive connection. Redis commands and server time are of one read
(`INFO commandstats`).

{read_paths.table(reads)}

"""


def cli_section(results: Results) -> str:
    if not results.cli:
        return "Not measured in this run."
    count = len(next(iter(results.cli.values())).wall)
    return (f"Each command run {count} times, in turns, on 16 nodes holding {results.size.cli_stored:,} stored jobs "
            f"(bench/cli_timing.py):\n\n{cli_timing.table(results.cli)}")


def failover_section(results: Results) -> str:
    if results.failover is None:
        return "Not measured in this run."
    return (f"A primary, two replicas and three sentinels; {failover.WORKERS} workers and a client submitting "
            f"{failover.SUBMIT_PER_SECOND:g} jobs a second; the primary SIGKILLed (bench/failover.py). "
            "Sentinel's down-after-milliseconds is the floor: before it has passed nobody even suspects the primary.\n\n"
            f"{failover.table(results.failover)}")


def containment_section(results: Results) -> str:
    if results.containment is None:
        return "Not measured in this run (see the notes)."
    cost = results.containment
    return (f"conductor under supervisord, N={cost.workers}, the same trivial jobs with JOB_CONTAINMENT=off and with "
            "each job in cgroups of its own below a subtree prepared as `make run` prepares it; off and on "
            f"interleaved, best of each (bench/containment.py):\n\n{cost.table()}")


def markdown(results: Results) -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in results.machine.items())
    notes = "".join(f"- {note}\n" for note in results.notes) or "- none\n"
    return f"""# Benchmarks

Generated by `make bench` (`python -m bench`, size `{results.size.name}`) on {results.machine["date"]} in
{results.seconds:.0f} s. Do not edit: run it again. Ratios are "conductor's advantage": how many
times better conductor did than that baseline in the same run (above 1: conductor better).

![throughput and latency per system](bench.png)

## Results

{table(results)}

## Targets

{"".join(f"- {line}{chr(10)}" for line in targets(results))}
## Redis cost per job (N={results.size.redis_workers})

{redis_table(results)}

Cluster-shaped runs (conductor, {results.size.cluster_workers_per_node} worker(s) per node, one Redis):

{cluster_table(results)}

Where the commands go (per job; a Lua script's own calls count under their names, `evalsha`
is the script call itself and its time includes theirs):

{breakdown_table(results)}

## Placement cost as the backlog grows

{placement_table(results)}

{read_paths_section(results)}## Command line, start to exit

{cli_section(results)}

## Redis failover

{failover_section(results)}

## Job containment

{containment_section(results)}

## Machine

| | |
|---|---|
{machine}

## Method

{METHOD.format(job_cpu=_ms(results.job_cpu), redis_workers=results.size.redis_workers,
               redis_jobs=results.size.redis_jobs, cluster_per_node=results.size.cluster_workers_per_node,
               cluster_nodes=", ".join(map(str, results.size.cluster_nodes)))}
## Notes

{notes}"""


def plot(results: Results, path: Path) -> None:
    """Throughput, latency, makespan and placement cost in one figure."""
    keys = list(results.systems)
    labels = [results.systems[k].label.replace(" (multiprocessing)", "") for k in keys]
    colours = ["tab:green" if k == CONDUCTOR else "tab:gray" for k in keys]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    _throughput_axis(axes[0][0], results, keys, labels)
    _latency_axis(axes[0][1], results, keys, labels)
    _makespan_axis(axes[1][0], results, keys, labels, colours)
    _placement_axis(axes[1][1], results)
    figure.suptitle(f"conductor vs baselines — {results.machine['CPU']}, {results.machine['cores']}, "
                    f"{results.machine['date']}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput_axis(axis: plt.Axes, results: Results, keys: list[str], labels: list[str]) -> None:
    counts = results.size.worker_counts
    width = 0.8 / len(counts)
    for i, n in enumerate(counts):
        rates = [results.systems[k].throughput[n].rate if n in results.systems[k].throughput else 0 for k in keys]
        axis.bar([x + i * width for x in range(len(keys))], rates, width, label=f"N={n}")
    axis.set_xticks([x + width * (len(counts) - 1) / 2 for x in range(len(keys))], labels, fontsize=8)
    axis.set_ylabel("jobs/s (higher is better)")
    axis.set_title(f"throughput, {results.size.throughput_jobs} trivial jobs")
    axis.legend()


def _latency_axis(axis: plt.Axes, results: Results, keys: list[str], labels: list[str]) -> None:
    width = 0.4
    for i, (q, name) in enumerate(((0.5, "p50"), (0.99, "p99"))):
        values = [1000 * percentile(results.systems[k].latency["python"], q)
                  if results.systems[k].latency.get("python") else 0 for k in keys]
        axis.bar([x + i * width for x in range(len(keys))], values, width, label=name)
    axis.axhline(1000 * P50_TARGET, color="tab:blue", linestyle=":", linewidth=1, label="p50 target")
    axis.axhline(1000 * P99_TARGET, color="tab:orange", linestyle=":", linewidth=1, label="p99 target")
    axis.set_xticks([x + width / 2 for x in range(len(keys))], labels, fontsize=8)
    axis.set_ylabel("ms (lower is better)")
    axis.set_title("latency submit -> script's first instruction (Python API)")
    axis.legend(fontsize=8)


def _makespan_axis(axis: plt.Axes, results: Results, keys: list[str], labels: list[str],
                   colours: list[str]) -> None:
    spans = [results.systems[k].makespan for k in keys]
    values = [span.ratio if span else 0.0 for span in spans]
    axis.bar(range(len(keys)), values, color=colours)
    axis.axhline(MAKESPAN_TARGET, color="tab:red", linestyle=":", linewidth=1, label="target (ideal + 5%)")
    axis.set_ylim(0.9, max(values + [MAKESPAN_TARGET]) * 1.02)
    axis.set_xticks(range(len(keys)), labels, fontsize=8)
    axis.set_ylabel("actual / ideal (lower is better)")
    size = results.size
    axis.set_title(f"makespan, {size.makespan_jobs} x sleep {size.makespan_sleep:g}, N={size.detail_workers}")
    axis.legend(fontsize=8)


def _placement_axis(axis: plt.Axes, results: Results) -> None:
    backlogs = [c.backlog for c in results.placement]
    axis.plot(backlogs, [c.full_us for c in results.placement], "o-", label=f"fill {NODES * SLOTS} free slots (per job)")
    axis.plot(backlogs, [c.single_us for c in results.placement], "s-", label="one slot freed, one job placed")
    axis.set_xscale("log")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("PENDING backlog (jobs, 50 nodes)")
    axis.set_ylabel("µs per placed job")
    axis.set_title("conductor placement cost vs backlog")
    axis.legend(fontsize=8)


def write(results: Results, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    document, image = out / "BENCHMARKS.md", out / "bench.png"
    document.write_text(markdown(results))
    plot(results, image)
    return document, image
