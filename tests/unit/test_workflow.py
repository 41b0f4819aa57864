"""The --dependency parser against the grammar in sbatch's manual (pure logic: hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conductor.jobs import JobSubmission
from conductor.workflow import KINDS, DependencyError, parse_dependency

job_ids = st.one_of(
    st.integers(1, 10**12).map(str),
    st.tuples(st.integers(1, 10**6), st.integers(0, 10**6)).map(lambda t: f"{t[0]}_{t[1]}"),
)
conditions = st.one_of(
    st.just("singleton"),
    st.tuples(st.sampled_from(KINDS), st.lists(job_ids, min_size=1, max_size=4)).map(
        lambda t: ":".join((t[0], *t[1]))),
)
dependency_lists = st.tuples(st.lists(conditions, min_size=1, max_size=5), st.sampled_from(",?")).map(
    lambda t: t[1].join(t[0]))


@given(dependency_lists)
def test_every_list_of_the_grammar_parses_and_prints_back_unchanged(text):
    parsed = parse_dependency(text)
    assert str(parsed) == text
    assert parsed.any_of == ("?" in text)
    assert len(parsed.conditions) == len(text.split("?" if parsed.any_of else ","))
    named = {int(i.partition("_")[0]) for c in parsed.conditions for i in c.job_ids}
    assert set(parsed.job_ids()) == named


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_with_a_dependency_error(text):
    try:
        parsed = parse_dependency(text)
    except DependencyError as error:
        assert str(error)
    else:
        assert parse_dependency(str(parsed)) == parsed


@given(conditions, conditions, conditions, st.sampled_from([",?", "?,"]))
def test_all_of_and_any_of_cannot_be_mixed(first, second, third, separators):
    with pytest.raises(DependencyError, match="cannot be mixed"):
        parse_dependency(f"{first}{separators[0]}{second}{separators[1]}{third}")


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("afterok", "at least one job id"),
    ("afterok:", "at least one job id"),
    ("afterok:0", "not a job id"),
    ("afterok:12x", "not a job id"),
    ("afterok:12_", "not a job id"),
    ("afterok:12+5", "delay"),
    ("aftercorr:12", "not supported"),
    ("before:12", "unknown dependency type"),
    ("afterok:1,", "unknown dependency type"),
    ("singleton:3", "unknown dependency type"),
])
def test_outside_the_grammar_is_refused_naming_why(text, reason):
    with pytest.raises(DependencyError, match=reason):
        parse_dependency(text)


def test_the_job_field_names_itself_when_refused():
    with pytest.raises(ValueError, match="dependency"):
        JobSubmission.model_validate({"job": {"dependency": "afterok:x"}, "script": "true\n"})
    body = {"job": {"dependency": " afterok:5:6 "}, "script": "true\n"}
    assert JobSubmission.model_validate(body).job.dependency == "afterok:5:6"
