"""Memory sizes and Slurm time limits: the spellings users write, and the ones that must be refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conductor.units import format_memory, parse_memory, parse_time_limit

K, M, G, T, P = (1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50)
LIMIT = 1 << 53  # the ledger counts in Lua doubles: sizes are exact up to 2**53


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1024", 1024),
        ("4K", 4 * K),
        ("512M", 512 * M),
        ("8G", 8 * G),
        ("8g", 8 * G),
        ("8GB", 8 * G),
        ("8GiB", 8 * G),
        ("1.5G", 3 * G // 2),
        ("2T", 2 * T),
        ("1P", P),
        ("  16G  ", 16 * G),
        ("8 G", 8 * G),
        (8 * G, 8 * G),
        (0, 0),
    ],
)
def test_parse_memory_accepts_slurm_spellings_in_powers_of_1024(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "G", "8X", "-1G", "eight", "1e3", "8 GG", "8G8", "0x10", "1,5G", "9P" * 2, "10P"],
)
def test_parse_memory_rejects_what_is_not_a_size(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_parse_memory_rejects_a_negative_byte_count():
    with pytest.raises(ValueError, match="negative"):
        parse_memory(-1)


def test_parse_memory_rejects_a_boolean_rather_than_counting_it_as_one_byte():
    with pytest.raises(ValueError):
        parse_memory(True)


def test_parse_memory_rejects_sizes_beyond_exact_double_precision():
    assert parse_memory("8P") == LIMIT
    with pytest.raises(ValueError, match="larger than any node"):
        parse_memory("9P")


def test_parse_memory_rejects_an_absurdly_long_number_with_value_error():
    with pytest.raises(ValueError):
        parse_memory("9" * 400)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (1023, "1023"), (K, "1K"), (1536, "1536"), (8 * G, "8G"), (G + 1, str(G + 1)),
     (3 * T, "3T"), (2 * P, "2P"), (1536 * M, "1536M")],
)
def test_format_memory_uses_the_largest_exact_unit(size, text):
    assert format_memory(size) == text


@given(st.integers(min_value=0, max_value=LIMIT))
def test_format_then_parse_memory_round_trips_exactly(size):
    assert parse_memory(format_memory(size)) == size


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["", "K", "M", "G", "T", "P"]),
       st.sampled_from(["", "B", "iB"]), st.booleans())
def test_parse_memory_multiplies_the_number_by_the_unit(number, unit, suffix, lower):
    factor = {"": 1, "K": K, "M": M, "G": G, "T": T, "P": P}[unit]
    text = f"{number}{unit}{suffix if unit else ''}"
    text = text.lower() if lower else text
    if number * factor > LIMIT:
        with pytest.raises(ValueError):
            parse_memory(text)
    else:
        assert parse_memory(text) == number * factor


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90 * 60),  # a bare number is minutes, as sbatch --time
        (90, 90 * 60),
        ("1.5", 90),
        (0.5, 30),
        ("5:30", 5 * 60 + 30),  # MM:SS
        ("01:30:00", 90 * 60),  # HH:MM:SS
        ("00:00:01", 1),
        ("1-12", 36 * 3600),  # D-HH
        ("1-12:30", 36 * 3600 + 30 * 60),  # D-HH:MM
        ("1-12:30:15", 36 * 3600 + 30 * 60 + 15),  # D-HH:MM:SS
        (" 10 ", 600),
        ("366-00:00:00", 366 * 86400),
    ],
)
def test_parse_time_limit_accepts_slurm_forms(text, seconds):
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "abc", "0", "-5", "0:0", "00:00:00", "1:2:3:4", "1-", ":30", "1-:30", "1--2", "inf", "nan", "1e9",
     "367-00:00:00", "5 minutes", 0, -1, float("nan"), True],
)
def test_parse_time_limit_rejects_non_positive_huge_or_malformed_limits(text):
    with pytest.raises(ValueError):
        parse_time_limit(text)


@given(st.integers(0, 365), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_parse_time_limit_days_hours_minutes_seconds(days, hours, minutes, seconds):
    expected = days * 86400 + hours * 3600 + minutes * 60 + seconds
    text = f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"
    if expected == 0:
        with pytest.raises(ValueError):
            parse_time_limit(text)
    else:
        assert parse_time_limit(text) == expected


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))
def test_parse_time_limit_clock_forms_agree(hours, minutes, seconds):
    total = hours * 3600 + minutes * 60 + seconds
    if total == 0:
        return
    assert parse_time_limit(f"{hours}:{minutes:02d}:{seconds:02d}") == total
    assert parse_time_limit(f"{hours * 60 + minutes}:{seconds:02d}") == total
    if seconds == 0:
        assert parse_time_limit(str(hours * 60 + minutes)) == total
