"""Every Redis key conductor uses, in one place.

``worker:<NODE>-<index>`` is the seed's own name for a worker record and stays as it is; RQ keeps
its ``rq:`` keys; everything else lives under ``conductor:``. The Lua scripts receive these names
from here so that no other spelling exists: every upper-case string constant of this module is
defined in each script under the same name (see :mod:`conductor.scripts`), and the prelude builds
its key names from those prefixes and suffixes only.
"""

PREFIX = "conductor:"

NEXT_JOB_ID = PREFIX + "next-job-id"
JOBS = PREFIX + "jobs"  # sorted set of every job id, score = id
NODES = PREFIX + "nodes"  # set of node names that ever registered
WORKERS = PREFIX + "workers"  # index of registered worker names: production code never calls KEYS
MAINTENANCE = PREFIX + "maintenance"  # short lease: one worker per heartbeat interval reaps and places
# Set of nodes an older release listed for placement to look at (before OPEN_NODES_BY_FREE_CPUS);
# written no more, emptied by the heartbeat's safety pass, which looks at every node.
OPEN_NODES = PREFIX + "open-nodes"
# Sorted set: the nodes that may take a job now (a free worker slot, not drained), scored by their
# free CPUs. A placement asks it for the node with the fewest free CPUs that fits (one range query)
# and checks that node before using it, so its cost does not grow with the cluster. Whatever adds
# room files the node (a job's end, a node declared or resumed, a worker registering); a placement
# drops the nodes it finds full or drained; the heartbeat's safety pass looks at every node and
# rebuilds it.
OPEN_NODES_BY_FREE_CPUS = PREFIX + "open-nodes-by-free-cpus"
# Hash: the most CPUs and memory any node offers (``cpus``, ``memory``), rewritten whenever a node
# declares its totals, so a submission is checked in one read whatever the number of nodes.
LARGEST_NODE = PREFIX + "largest-node"
PENDING_CLASSES = PREFIX + "pending-classes"  # set of "<cpus>:<memory>:<partition>" classes with placeable pending jobs
# Hash: Redis time of the last heartbeat from anyone, and until when nobody may reap. A silence
# longer than HEARTBEAT_TTL is an outage (Redis paused or restarted): records expired without their
# workers dying, so every worker gets a grace period to register again before anyone reaps.
LIVENESS = PREFIX + "liveness"

JOB_PREFIX = PREFIX + "job:"
STATE_PREFIX = PREFIX + "state:"
NODE_PREFIX = PREFIX + "node:"
PENDING_CLASS_PREFIX = PREFIX + "pending:"
ACTIVE_NAME_PREFIX = PREFIX + "active-name:"
ARRAY_PREFIX = PREFIX + "array:"
WORKER_PREFIX = "worker:"

# What follows a job's, node's or array's own key in the names of the keys that belong to it.
JOB_CONTROL_SUFFIX = ":control"
JOB_DEPENDENTS_SUFFIX = ":dependents"
NODE_FREE_CPUS_SUFFIX = ":free-cpus"
NODE_RUNNING_SUFFIX = ":running"
NODE_PROCESS_GROUPS_SUFFIX = ":process-groups"
NODE_WORKER_PROCESSES_SUFFIX = ":worker-processes"
NODE_WORKERS_SUFFIX = ":workers"
NODE_DRAIN_SUFFIX = ":drain"
NODE_CLEANUP_SUFFIX = ":cleanup"
NODE_REFUSED_RQ_JOBS_SUFFIX = ":refused-rq-jobs"
ARRAY_TEMPLATE_SUFFIX = ":template"
ARRAY_TASKS_SUFFIX = ":tasks"
ARRAY_SKIP_SUFFIX = ":skip"


def job(job_id: int | str) -> str:
    """Hash: the job's spec, state, placement and timestamps."""
    return f"{JOB_PREFIX}{job_id}"


def job_control(job_id: int | str) -> str:
    """List a running job's worker blocks on: 'exit' from the job's process, 'cancel' from users."""
    return f"{JOB_PREFIX}{job_id}{JOB_CONTROL_SUFFIX}"


def job_dependents(job_id: int | str) -> str:
    """Set of the ids of jobs whose ``--dependency`` names this job: re-evaluated in the same Lua
    transition as this job's start or end, so no crash in between can strand a dependent."""
    return f"{JOB_PREFIX}{job_id}{JOB_DEPENDENTS_SUFFIX}"


def active_by_name(account: str, name: str) -> str:
    """Sorted set (score = id) of the not yet ended jobs of one account and job name: what
    ``--dependency=singleton`` waits for. The account's length keeps the pair unambiguous."""
    return f"{ACTIVE_NAME_PREFIX}{len(account.encode())}:{account}:{name}"


def array(array_job_id: int | str) -> str:
    """Hash of a job array: its normalised spec, the cursor of the next task to materialise
    (``run``, ``next``), counters, and ``task:<index>`` -> job id of each materialised task.
    ``<key>:template`` holds the fields every task copies, ``<key>:tasks`` the ids of its tasks not
    yet ended, ``<key>:skip`` the indices cancelled before they were materialised."""
    return f"{ARRAY_PREFIX}{array_job_id}"


