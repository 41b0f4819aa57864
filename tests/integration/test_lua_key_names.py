"""The Lua prelude builds exactly the key names keys.py's functions build, in a real Redis."""

from __future__ import annotations

import json

from conductor import keys, scripts

LUA_NAMES = """
redis.call('HSET', job_key(7), 'cpus', '4', 'memory', '1024', 'partition', 'gpu')
return cjson.encode({
  job_key(7), control_key(7), dependents_key(7), state_key('PENDING'), node_key('n-1'),
  free_cpus_key('n-1'), running_key('n-1'), node_workers_key('n-1'), process_groups_key('n-1'),
  worker_processes_key('n-1'), node_drain_key('n-1'), worker_key('n-1-2'), array_key(7),
  active_name_key('acct', 'name'), PENDING_CLASS_PREFIX .. pending_class(7),
  array_key(7) .. ARRAY_TEMPLATE_SUFFIX, array_key(7) .. ARRAY_TASKS_SUFFIX, array_key(7) .. ARRAY_SKIP_SUFFIX,
})
"""


def test_lua_and_python_build_the_same_key_names(redis_server) -> None:
    connection = redis_server.client()
    built = json.loads(connection.eval(scripts.prelude() + LUA_NAMES, 1, keys.job(7)))
    assert built == [
        keys.job(7), keys.job_control(7), keys.job_dependents(7), keys.state("PENDING"), keys.node("n-1"),
        keys.node_free_cpus("n-1"), keys.node_running("n-1"), keys.node_workers("n-1"),
        keys.node_process_groups("n-1"), keys.node_worker_processes("n-1"), keys.node_drain("n-1"),
        keys.worker("n-1-2"), keys.array(7), keys.active_by_name("acct", "name"), keys.pending_class(4, 1024, "gpu"),
        keys.array_template(7), keys.array_tasks(7), keys.array_skip(7),
    ]
