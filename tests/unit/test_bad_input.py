"""Random job requests: every one is either accepted or refused with a message naming a field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conductor.jobs import JobSubmission

CASES = 400
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["account", "name", "partition", "ntasks_per_node", "cpus_per_task", "memory_per_node",
          "time_limit", "environment", "requeue"]
SEED = {"account": "test", "name": "job", "partition": "compute-high-mem", "ntasks_per_node": 1,
        "cpus_per_task": 4, "memory_per_node": "8G"}


@pytest.mark.reliability("bad input: random values in every job field and the script", cases=CASES)
@settings(max_examples=CASES, deadline=None, database=None)
@given(overrides=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4), script=JSON | st.text())
def test_any_request_is_accepted_or_refused_naming_a_field(overrides, script):
    body = {"job": {**SEED, **overrides}, "script": script}
    try:
        submission = JobSubmission.model_validate(json.loads(json.dumps(body)))
    except ValidationError as error:
        for item in error.errors():
            assert item["loc"] and item["loc"][0] in ("job", "script")
            assert item["msg"]
        return
    assert submission.job.cpus >= 1 and submission.job.memory_per_node >= 0
    assert submission.script.strip()
