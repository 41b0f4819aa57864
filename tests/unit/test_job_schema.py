"""The submission's JSON schema (what the OpenAPI document publishes) says what its validators accept.

The schema is declared on the job models, quoting the validators' own patterns; these tests pin
the places where the two are written separately, so that a change to one fails here, not in a
generated client.
"""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from conductor import jobs, units
from conductor.jobs import JobSpec, JobSubmission

SCHEMA = JobSubmission.model_json_schema()
SPEC = SCHEMA["$defs"]["JobSpec"]["properties"]


def test_blank_is_exactly_what_str_isspace_calls_blank() -> None:
    """The script's pattern must refuse what the validator refuses (``not value.strip()``): every code point."""
    blank = re.compile(f"[{jobs.BLANK}]")
    wrong = [hex(c) for c in range(sys.maxunicode + 1) if chr(c).isspace() != bool(blank.fullmatch(chr(c)))]
    assert wrong == []


@given(st.text(alphabet=st.sampled_from(" \t\n\x00\x85\u3000ab#!"), max_size=12))
def test_the_script_pattern_accepts_what_the_validator_accepts(script: str) -> None:
    try:
        JobSubmission(job=JobSpec(), script=script)
        accepted = True
    except ValidationError:
        accepted = False
    assert bool(re.fullmatch(SCHEMA["properties"]["script"]["pattern"], script)) == accepted


def test_the_schema_quotes_the_validators_patterns() -> None:
    for field in ("account", "name", "partition"):
        assert SPEC[field]["pattern"] == jobs.PRINTABLE.pattern, field
    assert SPEC["environment"]["propertyNames"]["pattern"] == jobs.ENV_NAME.pattern
    assert SCHEMA["properties"]["script"]["pattern"] == jobs.SCRIPT_PATTERN


@pytest.mark.parametrize("text", ["8G", "512M", " 1.5 g ", "4096", "2KiB", "3tb", "1P"])
def test_memory_spellings_that_parse_match_the_published_pattern(text: str) -> None:
    units.parse_memory(text)
    memory = SPEC["memory_per_node"]["anyOf"]
    assert {branch["type"] for branch in memory} == {"integer", "string"}
    assert re.fullmatch(units.MEMORY_PATTERN, text)


@pytest.mark.parametrize("text", ["8X", "G", "-1G", "1.G", "8 G B", ""])
def test_memory_spellings_that_do_not_parse_do_not_match_it(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_memory(text)
    assert not re.fullmatch(units.MEMORY_PATTERN, text)


def test_time_limit_publishes_numbers_strings_and_null_with_the_validators_bound() -> None:
    branches = {branch["type"]: branch for branch in SPEC["time_limit"]["anyOf"]}
    assert set(branches) == {"number", "string", "null"}
    assert branches["number"]["maximum"] * 60 == 366 * 86400
    units.parse_time_limit(branches["number"]["maximum"])
    with pytest.raises(ValueError):
        units.parse_time_limit(branches["number"]["maximum"] + 1)
