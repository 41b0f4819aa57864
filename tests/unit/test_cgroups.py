"""The cgroup file mapping of both versions and the parsing of their usage files (pure logic).

The v2 path cannot run on machines that boot the hybrid v1 layout, so what it writes and reads
is pinned here; enforcement itself is proven on the real kernel in tests/integration.
"""

from __future__ import annotations

from conductor.cgroups import (
    V1,
    V2,
    Limits,
    Mode,
    Usage,
    limit_writes,
    own_groups,
    parse_keyed,
    parse_usage,
    thread_home,
)

MEMORY_EVENTS = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n"
CPU_STAT = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\n"
OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"


def test_v2_writes_name_the_unified_files_and_forbid_swap():
    writes = limit_writes(Mode.V2, Limits(64 << 20, 1, frozenset({3}), 4096), "", True)
    assert writes == [("", "cpuset.cpus", "3"), ("", "memory.max", str(64 << 20)),
                      ("", "memory.swap.max", "0"), ("", "pids.max", "4096")]


def test_v2_without_concrete_cpu_ids_gets_a_bandwidth_quota():
    writes = limit_writes(Mode.V2, Limits(0, 3, None, 100), "", True)
    assert writes == [("", "cpu.max", "300000 100000"), ("", "pids.max", "100")]


def test_v1_writes_go_to_each_controllers_hierarchy_and_count_swap_in_the_limit():
    writes = limit_writes(Mode.V1, Limits(1 << 30, 2, frozenset({0, 1}), 64), "0", True)
    assert writes == [("cpuset", "cpuset.mems", "0"), ("cpuset", "cpuset.cpus", "0,1"),
                      ("memory", "memory.limit_in_bytes", str(1 << 30)),
                      ("memory", "memory.memsw.limit_in_bytes", str(1 << 30)), ("pids", "pids.max", "64")]


def test_v1_without_concrete_ids_inherits_the_cpuset_and_gets_a_quota():
    writes = limit_writes(Mode.V1, Limits(0, 2, None, 64), "0", False)
    assert ("cpuset", "cpuset.cpus", "PARENT") in writes
    assert ("cpu", "cpu.cfs_quota_us", "200000") in writes
    assert not any(name.startswith("memory") for _, name, _ in writes)


def test_v1_cpusets_cloned_from_their_parent_are_given_only_the_jobs_cpu_ids():
    concrete = limit_writes(Mode.V1, Limits(0, 2, frozenset({0, 1}), 64), "", True, cpuset_inherited=True)
    assert concrete == [("cpuset", "cpuset.cpus", "0,1"), ("pids", "pids.max", "64")]
    quota = limit_writes(Mode.V1, Limits(0, 2, None, 64), "", True, cpuset_inherited=True)
    assert quota == [("cpu", "cpu.cfs_quota_us", "200000"), ("pids", "pids.max", "64")]


def test_the_spawning_thread_goes_back_where_it_was_when_it_may():
    own = {"memory": "/system.slice/x", "cpuset": "/", "pids": "/", "cpuacct": "/", "cpu": "/", "freezer": "/"}
    home = thread_home(own, "conductor/n-1", lambda path: True)
    assert home is not None
    assert home["memory"] == "/sys/fs/cgroup/memory/system.slice/x" and home["cpuset"] == "/sys/fs/cgroup/cpuset"
    assert set(home) == {"memory", "cpuset", "pids", "cpuacct", "cpu"}


def test_a_spawning_thread_that_may_not_go_back_lives_in_the_workers_subtree():
    """supervisord's group is root's: an unprivileged worker's spawning thread goes to its prepared subtree."""
    own = {name: "/supervisor" for name in ("memory", "cpuset", "pids", "cpuacct", "cpu")}
    home = thread_home(own, "conductor/n-1", lambda path: "/conductor/n-1/" in path)
    assert home == {name: f"/sys/fs/cgroup/{name}/conductor/n-1" for name in ("memory", "cpuset", "pids", "cpuacct", "cpu")}


def test_no_home_for_the_spawning_thread_means_the_child_joins_by_itself():
    own = {name: "/" for name in ("memory", "cpuset", "pids", "cpuacct", "cpu")}
    assert thread_home(own, "conductor/n-1", lambda path: not path.startswith("/sys/fs/cgroup/pids")) is None


def test_every_file_a_layout_names_belongs_to_one_of_its_hierarchies():
    for layout in (V1, V2):
        for entry in (layout.memory_limit, layout.swap_limit, layout.cpus, layout.mems, layout.cpu_quota,
                      layout.pids_max, layout.peak, layout.cpu_usage, layout.oom_events, layout.freeze):
            assert entry[0] in layout.controllers


def test_v2_usage_is_parsed_from_memory_peak_cpu_stat_and_memory_events():
    assert parse_usage(Mode.V2, "209715200\n", CPU_STAT, MEMORY_EVENTS) == Usage(209715200, 2.5, True)
    assert parse_usage(Mode.V2, "4096\n", CPU_STAT, MEMORY_EVENTS.replace("oom_kill 1", "oom_kill 0")).oom_killed is False


def test_v1_usage_is_parsed_from_max_usage_cpuacct_and_oom_control():
    assert parse_usage(Mode.V1, "1048576\n", "1500000000\n", OOM_CONTROL) == Usage(1048576, 1.5, True)


def test_keyed_files_ignore_lines_that_are_not_key_value():
    assert parse_keyed("a 1\nbroken\nb x\nc -2\n") == {"a": 1, "c": -2}


def test_own_groups_reads_combined_v1_controllers_and_the_v2_entry():
    text = "4:memory:/conductor/n-1\n2:cpu,cpuacct:/x\n0::/system.slice/conductor-worker@1.service\n"
    assert own_groups(text) == {"memory": "/conductor/n-1", "cpu": "/x", "cpuacct": "/x",
                                "": "/system.slice/conductor-worker@1.service"}
