"""Durations as operators write them: parsing, formatting, and what is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("30d", timedelta(days=30)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5s", timedelta(milliseconds=1500)),
        (" 1h 30m ", timedelta(hours=1, minutes=30)),
        ("5M", timedelta(minutes=5)),
        ("1m1ms", timedelta(minutes=1, milliseconds=1)),
        ("0s", timedelta(0)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_parse_accepts_the_documented_spellings(text: str, expected: timedelta) -> None:
    """Numbers with ms, s, m, h, d or w, combined and spaced, case-insensitive."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("300", "bare number"),
        ("1.5", "bare number"),
        ("-5m", "cannot read"),
        ("5 minutes", "cannot read"),
        ("m5", "cannot read"),
        ("5m garbage", "cannot read"),
        ("1.s", "cannot read"),
        (".5s", "cannot read"),
        ("٣s", "cannot read"),  # only ASCII digits
        ("3651d", "longer than 3650d"),
        ("99999999999d", "longer than 3650d"),  # beyond a timedelta
        ("1" * 400 + "s", "longer than 3650d"),  # beyond a float
    ],
)
def test_parse_refuses_with_a_hint(text: str, says: str) -> None:
    """Anything else is a ValueError that says what is wrong and what a valid value looks like."""
    with pytest.raises(ValueError, match=says) as raised:
        parse_duration(text)
    assert "e.g. 500ms, 90s, 5m" in str(raised.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(days=30), "30d"),
        (timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5), "1d2h3m4s5ms"),
        (timedelta(seconds=-90), "-1m30s"),
        (timedelta(microseconds=400), "0s"),  # below a millisecond rounds away
    ],
)
def test_format_is_the_shortest_exact_spelling(value: timedelta, text: str) -> None:
    """format_duration writes days down to milliseconds, largest unit first."""
    assert format_duration(value) == text


@given(st.integers(min_value=0, max_value=3650 * 86_400_000))
def test_format_then_parse_round_trips(ms: int) -> None:
    """Every duration of whole milliseconds up to 3650d survives format then parse."""
    value = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value


@given(st.text())
def test_parse_raises_only_value_error_on_any_text(text: str) -> None:
    """Arbitrary text either parses to a duration in [0, 3650d] or raises ValueError."""
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert timedelta(0) <= value <= timedelta(days=3650)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[0-9]{1,25}(\.[0-9]{1,25})?", fullmatch=True),
            st.sampled_from(["ms", "s", "m", "h", "d", "w"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_parse_raises_only_value_error_on_well_formed_text(parts: list[tuple[str, str]]) -> None:
    """Well-formed but possibly huge durations parse or raise ValueError, never OverflowError."""
    text = "".join(number + unit for number, unit in parts)
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "longer than 3650d" in str(exc)
        return
    assert timedelta(0) <= value <= timedelta(days=3650)
