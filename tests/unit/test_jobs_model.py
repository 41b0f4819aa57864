"""The submission model shared by the CLI and the HTTP API: the seed's body, and every rejection naming its field."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from conductor.jobs import MAX_SCRIPT_BYTES, JobSpec, JobState, JobSubmission, view

# The seed's curl body, byte for byte as its shell loop sends it for i=1 (see SEED.md).
SEED_BODY = (
    '{"job": {"account": "test", "name": "concurrent-job-1", "partition": "compute-high-mem",\n'
    '                 "ntasks_per_node": 1, "cpus_per_task": 4, "memory_per_node": "8G"},\n'
    '         "script": "#!/bin/bash\\necho \\"Job 1 is running\\"\\nsleep 10"}'
)


def seed() -> dict:
    return json.loads(SEED_BODY)


def body_with(**job_fields: object) -> dict:
    body = seed()
    body["job"].update(job_fields)
    return body


def rejected_fields(body: dict) -> list[tuple[str, ...]]:
    with pytest.raises(ValidationError) as caught:
        JobSubmission.model_validate(body)
    return [tuple(str(part) for part in error["loc"]) for error in caught.value.errors()]


def test_the_seed_body_is_accepted_exactly_as_sent():
    submission = JobSubmission.model_validate_json(SEED_BODY)
    job = submission.job
    assert (job.account, job.name, job.partition) == ("test", "concurrent-job-1", "compute-high-mem")
    assert (job.ntasks_per_node, job.cpus_per_task) == (1, 4)
    assert job.memory_per_node == 8 << 30
    assert job.time_limit is None and job.environment == {}
    assert submission.script == '#!/bin/bash\necho "Job 1 is running"\nsleep 10'


def test_cpus_are_tasks_per_node_times_cpus_per_task():
    submission = JobSubmission.model_validate(body_with(ntasks_per_node=3, cpus_per_task=4))
    assert submission.job.cpus == 12


def test_optional_time_limit_and_environment_are_accepted():
    submission = JobSubmission.model_validate(
        body_with(time_limit="1-00:00:00", environment={"OMP_NUM_THREADS": "4", "_X1": ""}))
    assert submission.job.time_limit == 86400
    assert submission.job.environment == {"OMP_NUM_THREADS": "4", "_X1": ""}


def test_a_minimal_body_gets_defaults():
    submission = JobSubmission.model_validate({"job": {}, "script": "true"})
    assert submission.job.cpus == 1
    assert submission.job.memory_per_node == 0


@pytest.mark.parametrize("field", ["cpus_per_task", "ntasks_per_node"])
@pytest.mark.parametrize("value", [0, -1, -64])
def test_zero_or_negative_cpus_are_rejected_naming_the_field(field, value):
    assert rejected_fields(body_with(**{field: value})) == [("job", field)]


def test_fractional_cpus_are_rejected():
    assert rejected_fields(body_with(cpus_per_task=1.5)) == [("job", "cpus_per_task")]


@pytest.mark.parametrize("memory", ["lots", "8X", "-1G", "", "1e3", -1])
def test_unparseable_memory_is_rejected_naming_the_field(memory):
    assert rejected_fields(body_with(memory_per_node=memory)) == [("job", "memory_per_node")]


def test_memory_as_a_json_float_is_a_validation_error():
    assert rejected_fields(body_with(memory_per_node=1.5)) == [("job", "memory_per_node")]


def test_memory_with_hundreds_of_digits_is_a_validation_error():
    assert rejected_fields(body_with(memory_per_node="9" * 400)) == [("job", "memory_per_node")]


@pytest.mark.parametrize("script", ["", " ", "\n\n\t  \n"])
def test_an_empty_script_is_rejected_naming_the_field(script):
    body = seed()
    body["script"] = script
    assert rejected_fields(body) == [("script",)]


def test_a_script_with_a_nul_byte_is_rejected():
    body = seed()
    body["script"] = "#!/bin/bash\necho \x00"
    assert rejected_fields(body) == [("script",)]


def test_a_script_over_the_size_limit_is_rejected():
    body = seed()
    body["script"] = "#" * (MAX_SCRIPT_BYTES + 1)
    assert rejected_fields(body) == [("script",)]


def test_a_missing_script_is_rejected():
    body = seed()
    del body["script"]
    assert rejected_fields(body) == [("script",)]


@pytest.mark.parametrize("field", ["name", "account", "partition"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "tab\there", "nul\x00", "esc\x1b[31m", "del\x7f"])
def test_control_characters_in_names_are_rejected_naming_the_field(field, bad):
    errors = rejected_fields(body_with(**{field: bad}))
    assert errors == [("job", field)]


@pytest.mark.parametrize("field", ["name", "account", "partition"])
def test_empty_names_are_rejected(field):
    assert rejected_fields(body_with(**{field: ""})) == [("job", field)]


def test_names_with_unicode_letters_and_punctuation_are_fine():
    submission = JobSubmission.model_validate(body_with(name="Größe—run #2 (test)"))
    assert submission.job.name == "Größe—run #2 (test)"


@pytest.mark.parametrize("bad", ["a\x85b", "a\u2028b", "a\x9bb"])
def test_unicode_line_breaks_and_c1_controls_in_names_are_rejected(bad):
    assert rejected_fields(body_with(name=bad)) == [("job", "name")]


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A=B", "A B", "", "Ä"])
def test_bad_environment_variable_names_are_rejected_naming_the_field(name):
    assert rejected_fields(body_with(environment={name: "x"})) == [("job", "environment")]


def test_a_nul_byte_in_an_environment_value_is_rejected():
    assert rejected_fields(body_with(environment={"OK": "a\x00b"})) == [("job", "environment")]


def test_an_unknown_job_field_is_rejected_naming_it():
    assert rejected_fields(body_with(gpus=2)) == [("job", "gpus")]


def test_an_unknown_top_level_field_is_rejected_naming_it():
    body = seed()
    body["priority"] = 5
    assert rejected_fields(body) == [("priority",)]


def test_a_bad_time_limit_is_rejected_naming_the_field():
    assert rejected_fields(body_with(time_limit="soon")) == [("job", "time_limit")]
    assert rejected_fields(body_with(time_limit=0)) == [("job", "time_limit")]


def test_every_bad_field_is_reported_at_once():
    body = body_with(cpus_per_task=0, memory_per_node="8X", name="a\nb")
    body["script"] = ""
    assert sorted(rejected_fields(body)) == sorted(
        [("job", "cpus_per_task"), ("job", "memory_per_node"), ("job", "name"), ("script",)])


def test_the_spec_model_alone_forbids_unknown_fields():
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"cpus": 4})


def test_validation_does_not_mutate_the_request():
    body = seed()
    original = copy.deepcopy(body)
    JobSubmission.model_validate(body)
    assert body == original


def test_states_are_slurms_names_and_only_pending_and_running_are_not_final():
    assert {s.value for s in JobState} == {
        "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    assert {s for s in JobState if not s.final} == {JobState.PENDING, JobState.RUNNING}


def test_view_has_the_contract_fields_and_iso_utc_timestamps():
    shown = view({"id": "7", "name": "n", "account": "a", "partition": "p", "state": "RUNNING", "cpus": "4",
                  "memory": str(8 << 30), "node": "node-a", "worker": "node-a-1", "exit_code": "",
                  "reason": "", "submitted_at": "1700000000.5", "started_at": "1700000001.000001",
                  "ended_at": "", "cpu_ids": "0,1,2,3"})
    for field in ("id", "name", "account", "partition", "state", "cpus", "memory", "node", "worker",
                  "exit_code", "reason", "submitted_at", "started_at", "ended_at"):
        assert field in shown
    assert shown["id"] == 7 and shown["cpus"] == 4 and shown["memory"] == 8 << 30
    assert shown["exit_code"] is None and shown["reason"] is None and shown["ended_at"] is None
    assert shown["submitted_at"] == "2023-11-14T22:13:20.500000Z"
    assert shown["started_at"] == "2023-11-14T22:13:21.000001Z"
    assert shown["cpu_ids"] == [0, 1, 2, 3]