def array_template(array_job_id: int | str) -> str:
    """Hash: the fields every task of the array copies into its own record."""
    return f"{array(array_job_id)}{ARRAY_TEMPLATE_SUFFIX}"


def array_tasks(array_job_id: int | str) -> str:
    """Sorted set (score = id) of the array's materialised tasks not yet ended."""
    return f"{array(array_job_id)}{ARRAY_TASKS_SUFFIX}"


def array_skip(array_job_id: int | str) -> str:
    """Set of the array's indices cancelled before they were materialised."""
    return f"{array(array_job_id)}{ARRAY_SKIP_SUFFIX}"


def state(name: str) -> str:
    """Sorted set of the ids of jobs in state ``name`` (for listings and metrics without scans)."""
    return f"{STATE_PREFIX}{name}"


def pending_class(cpus: int | str, memory: int | str, partition: str = "") -> str:
    """Sorted set (score = id) of the placeable PENDING jobs asking exactly ``cpus`` and ``memory``
    in ``partition`` (part of the class, so a job no node of its partition can take holds up none other).

    Placement looks at the oldest job of each class that fits somewhere, so a small job is found
    behind any number of large ones at a cost that depends on the number of classes, not the
    backlog. ``state:PENDING`` stays the listing index.
    """
    return f"{PENDING_CLASS_PREFIX}{cpus}:{memory}:{partition}"


def node(name: str) -> str:
    """Hash: the node's ledger (totals and allocations)."""
    return f"{NODE_PREFIX}{name}"


def node_free_cpus(name: str) -> str:
    """Sorted set of the node's unallocated CPU ids, so allocations hand out concrete CPUs."""
    return f"{NODE_PREFIX}{name}{NODE_FREE_CPUS_SUFFIX}"


def node_running(name: str) -> str:
    """Set of the ids of jobs holding resources on the node."""
    return f"{NODE_PREFIX}{name}{NODE_RUNNING_SUFFIX}"


def node_process_groups(name: str) -> str:
    """Hash "job-id:pgid" -> "pgid start-ticks host worker boot" per attempt of the jobs running on
    the node's hosts (an attempt's entry is never overwritten by the next attempt's).

    Killing what a dead worker left behind is a duty of its own host, while settling its job
    may happen anywhere: this is how the host finds the processes after the job has been settled.
    """
    return f"{NODE_PREFIX}{name}{NODE_PROCESS_GROUPS_SUFFIX}"


def node_worker_processes(name: str) -> str:
    """Hash worker name -> "host boot pid start-ticks": outlives the expiring record, so that a
    reaper on the worker's own host can see that its process is still there and leave it alone."""
    return f"{NODE_PREFIX}{name}{NODE_WORKER_PROCESSES_SUFFIX}"


def node_workers(name: str) -> str:
    """Set of the node's registered worker names: its worker slots."""
    return f"{NODE_PREFIX}{name}{NODE_WORKERS_SUFFIX}"


def worker(name: str) -> str:
    """Hash per live worker, expiring HEARTBEAT_TTL after the last heartbeat (seed: worker:<NODE>-<i>)."""
    return f"{WORKER_PREFIX}{name}"


def queue_name(node_name: str) -> str:
    """The RQ queue a node's workers listen on (RQ stores it as ``rq:queue:<name>``)."""
    return f"conductor-{node_name}"


def rq_worker_name(worker_name: str) -> str:
    """RQ's name for a worker instance (seed: ``worker-<NODE>-<index>``)."""
    return f"worker-{worker_name}"


def node_drain(name: str) -> str:
    """Hash reason/by/at while the node is drained: no expiry, so a drain outlives worker and
    Redis restarts (with Redis persistence) until ``conductor resume``."""
    return f"{NODE_PREFIX}{name}{NODE_DRAIN_SUFFIX}"


def node_cleanup(name: str) -> str:
    """Short lease: one worker of the node at a time removes job directories whose record expired."""
    return f"{NODE_PREFIX}{name}{NODE_CLEANUP_SUFFIX}"


RECONCILIATIONS = PREFIX + "reconciliations"  # hash kind -> count of repairs after lost writes


# Sorted set: jobs waiting on ``after:ID+time`` (member: the dependent's id, score: the epoch second
# its delay ends); the maintenance pass re-evaluates those due, since time passing is no event.
DEPENDENCY_TIMERS = PREFIX + "dependency-timers"

EXPIRED_THROUGH = PREFIX + "expired-through"  # sorted set, one member: the highest job id retention removed


def node_refused_rq_jobs(name: str) -> str:
    """Counter of RQ jobs a node's workers refused: they named something other than conductor's job function."""
    return f"{NODE_PREFIX}{name}{NODE_REFUSED_RQ_JOBS_SUFFIX}"
