"""Checks of single config values, shared by every module's ``validate``: each returns the problem as one line
(``key=value: what is allowed``) in a list, or an empty list. Bools are never numbers here, although Python
counts them as integers, and numbers are finite."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any

INT64_MAX = 2**63 - 1  # what torch can take as a seed or a count


def int_list(text: str) -> list[int]:
    """A command line's comma-separated list of positive integers ("1,4,256"); ValueError otherwise."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


class Parser(argparse.ArgumentParser):
    """argparse for normexp's commands: bad input is one line and exit 2, as everywhere in normexp."""

    def error(self, message: str) -> None:
        self.exit(2, f"normexp: error: {message}\n")


def is_integer(value: Any, minimum: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and abs(value) <= INT64_MAX
        and (minimum is None or value >= minimum)
    )


def is_number(
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> bool:
    """A finite int or float within [low, high], each end excluded where ``*_open``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"a number {'<' if high_open else '<='} {high}"
    return "a number"


def number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    or_word: str | None = None,
) -> list[str]:
    """``value`` must be a number in the range (or the word ``or_word``, such as 'auto')."""
    if or_word is not None and value == or_word:
        return []
    if is_number(value, low, high, low_open, high_open):
        return []
    allowed = _range_text(low, high, low_open, high_open)
    return [f"{key}={value!r}: must be {allowed}" + (f" or {or_word!r}" if or_word is not None else "")]


def integer(key: str, value: Any, minimum: int, maximum: int | None = None, *,
            or_word: str | None = None) -> list[str]:
    """``value`` must be an integer in [``minimum``, ``maximum``] (or the word ``or_word``)."""
    if (or_word is not None and value == or_word) or (
            is_integer(value, minimum) and (maximum is None or value <= maximum)):
        return []
    word = f"{or_word!r} or " if or_word is not None else ""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    return [f"{key}={value!r}: must be {word}{allowed}"]


def boolean(key: str, value: Any, *, or_auto: bool = False) -> list[str]:
    """``value`` must be true or false (or 'auto')."""
    if isinstance(value, bool) or (or_auto and value == "auto"):
        return []
    return [f"{key}={value!r}: must be {'auto, true' if or_auto else 'true'} or false"]


def choice(key: str, value: Any, allowed: Iterable[str], unknown: bool = False) -> list[str]:
    """``value`` must be one of ``allowed``; ``unknown`` words the line for a name that names nothing."""
    allowed = list(allowed)
    if isinstance(value, str) and value in allowed:
        return []
    return [f"{key}={value!r}: {'unknown; ' if unknown else ''}allowed: {', '.join(allowed)}"]
