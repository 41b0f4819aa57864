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
delayed_ids = st.tuples(job_ids, st.one_of(st.just(""), st.integers(1, 10**6).map(lambda m: f"+{m}"))).map("".join)
conditions = st.one_of(
    st.just("singleton"),
    st.tuples(st.sampled_from([k for k in KINDS if k != "after"]), st.lists(job_ids, min_size=1, max_size=4)).map(
        lambda t: ":".join((t[0], *t[1]))),
    st.lists(delayed_ids, min_size=1, max_size=4).map(lambda ids: ":".join(("after", *ids))),  # after:ID+minutes
)
dependency_lists = st.tuples(st.lists(conditions, min_size=1, max_size=5), st.sampled_from(",?")).map(
    lambda t: t[1].join(t[0]))


@given(dependency_lists)
def test_every_list_of_the_grammar_parses_and_prints_back_unchanged(text):
    parsed = parse_dependency(text)
    assert str(parsed) == text
    assert parsed.any_of == ("?" in text)
    assert len(parsed.conditions) == len(text.split("?" if parsed.any_of else ","))
    named = {int(i.partition("+")[0].partition("_")[0]) for c in parsed.conditions for i in c.job_ids}
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
    ("afterok:12+5", "only with after"),
    ("after:12+", "not a number of minutes"),
    ("after:12+x", "not a number of minutes"),
    ("after:12+-5", "not a number of minutes"),
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


# --- --array ---------------------------------------------------------------------------------------

from conductor.workflow import ArrayError, parse_array, parse_normalised_array, remaining  # noqa: E402

items = st.one_of(
    st.integers(0, 2000).map(lambda n: (str(n), {n})),
    st.tuples(st.integers(0, 2000), st.integers(0, 300)).map(
        lambda t: (f"{t[0]}-{t[0] + t[1]}", set(range(t[0], t[0] + t[1] + 1)))),
    st.tuples(st.integers(0, 2000), st.integers(0, 300), st.integers(1, 50)).map(
        lambda t: (f"{t[0]}-{t[0] + t[1]}:{t[2]}", set(range(t[0], t[0] + t[1] + 1, t[2])))),
)


@given(st.lists(items, min_size=1, max_size=6), st.one_of(st.none(), st.integers(1, 64)))
def test_every_array_of_the_grammar_expands_to_its_indices(parts, limit):
    text = ",".join(p for p, _ in parts) + (f"%{limit}" if limit else "")
    expected = sorted(set().union(*(s for _, s in parts)))
    spec = parse_array(text, 2400)
    assert spec.indices() == expected
    assert spec.count == len(expected)
    assert spec.limit == (limit or 0)
    assert parse_normalised_array(str(spec)) == spec
    assert parse_array(remaining(spec, 1, spec.runs[0][0], set()), 2400).indices() == expected


@given(st.lists(items, min_size=1, max_size=4), st.integers(1, 2000))
def test_an_index_over_max_array_size_is_refused_naming_the_setting(parts, size):
    text = ",".join(p for p, _ in parts)
    top = max(max(s) for _, s in parts)
    if top >= size:
        with pytest.raises(ArrayError, match="MAX_ARRAY_SIZE"):
            parse_array(text, size)
    else:
        assert parse_array(text, size).indices()[-1] == top


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("%4", "empty"), ("1-", "not an index"), ("5-1", "ends before"), ("1-4:0", "not an index"),
    ("a", "not an index"), ("1-4%0", "positive integer"), ("1-4%x", "positive integer"), ("-1", "not an index"),
])
def test_arrays_outside_the_grammar_are_refused_naming_why(text, reason):
    with pytest.raises(ArrayError, match=reason):
        parse_array(text, 1001)


def test_the_pending_part_is_shown_as_squeue_does():
    spec = parse_array("0-999%16", 1001)
    assert remaining(spec, 1, 5, set()) == "5-999%16"
    assert remaining(spec, 1, 5, {6}) == "5,7-999%16"
    assert remaining(parse_array("0-15:4", 1001), 1, 4, set()) == "4-12:4"
    assert remaining(parse_array("0-15:4", 1001), 1, 8, set()) == "8,12"
    assert remaining(parse_array("1,3", 1001), 2, 0, set()) == ""


def test_a_stepped_range_is_judged_by_its_last_index_not_the_bound_written():
    """819-956:2 ends at 955: below MAX_ARRAY_SIZE=956 (found by the property test above)."""
    assert parse_array("819-956:2", 956).indices()[-1] == 955
    with pytest.raises(ArrayError, match="index 956 is over the limit"):
        parse_array("820-956:2", 956)


def test_after_with_a_delay_keeps_it_in_minutes():
    assert str(parse_dependency("after:12+05:13_2+90")) == "after:12+5:13_2+90"
    assert str(parse_dependency("after:12+0")) == "after:12"
    assert parse_dependency("after:12+5:13_2").job_ids() == [12, 13]
