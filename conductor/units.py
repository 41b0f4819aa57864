"""Parsing of the human-written quantities that job specs and app.properties carry.

Slurm users write memory as ``8G`` and time limits as ``90`` (minutes) or ``1-12:00:00``; the
same spellings are accepted here so that scripts and habits carry over unchanged.
"""

from __future__ import annotations

import re
from decimal import Decimal

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
MEMORY_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[KMGTPkmgtp]?([iI]?[bB])?\s*$"  # _MEMORY for JSON Schema (no flags)
_MEMORY_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
MAX_BYTES = 1 << 53  # Lua in Redis counts in doubles: exact up to 2**53
MAX_TIME_LIMIT_MINUTES = 366 * 24 * 60
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_memory(text: str | int | float) -> int:
    """Bytes in ``text``: a plain byte count or a number with K/M/G/T/P (powers of 1024, as Slurm)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError("expected a size such as 512M or 8G")
    if isinstance(text, float):
        if not text.is_integer():
            raise ValueError(f"{text!r} is not a whole number of bytes")
        text = int(text)
    if isinstance(text, int):
        value = text
    else:
        match = _MEMORY.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a size; use a number with K, M, G or T, such as 512M or 8G")
        number, unit = match.groups()
        value = int(Decimal(number) * _MEMORY_FACTORS[unit.upper()])
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_BYTES:
        raise ValueError(f"{text!r} is larger than any node (at most {MAX_BYTES} bytes)")
    return value


def format_memory(size: int) -> str:
    """The shortest exact K/M/G/T spelling of ``size`` bytes, for tables and banners."""
    for unit in ("P", "T", "G", "M", "K"):
        factor = _MEMORY_FACTORS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_time_limit(text: str | int | float) -> float:
    """Seconds in a Slurm time limit: minutes as a number, or ``[D-]HH:MM:SS`` / ``MM:SS`` / ``D-HH``."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError("expected minutes or [D-]HH:MM:SS")
    if isinstance(text, int | float):
        try:
            seconds = float(text) * 60
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError("must be more than 0 and at most 366 days") from None
    else:
        stripped = text.strip()
        try:
            seconds = float(stripped) * 60
        except ValueError:
            seconds = _parse_clock(stripped)
    if not seconds > 0 or seconds > MAX_TIME_LIMIT_MINUTES * 60:
        raise ValueError(f"{text!r} must be more than 0 and at most 366 days")
    return seconds


def _parse_clock(text: str) -> float:
    match = _TIME.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a time limit; use minutes or [D-]HH:MM:SS")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        return days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    if third is not None:  # HH:MM:SS
        return first * 3600 + second * 60 + third
    if second is not None:  # MM:SS
        return first * 60 + second
    return first * 60.0


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: a plain number of seconds or a number with s, m, h, d or w (``30m``, ``7d``)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError("expected a duration such as 3600, 30m, 12h or 7d")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration; use seconds or a number with s, m, h, d or w, such as 7d")
        value = float(match.group(1)) * _DURATION_FACTORS[match.group(2).lower()]
    if not value > 0 or value > 100 * 365 * 86400:
        raise ValueError("must be more than 0 and at most 100 years")
    return value
